"""Evolving a stacked halo batch: the compiled solve, its z = 0 / save-time outputs and the
MODEL.md section 8 diagnostics.  ``Model`` (sapphire.model) is the checked, device-placing front
of :func:`evolve_population`; the summaries (sapphire.population_summaries) trace it directly.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import cosmology
from .config import ModelConfig
from .halos import HaloForcing
from .physics import N_STATE, Rates, cgm_profile_integrals, compute_rates, free_fall_time
from .solve import solve_population, solve_population_with_jacobian, stiffness_estimate, theta_axis

__all__ = ["Evolution", "batch_stiffness", "evolve_population", "at_z0"]


class Evolution(NamedTuple):
    """What ``Model.evolve`` returns.  Without ``times`` the time axis is dropped
    (arrays are (n_halo, ...) at z = 0); with ``times`` (n_t,) they are (n_halo, n_t, ...).

    Entries of failed solves, and of times before a halo's start, are NaN.
    """

    times: np.ndarray  # Gyr
    log_state: jax.Array  # log10 of STATE_NAMES (Msun; E_th in Msun (km/s)^2)
    log_mhalo: jax.Array  # log10 Msun
    success: jax.Array  # (n_halo,) bool
    num_steps: jax.Array  # (n_halo,) solver steps taken
    implicit: jax.Array  # (n_halo,) bool, solved with the implicit solver
    diagnostics: dict[str, jax.Array]

    @property
    def n_failed(self) -> int:
        return int(np.sum(~np.asarray(self.success)))


def _diagnostics(rates: Rates, log_state: jax.Array, config: ModelConfig) -> dict[str, jax.Array]:
    """MODEL.md section 8 diagnostics from the rates and log state of one halo at one time."""
    log_mstar, _, log_mism, log_mzism, log_mcgm, _, _ = (log_state[i] for i in range(N_STATE))
    log_mh = jnp.log10(rates.mhalo)
    baryons = 10.0**log_mstar + 10.0**log_mism + 10.0**log_mcgm
    # t_cool / t_ff at r_0 = R_vir/10: local cooling time at the profile's density there,
    # free-fall time from the NFW mass inside r_0.
    conc = cosmology.halo_concentration(rates.mhalo, rates.redshift, config.cosmology)
    r0 = config.cgm_inner_radius_fraction * rates.virial_radius
    m_inside = rates.mhalo * cosmology.nfw_enclosed_mass_fraction(config.cgm_inner_radius_fraction, conc)
    t_ff_r0 = free_fall_time(3.0 * m_inside / (4.0 * jnp.pi * r0**3))
    # Local cooling time at r_0, t_cool(r_0) = e / (K Lambda rho(r_0)), relates to the
    # global t_cool = E_th / L_cool by Int rho^2 dV / (M_CGM rho(r_0)) = I_2 / I_m.
    mass_integral, square_integral = cgm_profile_integrals(config)
    t_cool_r0 = rates.t_cool * square_integral / mass_integral
    return {
        "mhalo": rates.mhalo,
        "sfr": rates.sfr,
        "ssfr": rates.sfr / 10.0**log_mstar,
        "oxygen_abundance": config.solar_oxygen_abundance + (log_mzism - log_mism) - np.log10(config.solar_metallicity),
        "log_gas_ratio": log_mism - log_mstar,
        "log_smhm": log_mstar - log_mh,
        "baryon_fraction": baryons / rates.mhalo,
        "cgm_temperature": rates.temperature,
        "t_cool_over_t_ff_r0": t_cool_r0 / t_ff_r0,
        "cooling_rate": rates.cooling_rate,
        "inflow_rate": rates.inflow_rate,
        "outflow_rate": rates.outflow_rate,
        "radiative_loss": rates.radiative_loss,
        "eta_m": rates.eta_m,
        "eta_e": rates.eta_e,
        "eta_z": rates.eta_z,
        "t_dep": rates.t_dep,
        "f_prev": rates.f_prev,
        "f_uv": rates.f_uv,
    }


def _halo_diagnostics(theta, forcing: HaloForcing, times, log_state, config: ModelConfig):
    """Diagnostics of one halo at each save time (vmapped over time)."""

    def at_time(t, y):
        mhalo, rate = forcing(t)
        return _diagnostics(compute_rates(t, y, theta, mhalo, rate, config), y, config)

    return jax.vmap(at_time)(times, log_state)


@functools.partial(jax.jit, static_argnames=("config",))
def batch_stiffness(theta, forcings, config):
    """(n_halo,) stiffness estimates of a stacked batch at theta (``SolverSettings.stiffness_threshold``)."""
    return jax.vmap(stiffness_estimate, in_axes=(None, 0, None))(theta, forcings, config)


@functools.partial(jax.jit, static_argnames=("settings", "config", "with_jacobian", "free"))
def evolve_population(theta, forcings, save_times, settings, config, with_jacobian, free):
    """The compiled solve of a stacked batch: (log_state (n, n_t, 7), log_mhalo (n, n_t),
    HaloSolution, diagnostics {name: (n, n_t)}, jacobian (n, n_t, 7, k) or None); entries of
    times before a halo's start, and of failed solves, are NaN.  ``save_times`` None: z = 0 only.
    ``free`` (tuple of parameter indices, static): the Jacobian's k columns (None: all 8).  No
    argument has a default: jit keys its cache on the call's signature, so a call that left
    ``free`` out would compile the same program again (docs/design.md s.18)."""
    if with_jacobian:
        result = solve_population_with_jacobian(theta, forcings, save_times, settings, config, free)
        solution, jacobian = result.solution, result.jacobian
    else:
        solution, jacobian = solve_population(theta, forcings, save_times, settings, config), None
    t_end = cosmology.present_age(config.cosmology)
    times = jnp.full((1,), t_end) if save_times is None else save_times
    per_halo_times = jnp.clip(times[None, :], forcings.t_start[:, None], t_end)
    diagnostics = jax.vmap(_halo_diagnostics, in_axes=(theta_axis(theta), 0, 0, 0, None))(
        theta, forcings, per_halo_times, solution.log_state, config
    )
    exists = times[None, :] >= forcings.t_start[:, None] - 1e-12
    log_mhalo = jnp.log10(diagnostics.pop("mhalo"))
    mask = lambda a: jnp.where(exists.reshape(exists.shape + (1,) * (a.ndim - 2)), a, jnp.nan)
    return (
        jax.tree.map(mask, solution.log_state),
        jnp.where(exists, log_mhalo, jnp.nan),
        solution,
        {k: mask(v) for k, v in diagnostics.items()},
        None if jacobian is None else mask(jacobian),
    )


def at_z0(evolved):
    """(log_mhalo (n,), log_state (n, 7), success (n,), jacobian (n, 7, 8) or None) at z = 0 from
    an :func:`evolve_population` result with ``save_times=None``."""
    log_state, log_mhalo, solution, _, jacobian = evolved
    return (
        log_mhalo[:, 0],
        log_state[:, 0],
        solution.success,
        None if jacobian is None else jacobian[:, 0],
    )
