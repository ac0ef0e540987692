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
# # 01 - One galaxy: its evolution and its exact Jacobian
#
# sapphire models a central galaxy as seven coupled ODEs driven by the growth of its dark-matter
# halo (docs/MODEL.md). The state is integrated as log10 of
#
# | state | meaning | unit |
# | --- | --- | --- |
# | `M_star`, `M_Z_star` | stellar mass, metals locked in stars | Msun |
# | `M_ISM`, `M_Z_ISM` | interstellar gas, its metals | Msun |
# | `M_CGM`, `M_Z_CGM` | hot circumgalactic gas, its metals | Msun |
# | `E_th` | thermal energy of the CGM | Msun (km/s)^2 |
#
# and depends on 8 parameters `theta` (power laws in V_vir of the mass, energy and metal loadings
# and of the ISM depletion time; `sapphire.DEFAULT_PRIOR` gives their box). Every parameter is a
# log10 amplitude `A_X` or a slope `B_X`, so theta is dimensionless and a Jacobian entry
# d log10 X / d theta is in dex per unit of theta.
#
# This notebook follows a Milky-Way-mass halo (log10 M_h(z=0) = 12, M_h in Msun) from its start
# to z = 0 at the centre of the prior box, and shows its exact Jacobian.
#
# Sizes: `SAPPHIRE_NOTEBOOK_SIZE=tiny` (CI) or `small` (default); outputs go to
# `SAPPHIRE_NOTEBOOK_OUT` (default `runs/notebooks`).

# %%
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import sapphire
from sapphire import plots
from sapphire.cosmology import present_age
from sapphire.plots import save_and_show

TINY = os.environ.get("SAPPHIRE_NOTEBOOK_SIZE", "small") == "tiny"
OUT = Path(os.environ.get("SAPPHIRE_NOTEBOOK_OUT", "runs/notebooks")) / "01_one_galaxy"
OUT.mkdir(parents=True, exist_ok=True)

# tiny: the explicit solver compiles ~3x faster than "auto" (Tsit5 plus Kvaerno3 for stiff
# halos); at the prior centre no halo is stiff, so both give the same answer here.
MODEL = sapphire.Model(solver="tsit5") if TINY else sapphire.Model()
N_HALOS = 8        # a family of Milky-Way-mass halos (8: the halo count of the other CI notebooks)
N_TIMES = 40 if TINY else 200
HALO_SEED = 0


def show(fig, name):
    """Save ``fig`` as OUT/name and display it (inline in Jupyter; nothing in a plain run)."""
    save_and_show(fig, OUT / name)


print(MODEL, "| outputs in", OUT)

# %% [markdown]
# ## A Milky-Way-mass halo
#
# `HaloPopulation.from_diffmah` draws central-halo growth histories from diffmahpop; the final
# masses are stratified in `[logm_min, logm_max]`. A narrow window around 10^12 Msun gives a
# family of Milky-Way-mass halos with different assembly histories; we follow the one closest to
# 10^12 Msun and keep the others to show the halo-to-halo scatter.

# %%
halos = sapphire.HaloPopulation.from_diffmah(N_HALOS, logm_min=11.95, logm_max=12.05, seed=HALO_SEED)
theta = sapphire.DEFAULT_PRIOR.centre
print(dict(zip(sapphire.PARAMETER_NAMES, theta)))

t0 = float(present_age(MODEL.config.cosmology))       # Gyr
times = np.linspace(0.5, t0, N_TIMES)                               # cosmic time, Gyr
started = time.perf_counter()
hist = MODEL.evolve(theta, halos, times=times)
print(f"evolved {N_HALOS} halos at {N_TIMES} times in {time.perf_counter() - started:.1f} s (incl. compilation); "
      f"failed: {hist.n_failed}")
mw = int(np.argmin(np.abs(np.asarray(hist.log_mhalo)[:, -1] - 12.0)))
print(f"Milky-Way halo: #{mw}, log10 M_h(z=0) = {float(hist.log_mhalo[mw, -1]):.3f}, "
      f"{int(hist.num_steps[mw])} solver steps")
assert hist.n_failed == 0

# %% [markdown]
# ## Histories of the seven states
#
# Each panel is log10 of one state versus cosmic time (Gyr; entries before the halo starts are
# NaN). The thick line is the Milky-Way halo, thin lines its siblings. The halo mass and the
# cosmic baryon budget f_b M_h are drawn in the `M_CGM` panel for scale.

