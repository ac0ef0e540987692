"""Rates and the vector field of the two-zone model (MODEL.md sections 3-7).

Everything here is for ONE halo at ONE time; the solver vmaps it.  The state is the
log10 of the seven quantities, in MODEL.md order (:data:`STATE_NAMES`).

The vector field is *total*: for any finite state it returns finite derivatives.  The
log-state is saturated smoothly into [-LOG_STATE_BOUND, +LOG_STATE_BOUND] before it is
exponentiated, ratios are formed from logs, and divisions have positive denominators.
This matters for the implicit solvers: their Newton iterations and rejected trial steps
visit absurd states, and a NaN or inf there (even in a discarded computation) trips
lineax's non-finite check when differentiating (see docs/design.md).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import cosmology
from .config import (
    BOLTZMANN_ERG_PER_K,
    G_KPC_KMS2_PER_MSUN,
    GYR_S,
    KMS_IN_KPC_PER_GYR,
    KPC_CM,
    MSUN_G,
    PROTON_MASS_G,
    ModelConfig,
)
from .cooling import log_cooling_function

STATE_NAMES: tuple[str, ...] = (
    "M_star",
    "M_Z_star",
    "M_ISM",
    "M_Z_ISM",
    "M_CGM",
    "M_Z_CGM",
    "E_th",
)
N_STATE = len(STATE_NAMES)
LN10 = float(np.log(10.0))
#: Log-states are saturated into +-this many dex before exponentiation (totality).
LOG_STATE_BOUND = 60.0


def exp10(x: jax.Array) -> jax.Array:
    """10**x as exp(x ln 10): XLA lowers a float power to a slower ``pow``."""
    return jnp.exp(LN10 * x)


#: 1 Msun (km/s)^2 in erg.
_ERG_PER_MSUN_KMS2 = MSUN_G * 1e10


class Loadings(NamedTuple):
    """The four power-law feedback quantities of MODEL.md section 4."""

    eta_m: jax.Array  # mass loading
    eta_e: jax.Array  # energy loading (<= 1)
    eta_z: jax.Array  # metal loading (<= 1)
    t_dep: jax.Array  # ISM depletion time [Gyr]


class Rates(NamedTuple):
    """Every rate of MODEL.md section 6 for one halo at one time (mass rates in Msun/Gyr,
    energy rates in Msun (km/s)^2/Gyr, times in Gyr)."""

    mhalo: jax.Array
    mhalo_rate: jax.Array
    redshift: jax.Array
    virial_velocity: jax.Array  # km/s
    virial_radius: jax.Array  # kpc
    sfr: jax.Array
    eta_m: jax.Array
    eta_e: jax.Array
    eta_z: jax.Array
    t_dep: jax.Array
    temperature: jax.Array  # K
    t_cool: jax.Array
    t_ff: jax.Array
    cooling_rate: jax.Array  # Mdot_cool
    radiative_loss: jax.Array  # L_rad
    inflow_rate: jax.Array  # Mdot_in
    inflow_energy_rate: jax.Array
    outflow_rate: jax.Array  # Mdot_out (leaves the halo)
    outflow_energy_rate: jax.Array  # Edot_out
    f_uv: jax.Array
    f_prev: jax.Array
    wind_energy_rate: jax.Array  # eta_E eps_SN SFR
    z_ism: jax.Array  # metal mass fractions
    z_cgm: jax.Array


def saturate_log_state(log_state: jax.Array) -> jax.Array:
    """Identity for |y| <= LOG_STATE_BOUND - 5, smoothly bounded by LOG_STATE_BOUND beyond."""
    inner = LOG_STATE_BOUND - 5.0
    excess = jnp.abs(log_state) - inner
    squashed = inner + 5.0 * jnp.tanh(excess / 5.0)
    return jnp.where(excess > 0.0, jnp.sign(log_state) * squashed, log_state)


def loadings(theta: jax.Array, redshift: jax.Array, vvir: jax.Array, config: ModelConfig) -> Loadings:
    """Power laws log10 X = A + Az log10(1+z) + B log10(V_vir / 100 km/s) (MODEL.md s.4).

    ``theta`` = (A_etaM, B_etaM, A_etaE, B_etaE, A_etaZ, B_etaZ, A_tdep, B_tdep).
    eta_E and eta_Z are clipped at 1.
    """
    return loadings_from_logs(theta, jnp.log10(1.0 + redshift), jnp.log10(vvir / config.loading_pivot_velocity), config)


def loadings_from_logs(theta: jax.Array, log_1pz: jax.Array, log_v: jax.Array, config: ModelConfig) -> Loadings:
    """:func:`loadings` from log10(1 + z) and log10(V_vir / pivot velocity)."""

    def power_law(i: int, z_slope: float) -> jax.Array:
        return exp10(theta[i] + z_slope * log_1pz + theta[i + 1] * log_v)

    return Loadings(
        eta_m=power_law(0, config.redshift_slope_eta_m),
        eta_e=jnp.minimum(power_law(2, config.redshift_slope_eta_e), 1.0),
        eta_z=jnp.minimum(power_law(4, config.redshift_slope_eta_z), 1.0),
        t_dep=power_law(6, config.redshift_slope_t_dep),
    )


def uv_suppression(mhalo: jax.Array, redshift: jax.Array, config: ModelConfig) -> jax.Array:
    """f_UV = [1 + (2^(2/3) - 1)(M_c/M_h)^2]^(-3/2), log10 M_c = max(10 - 0.28 z, 8)."""
    return uv_suppression_log(jnp.log10(mhalo), redshift, config)


def uv_suppression_log(log_mhalo: jax.Array, redshift: jax.Array, config: ModelConfig) -> jax.Array:
    """:func:`uv_suppression` from log10 M_h [Msun]."""
    log_mc = jnp.maximum(config.uv_mass_log_z0 - config.uv_mass_slope * redshift, config.uv_mass_log_floor)
    ratio_sq = exp10(2.0 * (log_mc - log_mhalo))
    return jnp.exp(-1.5 * jnp.log1p((2.0 ** (2.0 / 3.0) - 1.0) * ratio_sq))


def cgm_profile_integrals(config: ModelConfig) -> tuple[float, float]:
    """Dimensionless integrals of the rho = A r^-alpha profile on [r_0, R_vir]:
    M_CGM = 4 pi A r_0^(3-alpha) * I_m and Int rho^2 dV = 4 pi A^2 r_0^(3-2 alpha) * I_2.
    Returns (I_m, I_2); for alpha = 1.5, I_2 = ln(R_vir / r_0)."""
    alpha = config.cgm_density_slope
    outer = 1.0 / config.cgm_inner_radius_fraction  # R_vir / r_0
    mass_integral = (outer ** (3.0 - alpha) - 1.0) / (3.0 - alpha)
    if abs(2.0 * alpha - 3.0) < 1e-12:
        square_integral = float(np.log(outer))
    else:
        square_integral = (outer ** (3.0 - 2.0 * alpha) - 1.0) / (3.0 - 2.0 * alpha)
    return mass_integral, square_integral


def _profile_rho2_volume_factor(config: ModelConfig) -> float:
    """Int rho^2 dV = factor * M_CGM^2 / r_0^3 (MODEL.md: ln(10) (1.5/(10^1.5-1))^2 / 4 pi)."""
    mass_integral, square_integral = cgm_profile_integrals(config)
    return square_integral / (4.0 * np.pi * mass_integral**2)


def _log10_cooling_prefactor(config: ModelConfig) -> float:
    """log10 of the factor turning Lambda [erg cm^3/s] x M_CGM^2/r_0^3 [Msun^2/kpc^3]
    into L_cool [Msun (km/s)^2 / Gyr]."""
    n_factor = config.electron_to_hydrogen * config.hydrogen_mass_fraction**2 / PROTON_MASS_G**2
    to_cgs = MSUN_G**2 / KPC_CM**3
    to_engine = GYR_S / _ERG_PER_MSUN_KMS2
    return float(np.log10(n_factor * to_cgs * to_engine * _profile_rho2_volume_factor(config)))


def _temperature_per_specific_energy(config: ModelConfig) -> float:
    """T [K] per unit specific energy e [(km/s)^2]: T = (2/3) mu m_p e / k_B."""
    return 2.0 / 3.0 * config.mean_molecular_weight * PROTON_MASS_G * 1e10 / BOLTZMANN_ERG_PER_K


def free_fall_time(mean_density: jax.Array) -> jax.Array:
    """t_ff = sqrt(3 pi / (32 G rho)) [Gyr] for a mean density rho [Msun/kpc^3]."""
    return jnp.sqrt(3.0 * jnp.pi / (32.0 * G_KPC_KMS2_PER_MSUN * mean_density)) / KMS_IN_KPC_PER_GYR


class Kinematics(NamedTuple):
    """Quantities of one halo at one time that depend on the time alone (not on the state or
    theta): the halo forcing and its cosmology."""

    mhalo: jax.Array  # Msun
    mhalo_rate: jax.Array  # Msun/Gyr
    redshift: jax.Array
    log_1pz: jax.Array  # log10(1 + z)
    virial_velocity: jax.Array  # km/s
    log_v: jax.Array  # log10(V_vir / loading pivot velocity)
    virial_radius: jax.Array  # kpc
    log_r0: jax.Array  # log10 r_0 [kpc], r_0 = cgm_inner_radius_fraction x R_vir
    t_ff: jax.Array  # Gyr, free-fall time at the mean halo density
    f_uv: jax.Array


def halo_kinematics(t: jax.Array, mhalo: jax.Array, mhalo_rate: jax.Array, config: ModelConfig) -> Kinematics:
    """:class:`Kinematics` at cosmic time ``t`` [Gyr] of a halo of mass ``mhalo`` [Msun] growing at
    ``mhalo_rate`` [Msun/Gyr], computed directly (MODEL.md sections 1, 5, 6)."""
    cosmo = config.cosmology
    redshift = cosmology.redshift_at_age(t, cosmo)
    vvir = cosmology.virial_velocity(mhalo, redshift, cosmo)
    rvir = cosmology.virial_radius(mhalo, redshift, cosmo)
    mean_halo_density = 3.0 * mhalo / (4.0 * jnp.pi * rvir**3)
    return Kinematics(
        mhalo=mhalo,
        mhalo_rate=mhalo_rate,
        redshift=redshift,
        log_1pz=jnp.log10(1.0 + redshift),
        virial_velocity=vvir,
        log_v=jnp.log10(vvir / config.loading_pivot_velocity),
        virial_radius=rvir,
        log_r0=jnp.log10(config.cgm_inner_radius_fraction * rvir),
        t_ff=free_fall_time(mean_halo_density),
        f_uv=uv_suppression(mhalo, redshift, config),
    )


def compute_rates(
    t: jax.Array,
    log_state: jax.Array,
    theta: jax.Array,
    mhalo: jax.Array,
    mhalo_rate: jax.Array,
    config: ModelConfig,
) -> Rates:
    """All rates at cosmic time ``t`` [Gyr] for a halo of mass ``mhalo`` [Msun] growing at
    ``mhalo_rate`` [Msun/Gyr], from the log10 state (7,)."""
    return rates_from_kinematics(log_state, theta, halo_kinematics(t, mhalo, mhalo_rate, config), config)


def rates_from_kinematics(log_state: jax.Array, theta: jax.Array, kin: Kinematics, config: ModelConfig) -> Rates:
    """All rates from the log10 state (7,), theta (8,) and the halo's :class:`Kinematics`."""
    cosmo = config.cosmology
    y = saturate_log_state(log_state)
    m_ism, m_cgm, e_th = exp10(y[2]), exp10(y[4]), exp10(y[6])
    z_ism = exp10(y[3] - y[2])
    z_cgm = exp10(y[5] - y[4])
    log_specific_energy = y[6] - y[4]
    specific_energy = exp10(log_specific_energy)  # (km/s)^2

    mhalo, mhalo_rate, redshift = kin.mhalo, kin.mhalo_rate, kin.redshift
    vvir, rvir, t_ff = kin.virial_velocity, kin.virial_radius, kin.t_ff
    load = loadings_from_logs(theta, kin.log_1pz, kin.log_v, config)
    sfr = m_ism / load.t_dep

    # Radiative cooling of the CGM
    log_temperature = log_specific_energy + np.log10(_temperature_per_specific_energy(config))
    temperature = exp10(log_temperature)
    log_lambda = log_cooling_function(log_temperature, y[5] - y[4] - np.log10(config.solar_metallicity))
    cutoff = jax.nn.sigmoid((log_temperature - config.cooling_cutoff_log_temperature) / config.cooling_cutoff_width_dex)
    log_l_cool = _log10_cooling_prefactor(config) + log_lambda + 2.0 * y[4] - 3.0 * kin.log_r0
    l_cool = exp10(log_l_cool) * cutoff
    # t_cool = E_th / L_cool, kept finite when the cut-off switches cooling off
    t_cool = e_th / jnp.maximum(l_cool, e_th * 1e-30)
    cooling_rate = m_cgm / (t_cool + t_ff)
    radiative_loss = e_th / jnp.sqrt(t_cool**2 + (config.f_rad * t_ff) ** 2)

    # Over-pressurised CGM escapes at the sound speed
    e_vir_specific = 0.75 * vvir**2
    d = config.overpressure_softness
    excess_energy = d * e_vir_specific * m_cgm * jax.nn.softplus((specific_energy / e_vir_specific - 1.0) / d)
    sound_speed = jnp.sqrt(10.0 * specific_energy / 9.0)
    outflow_energy_rate = excess_energy * sound_speed / rvir * KMS_IN_KPC_PER_GYR
    outflow_rate = outflow_energy_rate / specific_energy

    # Cosmic inflow, reduced by photo-heating and by an over-pressured CGM
    f_uv = kin.f_uv
    raw_inflow = cosmo.baryon_fraction * f_uv * mhalo_rate
    raw_inflow_energy = e_vir_specific * raw_inflow
    # f_prev = 1 / (1 + Edot_out / Edot_in,raw), written so that a halo that has stopped
    # growing (Edot_in,raw = 0) gives f_prev = 0 with a finite derivative (the naive
    # quotient overflows to inf, and its tangent becomes 0 * inf = NaN).
    f_prev = raw_inflow_energy / (raw_inflow_energy + outflow_energy_rate + 1e-300)
    inflow_rate = raw_inflow * f_prev
    inflow_energy_rate = e_vir_specific * inflow_rate

    return Rates(
        mhalo=mhalo,
        mhalo_rate=mhalo_rate,
        redshift=redshift,
        virial_velocity=vvir,
        virial_radius=rvir,
        sfr=sfr,
        eta_m=load.eta_m,
        eta_e=load.eta_e,
        eta_z=load.eta_z,
        t_dep=load.t_dep,
        temperature=temperature,
        t_cool=t_cool,
        t_ff=t_ff,
        cooling_rate=cooling_rate,
        radiative_loss=radiative_loss,
        inflow_rate=inflow_rate,
        inflow_energy_rate=inflow_energy_rate,
        outflow_rate=outflow_rate,
        outflow_energy_rate=outflow_energy_rate,
        f_uv=f_uv,
        f_prev=f_prev,
        wind_energy_rate=load.eta_e * config.sn_energy_per_mass * sfr,
        z_ism=z_ism,
        z_cgm=z_cgm,
    )


