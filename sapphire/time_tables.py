"""Time-only quantities of a halo from tables on its forcing grid (docs/design.md s.6, issue 20).

At every call the vector field needs the halo's mass and accretion rate and their cosmology:
z(t), V_vir, R_vir, t_ff and f_UV (:class:`sapphire.physics.Kinematics`).  None depends on the
state or theta (computed directly: ~0.14 us of a ~1 us call; tabulated, a solve is ~4% faster,
docs/design.md s.6 "Issue 20").  Here they come
from cubic tables on the forcing's common time grid, found with the forcing's own interval
lookup (one ``searchsorted`` per call, as before):

* log10 M_h and sqrt(dM_h/dt): the halo's forcing spline itself (C2, unchanged);
* functions of time alone (:data:`COLUMNS`), tabulated once per batch by a clamped cubic spline
  (C2, end slopes exact) on the common grid: log10(1 + z), z, log10(Delta_c rho_crit) and t_ff;
* log10 R_vir and log10 V_vir are then linear in log10 M_h and log10(Delta_c rho_crit), so they
  are as smooth as the forcing; f_UV is computed exactly from the tabulated z and log10 M_h
  (its log10 M_c = max(10 - 0.28 z, 8) has a kink that a spline would round off).

Interpolation error on the default 384-point grid against the direct formulas (16 diffmah halos,
6,000 times): z 1.1e-7 relative (worst at 0.1 Gyr, where the grid is coarsest relative to t),
log10(1 + z), log10 V_vir and log10 R_vir <= 2e-8 dex, t_ff 2e-12, f_UV 2e-9, M_h and its rate
unchanged -- 100x below the solver's rtol 1e-5 (``tests/test_engine_accuracy.py``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import cosmology
from .config import G_KPC_KMS2_PER_MSUN, ModelConfig
from .halos import HaloForcing
from .physics import Kinematics, exp10, free_fall_time, uv_suppression_log

__all__ = ["COLUMNS", "CosmicTable", "cosmic_columns", "cosmic_table", "tabulated_kinematics"]

#: Columns of :class:`CosmicTable`, in order.
COLUMNS = ("log_1pz", "redshift", "log_virial_density", "t_ff")


class CosmicTable(NamedTuple):
    """Cubic coefficients (d, c, b, a) of the :data:`COLUMNS` on a common time grid, each
    (n_t - 1, 4), in the layout of ``diffrax.CubicInterpolation`` (and of ``HaloForcing.coeffs``)."""

    coeffs: tuple[jax.Array, jax.Array, jax.Array, jax.Array]


def cosmic_columns(t: jax.Array, config: ModelConfig) -> jax.Array:
    """(4,) functions of cosmic time alone at ``t`` [Gyr]: log10(1 + z), z, log10(Delta_c
    rho_crit) [Msun/kpc^3] (the mean density inside R_vir) and t_ff [Gyr] at that density."""
    cosmo = config.cosmology
    z = cosmology.redshift_at_age(t, cosmo)
    density = cosmology.virial_overdensity(z, cosmo) * cosmology.critical_density(z, cosmo)
    return jnp.stack([jnp.log10(1.0 + z), z, jnp.log10(density), free_fall_time(density)])


def cosmic_table(times: jax.Array, config: ModelConfig) -> CosmicTable:
    """Clamped cubic spline (C2; exact end slopes) of :func:`cosmic_columns` on ``times`` (n_t,) Gyr."""
    values = jax.vmap(lambda t: cosmic_columns(t, config))(times)  # (n_t, 4)
    slope = lambda t: jax.jvp(lambda s: cosmic_columns(s, config), (t,), (jnp.ones_like(t),))[1]
    h = jnp.diff(times)  # (n_t - 1,)
    delta = jnp.diff(values, axis=0) / h[:, None]
    # Slopes m_i: h_i m_{i-1} + 2 (h_{i-1} + h_i) m_i + h_{i-1} m_{i+1} = 3 (h_i delta_{i-1} + h_{i-1} delta_i)
    # inside; m_0 and m_{n-1} are the exact derivatives.
    zero, one = jnp.zeros((1,)), jnp.ones((1,))
    lower = jnp.concatenate([zero, h[1:], zero])
    diag = jnp.concatenate([one, 2.0 * (h[:-1] + h[1:]), one])
    upper = jnp.concatenate([zero, h[:-1], zero])
    rhs = jnp.concatenate(
        [
            slope(times[0])[None],
            3.0 * (h[1:, None] * delta[:-1] + h[:-1, None] * delta[1:]),
            slope(times[-1])[None],
        ]
    )
    m = jax.lax.linalg.tridiagonal_solve(lower, diag, upper, rhs)
    hh = h[:, None]
    c = (3.0 * delta - 2.0 * m[:-1] - m[1:]) / hh
    d = (m[:-1] + m[1:] - 2.0 * delta) / hh**2
    return CosmicTable((d, c, m[:-1], values[:-1]))


_LOG10_3_OVER_4PI = math.log10(3.0 / (4.0 * math.pi))
_LOG10_G = math.log10(G_KPC_KMS2_PER_MSUN)


def tabulated_kinematics(t: jax.Array, forcing: HaloForcing, table: CosmicTable, config: ModelConfig) -> Kinematics:
    """:class:`Kinematics` of ONE halo at scalar ``t`` [Gyr] from its forcing spline and the batch's
    :class:`CosmicTable` (built on the same grid).  ``t`` is clamped to the grid, as ``HaloForcing``
    does; the forcing columns are evaluated exactly as ``HaloForcing.__call__`` evaluates them."""
    times = forcing.times
    t = jnp.clip(t, times[0], times[-1])
    index = jnp.clip(jnp.searchsorted(times, t, side="left") - 1, 0, times.shape[0] - 2)
    frac = t - times[index]

    def horner(coeffs):
        d, c, b, a = (x[index] for x in coeffs)
        return a + frac * (b + frac * (c + frac * d))

    log_mhalo, sqrt_rate = horner(forcing.coeffs)
    log_1pz, redshift, log_density, t_ff = horner(table.coeffs)
    log_rvir = (log_mhalo + _LOG10_3_OVER_4PI - log_density) / 3.0
    log_vvir = 0.5 * (_LOG10_G + log_mhalo - log_rvir)
    return Kinematics(
        mhalo=exp10(log_mhalo),
        mhalo_rate=sqrt_rate**2,
        redshift=redshift,
        log_1pz=log_1pz,
        virial_velocity=exp10(log_vvir),
        log_v=log_vvir - math.log10(config.loading_pivot_velocity),
        virial_radius=exp10(log_rvir),
        log_r0=log_rvir + math.log10(config.cgm_inner_radius_fraction),
        t_ff=t_ff,
        f_uv=uv_suppression_log(log_mhalo, redshift, config),
    )
