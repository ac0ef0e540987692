"""Cooling function (MODEL.md s.6, issue 16): PCHIP in log Z (monotone, C1), C1 below 1e4 K."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.interpolate import PchipInterpolator

import sapphire  # noqa: F401  (enables float64)
from sapphire.cooling import LOW_T_SOFTNESS, _read_table, log_cooling_function

LOG_T, LOG_Z, TABLE = _read_table()
LAMBDA = jax.jit(log_cooling_function)


def test_passes_through_table_and_is_scipy_pchip_in_z_at_table_temperatures():
    t, z = np.meshgrid(LOG_T, LOG_Z, indexing="ij")
    np.testing.assert_allclose(LAMBDA(jnp.asarray(t), jnp.asarray(z)), TABLE, rtol=0, atol=1e-12)
    zz = np.linspace(LOG_Z[0], LOG_Z[-1], 397)
    for i in (0, 57, 140, 300, 400):  # 1e4 K, log T = 4.57 (early CGMs), 5.4, 7, 1e8 K
        want = PchipInterpolator(LOG_Z, TABLE[i])(zz)
        np.testing.assert_allclose(LAMBDA(jnp.full(zz.shape, LOG_T[i]), jnp.asarray(zz)), want, rtol=0, atol=1e-12)


def test_non_decreasing_in_z_where_the_table_is():
    monotone_rows = np.all(np.diff(TABLE, axis=1) >= 0.0, axis=1)
    assert monotone_rows.sum() > 300
    zz = np.linspace(LOG_Z[0], LOG_Z[-1], 401)
    t, z = np.meshgrid(LOG_T[monotone_rows], zz, indexing="ij")
    values = np.asarray(LAMBDA(jnp.asarray(t), jnp.asarray(z)))
    assert np.all(np.diff(values, axis=1) >= -1e-12)
    # Between table temperatures the cubic in log T mixes rows: dips stay < 1e-4 dex (the
    # cubic spline in log Z had 0.09 dex dips near log T = 5.4, Z ~ 2e-3 Z_sun).
    tt = np.linspace(4.0, 8.0, 1601)
    t, z = np.meshgrid(tt, zz[::4], indexing="ij")
    values = np.asarray(LAMBDA(jnp.asarray(t), jnp.asarray(z)))
    assert np.min(np.diff(values, axis=1)) > -1e-4


def _slopes_either_side(f, x0, eps=1e-6, gap=1e-9):
    """One-sided finite-difference slopes just left and right of x0."""
    left = (f(x0 - gap) - f(x0 - gap - eps)) / eps
    right = (f(x0 + gap + eps) - f(x0 + gap)) / eps
    return left, right


@pytest.mark.parametrize("log_z", [-3.0, -1.3, 0.0, 1.0])
def test_c1_at_the_low_temperature_edge(log_z):
    f = lambda t: float(LAMBDA(jnp.asarray(t), jnp.asarray(log_z)))
    left, right = _slopes_either_side(f, LOG_T[0])
    assert right > 1.0  # the table is steep here (~11 dex/dex)
    assert abs(left - right) < 1e-3 * abs(right)
    # below the edge it saturates smoothly: bounded, monotone, at most s * slope lower
    below = np.array([f(t) for t in (3.99, 3.9, 3.5, 2.0, -5.0)])
    assert np.all(np.diff(below) <= 0.0) and below[-1] >= f(LOG_T[0]) - LOW_T_SOFTNESS * right * 1.001
    grads = jax.vmap(jax.grad(lambda t: log_cooling_function(t, log_z)))(jnp.asarray([3.0, 3.99, 4.0, 4.01]))
    assert np.all(np.isfinite(np.asarray(grads)))


@pytest.mark.parametrize("log_t", [4.5, 5.4, 6.3])
def test_c1_in_z_at_the_metallicity_nodes(log_t):
    for z0 in LOG_Z[1:-1]:
        f = lambda z: float(LAMBDA(jnp.asarray(log_t), jnp.asarray(z)))
        left, right = _slopes_either_side(f, z0)
        assert abs(left - right) < 1e-3 * max(abs(right), 1e-2), (z0, left, right)
