"""Collisional-ionisation-equilibrium cooling function Lambda(T, Z) (MODEL.md section 6).

The table (``data/cie_cooling_chianti.csv``; CHIANTI via Ryden & Pogge 2021, CC-BY 4.0,
provenance in its header) gives log10 Lambda [erg cm^3 s^-1] on a uniform grid of
log10 T = 4..8 (0.01 dex) and 9 metallicities Z/Z_sun = 0.001..10.

Interpolation (issue 16): in log Z, SciPy's PCHIP (monotone, C1: no overshoot between the
9 metallicities, so Lambda is non-decreasing in Z wherever the table is) through each row of
the table; in log T, the not-a-knot cubic spline (C2) of those PCHIP coefficients, which
keeps the surface C1 in log Z (a linear combination of piecewise cubics with common knots and
continuous slopes) and passes it through every table entry.  SciPy computes the coefficients
once, at load time; evaluation is a few fused multiply-adds in JAX.  Below the table's first
temperature (1e4 K) log Lambda continues smoothly (C1) and saturates,
``L(T0) + s L'(T0) tanh((log T - log T0) / s)`` with s = 0.05 dex (no kink at the edge); the
high-T and Z edges are clamped smoothly, and a sigmoid cut-off ``sigmoid((log T - 4) / 0.05)``
ends atomic cooling below 1e4 K.
"""

from __future__ import annotations

import functools
import importlib.resources
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.interpolate import CubicSpline, PchipInterpolator

TABLE_FILE = "cie_cooling_chianti.csv"


class CoolingTable(NamedTuple):
    """Piecewise-cubic coefficients of the cooling table (NumPy arrays: they become
    compile-time constants, and are safe to cache across traces)."""

    log_t0: float  # first log10 T node [K]
    dlog_t: float  # uniform log10 T spacing
    n_t_intervals: int
    log_z_nodes: np.ndarray  # (n_z,) log10 Z/Z_sun
    # (4, n_t - 1, 4, n_z - 1): on log T interval i and log Z interval k, the PCHIP coefficient
    # of (log Z - log Z_k)^(3 - q) is sum_p coeffs[p, i, q, k] (log T - log T_i)^(3 - p).
    coeffs: np.ndarray


#: Softness [dex in log T] of the low-temperature continuation below the table (the width of
#: the atomic-cooling cut-off).
LOW_T_SOFTNESS = 0.05


def _read_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    text = importlib.resources.files("sapphire.data").joinpath(TABLE_FILE).read_text()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    header = lines[0].split(",")
    z_solar = np.array([float(h.split("_", 1)[1]) for h in header[1:]])
    values = np.array([[float(v) for v in ln.split(",")] for ln in lines[1:]])
    return values[:, 0], np.log10(z_solar), values[:, 1:]


@functools.lru_cache(maxsize=1)
def load_cooling_table() -> CoolingTable:
    """Read the shipped table and build its spline coefficients (cached)."""
    log_t, log_z, log_lambda = _read_table()
    spacing = np.diff(log_t)
    if not np.allclose(spacing, spacing[0], rtol=1e-6, atol=1e-9):
        raise ValueError(f"{TABLE_FILE}: log T grid is not uniform")
    z_rows = np.stack([PchipInterpolator(log_z, row).c for row in log_lambda])  # (n_t, 4, n_z - 1)
    t_spline = CubicSpline(log_t, z_rows, axis=0)
    return CoolingTable(
        log_t0=float(log_t[0]),
        dlog_t=float(spacing[0]),
        n_t_intervals=int(log_t.size - 1),
        log_z_nodes=np.asarray(log_z),
        coeffs=np.asarray(t_spline.c),
    )