# %%
log_state = np.asarray(hist.log_state)       # (n_halo, n_time, 7)
log_mhalo = np.asarray(hist.log_mhalo)       # (n_halo, n_time)
units = ["Msun"] * 6 + ["Msun (km/s)$^2$"]
fig, axes = plt.subplots(2, 4, figsize=(15, 6.5), sharex=True, layout="constrained")
for k, (ax, name) in enumerate(zip(axes.flat, sapphire.STATE_NAMES)):
    for i in range(N_HALOS):
        ax.plot(times, log_state[i, :, k], color="0.75" if i != mw else "C0", lw=0.8 if i != mw else 2.2)
    if name == "M_CGM":
        f_b = MODEL.config.cosmology.baryon_fraction
        ax.plot(times, log_mhalo[mw] + np.log10(f_b), "k--", lw=1, label=r"$f_b M_h$")
        ax.plot(times, log_mhalo[mw], "k:", lw=1, label=r"$M_h$")
        ax.legend(fontsize=8)
    ax.set_title(plots.STATE_LABELS[name])
    ax.set_ylabel(f"log10 [{units[k]}]")
    ax.grid(alpha=0.3)
ax = axes.flat[-1]
ax.plot(times, np.log10(np.asarray(hist.diagnostics["sfr"])[mw]) - 9.0, color="C1", lw=2)
ax.set_title("star-formation rate")
ax.set_ylabel(r"log10 SFR [Msun yr$^{-1}$]")
ax.grid(alpha=0.3)
for ax in axes[-1]:
    ax.set_xlabel("cosmic time [Gyr]")
fig.suptitle(f"Milky-Way-mass halo #{mw} at the prior centre (grey: {N_HALOS - 1} siblings)")
show(fig, "histories.png")

# %% [markdown]
# Some z = 0 diagnostics of the same galaxy (`Evolution.diagnostics` at the last time): stellar-to-
# halo mass ratio, gas ratio M_ISM/M_*, gas-phase metallicity 12 + log(O/H) and baryon fraction
# (baryons in the halo / M_h; the cosmic value is f_b ~ 0.16).

# %%
for key, label in [("log_smhm", "log10 M*/Mh"), ("log_gas_ratio", "log10 M_ISM/M*"),
                   ("oxygen_abundance", "12 + log(O/H)"), ("baryon_fraction", "baryon fraction")]:
    print(f"{label:>16}: {float(np.asarray(hist.diagnostics[key])[mw, -1]):.3f}")

# %% [markdown]
# ## The exact Jacobian d log10 X(z=0) / d theta
#
# `Model.jacobian` integrates the forward sensitivity equations together with the state, under
# the same error control, so the result is the derivative of the solution itself (not of a
# discretisation): shape (n_halo, 7 states, 8 parameters), in dex per unit of theta.

# %%
started = time.perf_counter()
jac = np.asarray(MODEL.jacobian(theta, halos))
print(f"Jacobian {jac.shape} in {time.perf_counter() - started:.1f} s (incl. compilation)")
fig = plots.jacobian_heatmap(jac[mw], title=f"Milky-Way-mass halo #{mw}, prior centre: d log10 X(z=0) / d theta")
show(fig, "jacobian_mw.png")

# %% [markdown]
# ## Is it exact? A finite-difference spot check
#
# One entry, d log10 M_*(z=0) / d A_tdep (a longer depletion time means fewer stars), against a
# central difference of two ordinary z = 0 solves at theta +- h e_j. The difference is only as
# good as the solver tolerance allows (rtol = 1e-5 in dex, so ~1e-6 noise / h), while the Jacobian
# carries no step-size error; agreement to ~1e-3 relative is what "exact" looks like here.

# %%
state, param = sapphire.STATE_NAMES.index("M_star"), sapphire.PARAMETER_NAMES.index("A_tdep")
h = 1e-3 * sapphire.DEFAULT_PRIOR.width[param]
step = np.zeros(8)
step[param] = h
plus = np.asarray(MODEL.evolve(theta + step, halos).log_state)[mw, state]
minus = np.asarray(MODEL.evolve(theta - step, halos).log_state)[mw, state]
fd = (plus - minus) / (2 * h)
exact = jac[mw, state, param]
FD_RELATIVE_ERROR = abs(fd - exact) / abs(exact)
print(f"d log10 M*/d A_tdep: exact {exact:.6f}, central difference (h = {h:g}) {fd:.6f}, "
      f"relative difference {FD_RELATIVE_ERROR:.1e}")
assert FD_RELATIVE_ERROR < 1e-2, "the Jacobian disagrees with finite differences"

# %% [markdown]
# The same derivative drives everything downstream: summary Jacobians of the training sets
# (notebook 03), the Sobolev emulator's gradient loss (04), and HMC on the exact model (05).
