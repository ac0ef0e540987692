"""Flat LCDM background and virial-halo scalings (MODEL.md section 1).

Every function is pure ``jax.numpy``: differentiable, jit/vmap-friendly and
array-broadcasting.  The cosmology is a static (hashable) ``Cosmology`` passed as the
last argument; its parameters enter as Python floats.  Radiation is neglected
(flat LCDM with Omega_L = 1 - Omega_m), so the time-scale-factor relation has a
closed form in both directions.

Units: time Gyr, length kpc (physical), mass Msun, velocity km/s,
H in km/s/kpc, densities Msun/kpc^3, G = 4.30091e-6 kpc (km/s)^2 / Msun.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax.typing import ArrayLike

from .config import G_KPC_KMS2_PER_MSUN, PLANCK15, Cosmology

Array = jnp.ndarray

__all__ = [
    "age_at_scale_factor",
    "scale_factor_at_age",
    "redshift_at_age",
    "age_at_redshift",
    "present_age",
    "hubble_parameter",
    "critical_density",
    "matter_fraction",
    "virial_overdensity",
    "virial_radius",
    "virial_velocity",
    "halo_concentration",
    "nfw_enclosed_mass_fraction",
]


def age_at_scale_factor(a: ArrayLike, cosmo: Cosmology = PLANCK15) -> Array:
    """Cosmic time t(a) [Gyr] at scale factor ``a``.

    t(a) = 2 / (3 H0 sqrt(Omega_L)) * asinh( sqrt(Omega_L / Omega_m) a^1.5 ).
    """
    a = jnp.asarray(a, dtype=float)
    h0 = cosmo.hubble_constant_per_gyr
    ol, om = cosmo.omega_lambda, cosmo.omega_matter
    return 2.0 / (3.0 * h0 * math.sqrt(ol)) * jnp.arcsinh(math.sqrt(ol / om) * a**1.5)


def scale_factor_at_age(t: ArrayLike, cosmo: Cosmology = PLANCK15) -> Array:
    """Scale factor a(t) at cosmic time ``t`` [Gyr].

    a(t) = ( sqrt(Omega_m / Omega_L) sinh(1.5 H0 sqrt(Omega_L) t) )^(2/3).
    """
    t = jnp.asarray(t, dtype=float)
    h0 = cosmo.hubble_constant_per_gyr
    ol, om = cosmo.omega_lambda, cosmo.omega_matter
    # exp/log form: XLA lowers a float power to a slower pow
    return jnp.exp(2.0 / 3.0 * jnp.log(math.sqrt(om / ol) * jnp.sinh(1.5 * h0 * math.sqrt(ol) * t)))


def redshift_at_age(t: ArrayLike, cosmo: Cosmology = PLANCK15) -> Array:
    """Redshift z(t) = 1 / a(t) - 1 at cosmic time ``t`` [Gyr]."""
    return 1.0 / scale_factor_at_age(t, cosmo) - 1.0


def age_at_redshift(z: ArrayLike, cosmo: Cosmology = PLANCK15) -> Array:
    """Cosmic time [Gyr] at redshift ``z``: t(a = 1 / (1 + z))."""
    z = jnp.asarray(z, dtype=float)
    return age_at_scale_factor(1.0 / (1.0 + z), cosmo)


def present_age(cosmo: Cosmology = PLANCK15) -> float:
    """Present age of the Universe t0 = t(a = 1) [Gyr], as a Python float (13.797 for Planck15).

    t0 = 2 / (3 H0 sqrt(Omega_L)) * asinh( sqrt(Omega_L / Omega_m) ).
    """
    h0 = cosmo.hubble_constant_per_gyr
    ol, om = cosmo.omega_lambda, cosmo.omega_matter
    return 2.0 / (3.0 * h0 * math.sqrt(ol)) * math.asinh(math.sqrt(ol / om))


def _e_squared(z: ArrayLike, cosmo: Cosmology) -> Array:
    """E(z)^2 = Omega_m (1 + z)^3 + Omega_L (dimensionless)."""
    z = jnp.asarray(z, dtype=float)
    return cosmo.omega_matter * (1.0 + z) ** 3 + cosmo.omega_lambda


def hubble_parameter(z: ArrayLike, cosmo: Cosmology = PLANCK15) -> Array:
    """Hubble rate H(z) [km/s/kpc]: H(z) = H0 sqrt(Omega_m (1 + z)^3 + Omega_L)."""
    return cosmo.hubble_constant / 1000.0 * jnp.sqrt(_e_squared(z, cosmo))


def critical_density(z: ArrayLike, cosmo: Cosmology = PLANCK15) -> Array:
    """Critical density rho_crit(z) = 3 H(z)^2 / (8 pi G) [Msun/kpc^3] (physical)."""
    hz = hubble_parameter(z, cosmo)
    return 3.0 * hz**2 / (8.0 * math.pi * G_KPC_KMS2_PER_MSUN)


def matter_fraction(z: ArrayLike, cosmo: Cosmology = PLANCK15) -> Array:
    """Matter density parameter Omega_m(z) = Omega_m (1 + z)^3 / E(z)^2 (dimensionless)."""
    z = jnp.asarray(z, dtype=float)
    return cosmo.omega_matter * (1.0 + z) ** 3 / _e_squared(z, cosmo)


def virial_overdensity(z: ArrayLike, cosmo: Cosmology = PLANCK15) -> Array:
    """Bryan & Norman (1998) virial overdensity w.r.t. the critical density.

    Delta_c = 18 pi^2 + 82 x - 39 x^2, x = Omega_m(z) - 1 (about 102 at z = 0, -> 178 at high z).
    """
    x = matter_fraction(z, cosmo) - 1.0
    return 18.0 * math.pi**2 + 82.0 * x - 39.0 * x**2


def virial_radius(mhalo: ArrayLike, z: ArrayLike, cosmo: Cosmology = PLANCK15) -> Array:
    """Virial radius R_vir [physical kpc] of a halo of virial mass ``mhalo`` [Msun].

    R_vir = ( 3 M_h / (4 pi Delta_c(z) rho_crit(z)) )^(1/3).
    """
    mhalo = jnp.asarray(mhalo, dtype=float)
    rho = virial_overdensity(z, cosmo) * critical_density(z, cosmo)
    return jnp.cbrt(3.0 * mhalo / (4.0 * math.pi * rho))


def virial_velocity(mhalo: ArrayLike, z: ArrayLike, cosmo: Cosmology = PLANCK15) -> Array:
    """Circular velocity at the virial radius, V_vir = sqrt(G M_h / R_vir) [km/s]; ``mhalo`` in Msun."""
    mhalo = jnp.asarray(mhalo, dtype=float)
    return jnp.sqrt(G_KPC_KMS2_PER_MSUN * mhalo / virial_radius(mhalo, z, cosmo))


def halo_concentration(mhalo: ArrayLike, z: ArrayLike, cosmo: Cosmology = PLANCK15) -> Array:
    """NFW concentration c_vir of Dutton & Maccio (2014), virial definition (diagnostics only).

    log10 c = a + b log10( M_h / (1e12 Msun/h) ), with ``mhalo`` in Msun (converted to Msun/h
    inside), a = 0.537 + 0.488 exp(-0.718 z^1.08), b = -0.097 + 0.024 z.
    Calibrated for M_h > 1e10 Msun/h and z <= 5.
    """
    mhalo = jnp.asarray(mhalo, dtype=float)
    z = jnp.asarray(z, dtype=float)
    a = 0.537 + 0.488 * jnp.exp(-0.718 * z**1.08)
    b = -0.097 + 0.024 * z
    return 10.0 ** (a + b * jnp.log10(mhalo * cosmo.little_h / 1e12))


def nfw_enclosed_mass_fraction(r_over_rvir: ArrayLike, concentration: ArrayLike) -> Array:
    """Fraction M(<r) / M_vir of an NFW halo enclosed within r = ``r_over_rvir`` x R_vir.

    M(<r) / M_vir = m(c x) / m(c), m(y) = ln(1 + y) - y / (1 + y), x = r / R_vir.
    """
    x = jnp.asarray(r_over_rvir, dtype=float)
    c = jnp.asarray(concentration, dtype=float)

    def m(y: Array) -> Array:
        return jnp.log1p(y) - y / (1.0 + y)

    return m(c * x) / m(c)
