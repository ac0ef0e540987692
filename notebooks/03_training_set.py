# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 - Building and inspecting a training set
#
# An emulator learns the map theta -> summaries from examples. A *training set* is a seeded,
# space-filling Latin-hypercube design over the 8-parameter prior box, evaluated with the exact
# model: per design point, the summaries (kernel-regression means of the three relations at the
# observed x: log10 M_*/M_h, log10 M_ISM/M_*, 12 + log10 O/H, all in dex), their standard errors
# (from the finite halo sample) and the exact summary Jacobian d summaries / d theta (dex per
# unit theta). The Jacobian is what makes Sobolev (gradient-aware) training possible (notebook 04).
#
# `training_sets.generate` writes a Zarr v3 store, block by block, resumably: a killed run is
# finished bit-identically with `resume=True` (docs/training_sets.md gives the schema; the CLI is
# `sapphire generate` / `sapphire inspect`).
#
# The stores are written under `OUT/stores/` (`OUT/stores-tiny/` at the CI size), where notebooks 04
# and 05 look for them.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from demo_settings import (
    CHUNK,
    HALO_SEED,
    MODEL,
    N_HALOS,
    N_TEST,
    N_TRAIN,
    ROOT,
    STORES,
    TEST_SEED,
    TINY,
    TRAIN_SEED,
    generate_store,
)

import sapphire
import training_sets
from sapphire.plots import save_and_show
from training_sets.inspection import inspect_store, plot_design

# Sizes, seeds and model: notebooks/demo_settings.py, shared with notebooks 04 and 05 (a store
# resumed with other settings is refused).
OUT = ROOT / "03_training_set"
OUT.mkdir(parents=True, exist_ok=True)


def show(fig, name):
    """Save ``fig`` as OUT/name and display it (inline in Jupyter; nothing in a plain run)."""
    save_and_show(fig, OUT / name)


# %% [markdown]
# ## Generating
#
# `n_points` design points (seed `seed`), `n_halos` diffmah halos (seed `halo_seed`, the same
# halos for every point), blocks of `chunk` points. `resume=True` makes the cell idempotent: an
# existing complete store is left as it is (0 points computed), a partial one is finished, and
# one made with different settings is refused with a message naming the difference.
#
# The test set uses the same halos and a fresh design seed: an independent check of the
# emulator on points it never saw.

# %%
reports = {}
for name, n_points, seed in (("train", N_TRAIN, TRAIN_SEED), ("test", N_TEST, TEST_SEED)):
    started = time.perf_counter()
    reports[name] = training_sets.generate(
        STORES / f"{name}.zarr", n_points=n_points, n_halos=N_HALOS, seed=seed, halo_seed=HALO_SEED,
        chunk=CHUNK, model=MODEL, resume=True, progress=not TINY,
    )
    r = reports[name]
    print(f"{name}: {r.n_points} points, {r.computed} computed now in {time.perf_counter() - started:.1f} s "
          f"(incl. compilation), {r.failed_points} with failed halos, backend {r.backend}")

# %% [markdown]
# Running it again computes nothing: every block is already `done`.

# %%
again = generate_store("train", progress=False)   # the call above, as notebooks 04 and 05 make it
print(f"second run: {again.computed} points computed")
assert again.computed == 0

# %% [markdown]
# ## Inspecting
#
# `inspect_store` (the `sapphire inspect` command) summarises coverage, failures (points where
# some halo's solve failed: kept as rows, with summaries from the remaining halos, and excluded
# from emulator training) and the value range of each relation. `plot_design` draws the design's
# pairwise projections in the unit cube of the prior box.

# %%
summary = inspect_store(STORES / "train.zarr", figure=OUT / "design.png")
for key in ("points", "done", "valid_points", "points_with_failed_halos", "failed_halos_total", "halos", "fingerprint"):
    print(f"{key:>26}: {summary[key]}")
for name, (lo, hi) in summary["summary_ranges"].items():
    print(f"{name:>26}: summaries in [{lo:.2f}, {hi:.2f}] dex")

# %%
ts = training_sets.open_training_set(STORES / "train.zarr")
plot_design(ts, OUT / "design.png")   # the same figure, from an open store
print(ts)
try:
    from IPython import get_ipython
    from IPython.display import Image, display

    if get_ipython() is not None:
        display(Image(filename=str(OUT / "design.png")))
except ImportError:
    pass

# %% [markdown]
# ## Reading lazily
#
# `open_training_set` returns dask arrays chunked like the store: nothing is read until asked.
# `valid_mask()` (done, no failed halo, everything finite) is what the emulator trains on;
# `load(indices)` reads only the chunks holding those rows; `batches` streams shuffled
# minibatches, holding about `buffer_chunks * chunk` rows in memory, whatever the store's size.

# %%
print("theta:", ts.theta)                       # dask array, (N, 8), physical units
print("summary_jacobian:", ts.summary_jacobian)  # (N, S, 8)
valid = ts.valid_mask()
print(f"valid rows: {valid.sum()} / {ts.n_points}")
rows = ts.load(np.flatnonzero(valid)[:3])
print({k: v.shape for k, v in rows.items()})

seen = 0
for batch in ts.batches(5, seed=0, buffer_chunks=1):
    seen += batch["theta"].shape[0]
print(f"one shuffled pass in batches of 5: {seen} rows (= the valid ones)")
assert seen == valid.sum()

# %% [markdown]
# ## Values and exact slopes
#
# One summary, the stellar-to-halo mass ratio at log10 M_h = 12, against one parameter, the mass
# loading amplitude A_etaM, over the design. Each short segment has the slope of the exact
# partial derivative at that point: the extra information per point that gradient training uses.
# (The scatter comes from the 7 other parameters, which vary from point to point.)

# %%
data = ts.load(np.flatnonzero(valid))
k = ts.summary_names.index("smhm@12")
j = sapphire.PARAMETER_NAMES.index("A_etaM")
x, y, slope = data["theta"][:, j], data["summaries"][:, k], data["summary_jacobian"][:, k, j]
half = 0.04 * ts.prior.width[j]
fig, ax = plt.subplots(figsize=(6, 4.5), layout="constrained")
ax.plot(x, y, "o", ms=4, color="C0", label="design points")
for xi, yi, si in zip(x, y, slope):
    ax.plot([xi - half, xi + half], [yi - si * half, yi + si * half], color="C3", lw=1.5)
ax.plot([], [], color="C3", label=r"exact $\partial / \partial A_{\eta M}$")
ax.set_xlabel(r"$A_{\eta M}$ (log10 mass-loading amplitude)")
ax.set_ylabel(r"$\log_{10}(M_*/M_h)$ at $\log_{10} M_h = 12$ [dex]")
ax.legend()
ax.grid(alpha=0.3)
show(fig, "values_and_slopes.png")