def state_derivatives(r: Rates, config: ModelConfig) -> tuple[jax.Array, ...]:
    """dX/dt of the seven linear state variables (MODEL.md section 7), from the rates.
    Masses in Msun/Gyr, energy in Msun (km/s)^2/Gyr."""
    one_minus_r = 1.0 - config.return_fraction
    y_z = config.metal_yield
    z_in = config.inflow_metallicity
    wind = r.eta_m * r.sfr
    return (
        one_minus_r * r.sfr,
        one_minus_r * r.z_ism * r.sfr,
        r.cooling_rate - one_minus_r * r.sfr - wind,
        r.z_cgm * r.cooling_rate + (1.0 - r.eta_z) * y_z * r.sfr - one_minus_r * r.z_ism * r.sfr - r.z_ism * wind,
        r.inflow_rate - r.cooling_rate + wind - r.outflow_rate,
        z_in * r.inflow_rate
        - r.z_cgm * r.cooling_rate
        + r.z_ism * wind
        + r.eta_z * y_z * r.sfr
        - r.z_cgm * r.outflow_rate,
        r.inflow_energy_rate + r.wind_energy_rate - r.radiative_loss - r.outflow_energy_rate,
    )


def log_state_derivative(
    t: jax.Array,
    log_state: jax.Array,
    theta: jax.Array,
    mhalo: jax.Array,
    mhalo_rate: jax.Array,
    config: ModelConfig,
) -> jax.Array:
    """d log10 X / dt (7,) [dex/Gyr]: the vector field the solver integrates.

    Each rate is divided by its own (saturated) state, so the result is finite for any
    finite input.  The ISM terms proportional to M_ISM are written per unit M_ISM, which
    keeps them exact when M_ISM is tiny.
    """
    return log_state_derivative_from_kinematics(log_state, theta, halo_kinematics(t, mhalo, mhalo_rate, config), config)


def log_state_derivative_from_kinematics(
    log_state: jax.Array, theta: jax.Array, kin: Kinematics, config: ModelConfig
) -> jax.Array:
    """:func:`log_state_derivative` (7,) [dex/Gyr] from the halo's :class:`Kinematics` at that time."""
    r = rates_from_kinematics(log_state, theta, kin, config)
    y = saturate_log_state(log_state)
    derivatives = jnp.stack(state_derivatives(r, config))
    return derivatives * exp10(-y) / LN10


def initial_log_state(mhalo: jax.Array, redshift: jax.Array, config: ModelConfig) -> jax.Array:
    """log10 state at the halo's start (MODEL.md section 3)."""
    f_b = config.baryon_fraction
    vvir = cosmology.virial_velocity(mhalo, redshift, config.cosmology)
    m_cgm = f_b * mhalo
    m_seed = config.initial_star_ism_fraction * f_b * mhalo
    z0 = config.initial_metallicity_solar * config.solar_metallicity
    linear = jnp.stack([m_seed, z0 * m_seed, m_seed, z0 * m_seed, m_cgm, z0 * m_cgm, 0.75 * vvir**2 * m_cgm])
    return jnp.log10(linear)