def _smooth_clamp(x: jax.Array, low: float, high: float, softness: float) -> jax.Array:
    """Identity on [low, high]; outside, saturates within ``softness`` of the edge via tanh.

    C2 at the joins (tanh has unit slope and zero curvature at 0), bounded, finite for
    any finite input.
    """
    below = low + softness * jnp.tanh((x - low) / softness)
    above = high + softness * jnp.tanh((x - high) / softness)
    return jnp.where(x < low, below, jnp.where(x > high, above, x))


def _horner(coeffs: jax.Array, dx: jax.Array) -> jax.Array:
    return ((coeffs[0] * dx + coeffs[1]) * dx + coeffs[2]) * dx + coeffs[3]


def log_cooling_function(
    log_temperature: jax.Array, log_metallicity_solar: jax.Array, table: CoolingTable | None = None
) -> jax.Array:
    """log10 Lambda(T, Z) [erg cm^3 s^-1] from the table, without the low-T cut-off.

    ``log_temperature`` is log10 T [K]; ``log_metallicity_solar`` is log10 Z/Z_sun.
    Inside the table the surface passes through every entry (module docstring: PCHIP in log Z,
    cubic spline in log T).  Below the first temperature T0 it continues as
    L(T0) + s L'(T0) tanh((log T - log T0) / s), s = ``LOW_T_SOFTNESS`` (C1 at T0, bounded);
    above the last temperature and outside the metallicities, inputs saturate smoothly within
    0.005 dex (log T) and 0.02 dex (log Z) of the edges.
    """
    table = table or load_cooling_table()
    log_t_max = table.log_t0 + table.n_t_intervals * table.dlog_t
    x = jnp.asarray(log_temperature)
    high_t = log_t_max + 0.005 * jnp.tanh((x - log_t_max) / 0.005)
    below = x < table.log_t0
    log_t = jnp.where(below, table.log_t0, jnp.where(x > log_t_max, high_t, x))
    log_z_nodes = jnp.asarray(table.log_z_nodes)
    log_z = _smooth_clamp(log_metallicity_solar, log_z_nodes[0], log_z_nodes[-1], 0.02)
    log_t, log_z, below, x = jnp.broadcast_arrays(log_t, log_z, below, x)

    position = (log_t - table.log_t0) / table.dlog_t
    i_t = jnp.clip(jnp.floor(position).astype(jnp.int32), 0, table.n_t_intervals - 1)
    dt = (position - i_t) * table.dlog_t
    i_z = jnp.clip(jnp.searchsorted(log_z_nodes, log_z, side="right") - 1, 0, log_z_nodes.size - 2)
    dz = log_z - log_z_nodes[i_z]
    c = jnp.asarray(table.coeffs)[:, i_t, :, i_z]  # (..., 4 powers of dt, 4 powers of dz)
    c = jnp.moveaxis(c, (-2, -1), (0, 1))  # (4, 4, ...)
    z_poly = _horner(c, dt)  # (4, ...): coefficients in dz at this log T
    z_slope = (3.0 * c[0] * dt + 2.0 * c[1]) * dt + c[2]  # d/d log T of those
    value = _horner(z_poly, dz)
    soft = LOW_T_SOFTNESS
    continuation = soft * _horner(z_slope, dz) * jnp.tanh(jnp.where(below, x - table.log_t0, 0.0) / soft)
    return value + jnp.where(below, continuation, 0.0)


def cooling_function(
    temperature: jax.Array,
    metallicity_solar: jax.Array,
    cutoff_log_temperature: float = 4.0,
    cutoff_width_dex: float = 0.05,
) -> jax.Array:
    """Lambda(T, Z) [erg cm^3 s^-1] with the smooth atomic-cooling cut-off below 1e4 K.

    Takes T [K] and Z/Z_sun (linear); for the log-space variant see
    :func:`log_cooling_function`.
    """
    log_t = jnp.log10(temperature)
    cutoff = jax.nn.sigmoid((log_t - cutoff_log_temperature) / cutoff_width_dex)
    return 10.0 ** log_cooling_function(log_t, jnp.log10(metallicity_solar)) * cutoff
