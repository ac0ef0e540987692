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
# # 05 - A forecast, cross-validated against exact HMC
#
# How well would the three relations constrain the 8 parameters, and can we trust an emulator
# to say so? The steps:
#
# 1. **Mock data**: the exact model's summaries at a known truth theta_true, with the real data's
#    error bars (`forecasts.mock_observations`; noise-free, so the truth is the best fit).
# 2. **Emulator forecast, all 8 parameters free** (`EmulatorForward`): the MAP from several starts
#    (`find_map`), the Laplace (Fisher) approximation there (`laplace`: the Hessian of -ln L) and
#    the posterior by NUTS (`run_hmc`). The likelihood adds the emulator's own error estimate to
#    the observational variance.
# 3. **The check**: the exact model is too slow for 8-D HMC on a laptop, so we compare on a
#    reduced problem (1-2 free parameters, the others held at the truth): exact-model HMC
#    (`ExactForward`, gradients from the exact sensitivity solve) versus emulator HMC on the same
#    problem, compared by `cross_validate` (mean shifts in units of the exact posterior's sigma,
#    width ratios, and a classifier two-sample test).
#
# Parameters are dimensionless (log10 amplitudes and slopes of the loading and depletion-time
# power laws); summaries and their errors are in dex.
#
# The stores and the emulator of notebooks 03-04 are reused when present, otherwise built here.

# %%
import json
import time

import matplotlib.pyplot as plt
import numpy as np
from demo_settings import EMU_SEED, EMULATORS, MODEL, ROOT, TINY, TRAINING, generate_store

import forecasts
import sapphire
import training_sets
from emulator import SobolevEmulator, train_emulator
from forecasts.plots import corner_overlay
from sapphire.plots import save_and_show

# Store and emulator settings: notebooks/demo_settings.py, shared with notebooks 03 and 04.
OUT = ROOT / "05_forecast"
OUT.mkdir(parents=True, exist_ok=True)
EMULATORS.mkdir(parents=True, exist_ok=True)
# The forecast.
SEED = 0
MAP_STARTS = 2 if TINY else 8
EMULATOR_HMC = (2, 30, 30) if TINY else (4, 500, 1000)       # chains, warmup, draws per chain
EXACT_FREE = ["A_etaM"] if TINY else ["A_etaM", "A_tdep"]
EXACT_HMC = (1, 20, 20) if TINY else (2, 100, 200)    # small: ~6 min on 2 cores (estimated from 2 x 450 in 9.5 min)
# The truth, in the unit cube of the prior box: an interior, unremarkable point.
TRUTH = sapphire.DEFAULT_PRIOR.from_unit(np.array([0.55, 0.6, 0.45, 0.5, 0.4, 0.55, 0.5, 0.45]))


def show(fig, name):
    """Save ``fig`` as OUT/name and display it (inline in Jupyter; nothing in a plain run)."""
    save_and_show(fig, OUT / name)


