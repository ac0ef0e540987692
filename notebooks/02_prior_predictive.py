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
# # 02 - Prior predictive checks of the three relations
#
# Before fitting anything: does the prior box produce galaxies like the observed ones? We draw
# parameter vectors theta from the prior (a seeded Latin hypercube, space-filling in 8-D), evolve
# a population of halos at each, and compare the model's three z = 0 relations with the data:
#
# | relation | x | y | data |
# | --- | --- | --- | --- |
# | `smhm` | log10 M_h(z=0) [Msun] | log10(M_* / M_h) | Behroozi et al. 2019 |
# | `gas_ratio` | log10 M_* [Msun] | log10(M_ISM / M_*) | Catinella et al. 2018 (means include non-detections) |
# | `mzr` | log10 M_* [Msun] | 12 + log10(O/H) of the ISM | Andrews & Martini 2013 |
#
# The model side of each relation is a kernel-regression mean of the halos at the observed x
# (`Model.summaries`: the same summaries the likelihood, the training sets and the emulator use).
# A good prior brackets every data point with room to spare, without being absurdly wide.
#
# This is the notebook version of `sapphire ppc` (which also offers `--corners`: the 256 corners
# of the box); it calls the same functions: `sapphire.prior.latin_hypercube`,
# `Model.summaries`, `sapphire.predictive.predictive_coverage` and
# `sapphire.plots.prior_predictive_bands`.

# %%
import json
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import sapphire
from sapphire import plots
from sapphire.plots import save_and_show
from sapphire.population_summaries import summary_names
from sapphire.predictive import predictive_coverage
from sapphire.prior import latin_hypercube

TINY = os.environ.get("SAPPHIRE_NOTEBOOK_SIZE", "small") == "tiny"
OUT = Path(os.environ.get("SAPPHIRE_NOTEBOOK_OUT", "runs/notebooks")) / "02_prior_predictive"
OUT.mkdir(parents=True, exist_ok=True)

MODEL = sapphire.Model(solver="tsit5") if TINY else sapphire.Model()
N_HALOS = 8 if TINY else 64      # diffmah halos, log10 M_h(z=0) stratified in [10, 12.5]
N_DRAWS = 8 if TINY else 64      # Latin-hypercube draws of theta
HALO_SEED, DESIGN_SEED = 0, 0


def show(fig, name):
    """Save ``fig`` as OUT/name and display it (inline in Jupyter; nothing in a plain run)."""
    save_and_show(fig, OUT / name)


obs = sapphire.Observations.default()
halos = sapphire.HaloPopulation.from_diffmah(N_HALOS, seed=HALO_SEED)
thetas = latin_hypercube(sapphire.DEFAULT_PRIOR, N_DRAWS, seed=DESIGN_SEED)   # (N_DRAWS, 8)
print(f"{N_DRAWS} draws x {N_HALOS} halos; {obs.n_summary} summaries: {', '.join(obs.names)}")

# %% [markdown]
# ## The draws
#
# One ordinary (no derivatives) solve of the whole population per theta; the loop reuses one
# compiled program. Failed halo solves are excluded from that draw's regressions and counted.

# %%
means, stderrs, failed = [], [], []
started = time.perf_counter()
for theta in thetas:
    s = MODEL.summaries(theta, halos, obs)
    means.append(np.asarray(s.mean))
    stderrs.append(np.asarray(s.stderr))
    failed.append(s.n_failed)
seconds = time.perf_counter() - started
means, stderrs, failed = np.stack(means), np.stack(stderrs), np.asarray(failed)
print(f"{N_DRAWS} draws in {seconds:.1f} s (incl. compilation); draws with failed halo solves: "
      f"{int(np.sum(failed > 0))} ({int(failed.sum())} failed solves in all)")

# %% [markdown]
# ## Bands with the data
#
# Light band: min-max envelope over the draws; dark band: the central 95 per cent (2.5-97.5
# percentiles); dashed: the median; points: the data with their 1-sigma errors.

# %%
fig = plots.prior_predictive_bands(
    obs, means, title=f"Prior predictive: {N_DRAWS} Latin-hypercube draws, {N_HALOS} halos"
)
show(fig, "ppc.png")

# %% [markdown]
# ## Does the prior bracket the data?
#
# `predictive_coverage` tells, per data point, whether it lies inside the envelope and inside the
# 2.5-97.5 band; the fractions per relation summarise it. (With a handful of draws, as in the CI
# run, the band is barely narrower than the envelope.)

# %%
coverage = predictive_coverage(obs, means)
print(f"{'relation':>10} {'points':>6} {'in envelope':>12} {'in 2.5-97.5':>12}")
for name, frac in coverage["fractions"].items():
    print(f"{name:>10} {frac['n_points']:6d} {frac['inside_envelope']:12.2f} {frac['inside_band']:12.2f}")
for p in coverage["points"]:
    if not p["inside_envelope"]:
        print(f"  outside the envelope: {p['relation']} at x = {p['x']:.2f}: y = {p['y']:.3f}, envelope {p['envelope']}")

(OUT / "ppc.json").write_text(json.dumps({**coverage, "n_halos": N_HALOS, "failed_per_draw": failed.tolist(),
                                          "solver": MODEL.settings.to_dict()}, indent=1))
np.savez_compressed(OUT / "ppc_draws.npz", thetas=thetas, mean=means, stderr=stderrs, n_failed=failed,
                    names=np.array(summary_names(obs)))

# %% [markdown]
# ## Which parameters move which relation?
#
# A quick look at the draws themselves: the Spearman rank correlation between each parameter and
# each relation's mean summary over the draws (a crude, global sensitivity; `sapphire
# sensitivity` gives the local, exact one versus halo mass).

# %%
from scipy.stats import spearmanr

rho = np.full((len(obs.relations), 8), np.nan)
for r, rel in enumerate(obs.relations):
    y = np.nanmean(means[:, obs.slices[rel.name]], axis=1)
    ok = np.isfinite(y)
    if ok.sum() >= 3:
        for j in range(8):
            rho[r, j] = spearmanr(thetas[ok, j], y[ok]).statistic
fig, ax = plt.subplots(figsize=(8, 2.6), layout="constrained")
image = ax.imshow(rho, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
ax.set_xticks(range(8), sapphire.PARAMETER_NAMES, rotation=30, ha="right")
ax.set_yticks(range(len(obs.relations)), [rel.name for rel in obs.relations])
for r in range(rho.shape[0]):
    for j in range(8):
        ax.text(j, r, "nan" if not np.isfinite(rho[r, j]) else f"{rho[r, j]:.2f}", ha="center", va="center", fontsize=8)
fig.colorbar(image, ax=ax, label="Spearman rank correlation")
ax.set_title(f"parameter vs mean of each relation over {N_DRAWS} prior draws")
show(fig, "rank_correlation.png")
