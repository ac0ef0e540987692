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
# # 04 - Training and validating a Sobolev emulator
#
# Each exact evaluation of the summaries costs a population of ODE solves; a forecast needs
# hundreds of thousands of them. The emulator replaces theta -> summaries by a small neural
# network: a deep ensemble of MLPs trained on the training set of notebook 03 (regenerated here
# if absent, so this notebook runs on its own).
#
# *Sobolev* training fits values **and** the exact Jacobians d summaries / d theta of the store:
# loss = value penalty + `gradient_weight` x Jacobian penalty. Each design point then carries
# 1 + 8 numbers per summary instead of 1, and the emulator's gradients, which HMC and the Fisher
# matrix rely on, are trained directly. The spread of the ensemble members, calibrated on the
# validation split, is the emulator's own error estimate (in the summaries' units, dex).
#
# Validation (`emulator_report`) on the independent test store: value errors in units of the
# observational sigma of each summary, Jacobian relative errors (weighted by 1/sigma_obs and the
# prior width), Fisher-matrix agreement and calibration of the error estimate.

# %%
import json
import time

import matplotlib.pyplot as plt
import numpy as np
from demo_settings import EMU_SEED, EMULATORS, MODEL, ROOT, TINY, TRAINING, generate_store

import sapphire
import training_sets
from emulator import SobolevEmulator, emulator_report, train_emulator
from sapphire.plots import save_and_show

# Store and emulator settings: notebooks/demo_settings.py, shared with notebooks 03 and 05.
OUT = ROOT / "04_emulator"
OUT.mkdir(parents=True, exist_ok=True)
EMULATORS.mkdir(parents=True, exist_ok=True)


def show(fig, name):
    """Save ``fig`` as OUT/name and display it (inline in Jupyter; nothing in a plain run)."""
    save_and_show(fig, OUT / name)


# %% [markdown]
# ## The stores
#
# `resume=True`: nothing is computed when notebook 03 already built them.

# %%
stores = {name: generate_store(name) for name in ("train", "test")}
for name, r in stores.items():
    print(f"{name}: {r.n_points} points ({r.computed} computed now)")
train = training_sets.open_training_set(stores["train"].path)
test = training_sets.open_training_set(stores["test"].path)

# %% [markdown]
# ## Training
#
# `train_emulator` splits the valid design points (80/10/10 train/validation/test, seeded),
# trains `ensemble` members from different initialisations and minibatch orders with early
# stopping on the validation loss, and calibrates the ensemble spread on the validation split.
# The artifact (`.emu`) records the fingerprint of the store it was trained on.

# %%
started = time.perf_counter()
emu = train_emulator(train, gradient_weight=1.0, seed=EMU_SEED, progress=not TINY, **TRAINING)
print(f"trained in {time.perf_counter() - started:.1f} s (incl. compilation): {emu}")
emu_path = emu.save(EMULATORS / "sobolev.emu")
emu = SobolevEmulator.load(emu_path)           # round trip: what notebook 05 will load
print("saved", emu_path, "| trained on store", emu.store_fingerprint)

# %% [markdown]
# The emulator is a JAX function: `predict` returns the mean summaries and the error estimate
# (both (S,), dex), `jacobian` d mean / d theta (S, 8); both trace under `jax.jit`/`jax.grad`.

# %%
theta = sapphire.DEFAULT_PRIOR.centre
mean, error = (np.asarray(a) for a in emu.predict(theta))
J = np.asarray(emu.jacobian(theta))
exact = MODEL.summaries(theta, train.halos(), train.observations)
print(f"{'summary':>16} {'emulator':>9} {'+-':>6} {'exact':>9}")
for i in range(0, len(emu.summary_names), 5):
    print(f"{emu.summary_names[i]:>16} {mean[i]:9.3f} {error[i]:6.3f} {float(exact.mean[i]):9.3f}")
print("Jacobian:", J.shape)

# %% [markdown]
# ## Validation on the test store
#
# `emulator_report` writes `emulator_report.json` and the figures below (value error, Jacobian
# error, Fisher agreement, calibration, error map over the prior, training history). With the CI
# sizes (a handful of points, a few epochs) the numbers are meaningless; the `small` sizes give
# a usable emulator.

# %%
test_rows = np.flatnonzero(test.valid_mask())   # every valid point of the independent test store
report = emulator_report(emu, test, OUT / "report", test_rows, progress=False)
v, j, f = report["value_error_sigma_obs"], report["jacobian_rel_error"], report["fisher"]
print(f"test points: {report['n_test']}")
print(f"value error [sigma_obs]: worst per-summary median {v['worst_median']:.3f} ({v['worst_median_summary']}), "
      f"worst p95 {v['worst_p95']:.3f}")
print(f"Jacobian relative error: median {j['median']:.3f}, p95 {j['p95']:.3f}")
print(f"Fisher: median overlap {f['overlap_median']:.3f}, median KL {f['kl_median']:.3f}")
print("acceptance:", json.dumps(report["acceptance"], indent=1))
print("figures:", report["figures"])

# %%
try:
    from IPython import get_ipython
    from IPython.display import Image, display

    if get_ipython() is not None:
        for name in ("value_error.png", "jacobian_error.png", "calibration.png", "training_history.png"):
            display(Image(filename=str(OUT / "report" / name)))
except ImportError:
    pass

# %% [markdown]
# ## Values only versus Sobolev training
#
# The same architecture, split and seed with `gradient_weight=0` (the Jacobians are ignored).
# At a fixed number of design points the gradient term improves the Jacobians, the quantity a
# Fisher forecast and HMC feel, and usually the values too (at the `small` sizes: median value
# error 0.13 vs 0.29 sigma_obs, Jacobian error 0.28 vs 0.40).

# %%
started = time.perf_counter()
values_only = train_emulator(train, gradient_weight=0.0, seed=EMU_SEED, progress=not TINY, **TRAINING)
print(f"values-only emulator trained in {time.perf_counter() - started:.1f} s")
report_values = emulator_report(values_only, test, OUT / "report_values_only", test_rows, figures=False, progress=False)
rows = []
for label, r in (("Sobolev (lambda = 1)", report), ("values only (lambda = 0)", report_values)):
    rows.append((label, r["value_error_sigma_obs"]["median_all"], r["value_error_sigma_obs"]["worst_p95"],
                 r["jacobian_rel_error"]["median"], r["fisher"]["overlap_median"]))
print(f"{'':>26} {'value err':>10} {'worst p95':>10} {'Jac err':>8} {'Fisher overlap':>15}")
for row in rows:
    print(f"{row[0]:>26} {row[1]:10.3f} {row[2]:10.3f} {row[3]:8.3f} {row[4]:15.3f}")

fig, ax = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
labels = [r[0] for r in rows]
ax[0].bar(labels, [r[1] for r in rows], color=["C0", "C1"])
ax[0].set_ylabel(r"median value error [$\sigma_{\rm obs}$]")
ax[1].bar(labels, [r[3] for r in rows], color=["C0", "C1"])
ax[1].set_ylabel("median Jacobian relative error")
for a in ax:
    a.tick_params(axis="x", labelsize=8)
    a.grid(alpha=0.3, axis="y")
fig.suptitle(f"test store ({report['n_test']} points): gradient training vs values only")
show(fig, "sobolev_vs_values.png")
(OUT / "comparison.json").write_text(json.dumps(
    {label: {"value_error_median": a, "value_error_worst_p95": b, "jacobian_rel_error_median": c, "fisher_overlap_median": d}
     for label, a, b, c, d in rows}, indent=1))
