"""Public entry point: ``Model`` (evolve a halo population, exact Jacobians).

>>> model = sapphire.Model()
>>> halos = sapphire.HaloPopulation.from_diffmah(256, seed=0)
>>> out = model.evolve(DEFAULT_PRIOR.centre, halos)
>>> out.log_state.shape, out.success.all()
((256, 7), True)
>>> jac = model.jacobian(DEFAULT_PRIOR.centre, halos)   # (256, 7, 8), d log10 X / d theta
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import cosmology
from .config import DEFAULT_CONFIG, ModelConfig
from .halos import HaloForcing, HaloPopulation
from .physics import N_STATE, STATE_NAMES, Rates, cgm_profile_integrals, compute_rates, free_fall_time
from .prior import DEFAULT_PRIOR, Prior
from .solve import HaloSolution, SolverName, SolverSettings, solve_population


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