def show_png(path):
    """Display a PNG written by a library function (Jupyter only)."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display

        if get_ipython() is not None:
            display(Image(filename=str(path)))
    except ImportError:
        pass


def hmc_line(post):
    seconds = post.times.get("warmup", 0.0) + post.times.get("sampling", 0.0)
    return (f"{post.samples.shape[0]} chain(s) x {post.samples.shape[1]} draws: sampling {seconds:.1f} s "
            f"(+{post.times.get('compile', 0.0):.1f} s compile), max R-hat {np.nanmax(post.r_hat):.3f}, "
            f"min ESS {np.nanmin(post.ess):.0f}, {post.n_divergent} divergences")


# %% [markdown]
# ## The emulator and the halos
#
# The training store (resumed: nothing is computed if notebook 03 or 04 made it) and the
# emulator saved by notebook 04, retrained only if it was trained on another store.

# %%
train = training_sets.open_training_set(generate_store("train").path)
halos = train.halos()          # the population the emulator was trained on
emu_path = EMULATORS / "sobolev.emu"
emu = SobolevEmulator.load(emu_path) if emu_path.exists() else None
if emu is None or emu.store_fingerprint != train.fingerprint:
    emu = train_emulator(train, gradient_weight=1.0, seed=EMU_SEED, progress=not TINY, **TRAINING)
    emu.save(emu_path)
    print("trained and saved", emu_path)
print(emu)

# %% [markdown]
# ## 1. Mock observations
#
# y = the exact summaries at theta_true on the store's halos; x and sigma are the real data's.

# %%
obs = sapphire.Observations.default()
mock = forecasts.mock_observations(MODEL, halos, obs, TRUTH)
(OUT / "mock_observations.json").write_text(mock.to_json())
print("theta_true:", dict(zip(sapphire.PARAMETER_NAMES, np.round(TRUTH, 3))))
fig, axes = plt.subplots(1, len(obs.relations), figsize=(13, 3.6), layout="constrained")
for ax, rel, mrel in zip(axes, obs.relations, mock.relations):
    ax.errorbar(rel.x, rel.y, yerr=rel.sigma, fmt="o", color="0.6", ms=3, capsize=2, label="real data")
    ax.errorbar(mrel.x, mrel.y, yerr=mrel.sigma, fmt="s", color="C3", ms=3, capsize=2, label="mock (exact model)")
    ax.set_xlabel(rel.x_label)
    ax.set_ylabel(rel.y_label)
    ax.set_title(rel.name)
    ax.grid(alpha=0.3)
axes[0].legend(fontsize=8)
show(fig, "mock.png")

# %% [markdown]
# ## 2. Emulator forecast with every parameter free
#
# MAP: Adam in the unit cube from a seeded Latin hypercube of starts (all starts are kept in the
# result). Laplace: the inverse Hessian of -ln L at the MAP gives the Fisher 1-sigma errors (a
# MAP on a face of the prior box makes them meaningless; `laplace` says so). HMC: NUTS with a
# dense mass matrix, uniform prior on the box.

# %%
fm = forecasts.EmulatorForward(emu, mock)
started = time.perf_counter()
fit = forecasts.find_map(fm, n_starts=MAP_STARTS, seed=SEED)
fisher = forecasts.laplace(fm, fit.best)
print(f"MAP and Laplace in {time.perf_counter() - started:.1f} s: -ln L = {fit.best_loss:.2f} "
      f"({fit.n_converged}/{len(fit.losses)} starts converged); Fisher: {fisher.message or 'positive definite'}")
chains, warmup, draws = EMULATOR_HMC
post = forecasts.run_hmc(fm, num_chains=chains, num_warmup=warmup, num_samples=draws, seed=SEED)
print("emulator HMC:", hmc_line(post))

print(f"{'parameter':>9} {'truth':>7} {'MAP':>7} {'Fisher sd':>9} {'HMC mean':>9} {'HMC sd':>7}")
for i, name in enumerate(post.names):
    sd = "-" if fisher.sigmas is None else f"{fisher.sigmas[i]:.3f}"
    print(f"{name:>9} {TRUTH[i]:7.3f} {fit.best[i]:7.3f} {sd:>9} {post.mean[i]:9.3f} {post.std[i]:7.3f}")
(OUT / "emulator_forecast.json").write_text(json.dumps(
    {"truth": TRUTH.tolist(), "map": fit.to_dict(), "laplace": fisher.to_dict(), "hmc": post.summary()}, indent=1, default=str))

# %%
path = corner_overlay([post.flat], ["emulator HMC"], post.names, OUT / "emulator_posterior.png", truths=TRUTH,
                      title=f"emulator posterior, all 8 parameters ({chains} x {draws} draws)")
show_png(path)

# %% [markdown]
# ## 3. The reduced problem: exact HMC versus emulator HMC
#
# Free: the parameters below; the rest held at the truth. For the exact model each NUTS
# leapfrog step is a population solve with forward sensitivities, and the chains run one after
# another (`chain_method="sequential"`: vmapping the solver would run both its explicit and
# implicit branches). The exact HMC starts at the truth and checkpoints to `exact_hmc.npz`, so an
# interrupted run continues where it stopped. Both Fisher matrices are Gauss-Newton (J^T C^-1 J),
# computed the same way for the two models: the exact one at the truth, which is the exact MAP of
# a noise-free mock (up to the theta dependence of the model's standard error).

# %%
exact = forecasts.ExactForward(MODEL, halos, mock, free=EXACT_FREE, fixed=TRUTH)
start = TRUTH[list(exact.free_index)]
exact_fisher = forecasts.gauss_newton_fisher(exact, start)
chains, warmup, draws = EXACT_HMC
checkpoint = OUT / "exact_hmc.npz"
started = time.perf_counter()
try:
    exact_post = forecasts.run_hmc(exact, num_chains=chains, num_warmup=warmup, num_samples=draws, seed=SEED,
                                   init=start, checkpoint=checkpoint)
except forecasts.CheckpointMismatch as err:     # a checkpoint of another problem (e.g. other sizes)
    print("starting afresh:", err)
    checkpoint.unlink()
    exact_post = forecasts.run_hmc(exact, num_chains=chains, num_warmup=warmup, num_samples=draws, seed=SEED,
                                   init=start, checkpoint=checkpoint)
print(f"exact HMC ({', '.join(EXACT_FREE)} free, {halos.n_halos} halos) in {time.perf_counter() - started:.1f} s:",
      hmc_line(exact_post))

# %%
emu_reduced = forecasts.EmulatorForward(emu, mock, free=EXACT_FREE, fixed=TRUTH)
emu_fisher = forecasts.gauss_newton_fisher(emu_reduced, forecasts.find_map(emu_reduced, n_starts=MAP_STARTS, seed=SEED).best)
chains, warmup, draws = EMULATOR_HMC
emu_post = forecasts.run_hmc(emu_reduced, num_chains=chains, num_warmup=warmup, num_samples=draws, seed=SEED)
print("emulator HMC (reduced):", hmc_line(emu_post))

# %% [markdown]
# ## Cross-validation
#
# `cross_validate(reference, candidate)`: PASS when every mean shift is below 0.2 sigma of the
# exact posterior, every width ratio within 1/1.25-1.25, and a classifier cannot tell the two
# sample sets apart (AUC below 0.6). The Fisher comparison is informational. With the CI sizes
# (a barely trained emulator, a few tens of draws) expect FAIL; the `small` sizes are the
# meaningful run.

# %%
report = forecasts.cross_validate(exact_post, emu_post, fisher_reference=exact_fisher, fisher_candidate=emu_fisher, seed=SEED)
report.to_json(OUT / "crossval.json")
(OUT / "crossval.md").write_text(report.to_markdown())
print(report.to_markdown())
figures = report.plot(OUT, truths=start)
for path in figures:
    show_png(path)
print("verdict:", report.verdict, "| figures:", [p.name for p in figures])
