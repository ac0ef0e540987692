"""Kernel-regression summaries: NumPy reference, closed forms, masking, gradients."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _numpy_reference import MIN_SUPPORT, SUPPORT_ERROR, SUPPORT_FLOOR, numpy_kernel_regression, numpy_observed_y

import sapphire  # noqa: F401  (enables float64)
from sapphire.config import DEFAULT_CONFIG
from sapphire.observations import Observations
from sapphire.summaries import (
    RELATION_NAMES,
    KernelRegression,
    count_poorly_supported,
    kernel_regression,
    relation_coordinates,
    summary_statistics,
    summary_support,
)

H = 0.25  # bandwidth of the tests [units of x]


def _random_data(seed, n=300):
    rng = np.random.default_rng(seed)
    x = rng.uniform(9.0, 12.0, n)
    y = 0.5 * x - 3.0 + 0.2 * np.sin(3 * x) + rng.normal(0.0, 0.25, n)
    return x, y


def test_matches_numpy_reference():
    x, y = _random_data(1)
    centres = np.linspace(9.0, 12.0, 9)
    got = kernel_regression(x, y, centres, np.ones(x.size, bool), bandwidth=H)
    assert isinstance(got, KernelRegression)
    ref = numpy_kernel_regression(x, y, centres, H)
    for field in ("mean", "scatter", "n_eff", "stderr", "support"):
        np.testing.assert_allclose(getattr(got, field), ref[field], rtol=1e-11, err_msg=field)
        assert getattr(got, field).shape == centres.shape


def test_matches_numpy_reference_with_mask():
    x, y = _random_data(2)
    valid = np.random.default_rng(3).uniform(size=x.size) > 0.3
    centres = np.linspace(9.2, 11.8, 9)
    got = kernel_regression(x, y, centres, valid, bandwidth=H)
    ref = numpy_kernel_regression(x, y, centres, H, valid)
    for field in ("mean", "scatter", "n_eff", "stderr", "support"):
        np.testing.assert_allclose(getattr(got, field), ref[field], rtol=1e-11, err_msg=field)


def test_exact_line_symmetric_about_centre():
    c, a, b = 10.7, -2.0, 0.8
    offsets = np.array([0.05, 0.2, 0.3, 0.7, 1.1, 1.5])
    x = np.concatenate([c - offsets, c + offsets])
    y = a + b * x
    got = kernel_regression(x, y, np.array([c]), np.ones(x.size, bool), bandwidth=H)
    np.testing.assert_allclose(got.mean, a + b * c, rtol=0, atol=1e-13)


def test_constant_y_gives_zero_scatter_and_finite_gradient():
    x, _ = _random_data(5)
    y = np.full(x.size, 1.7)
    centres = np.linspace(9.5, 11.5, 9)
    got = kernel_regression(x, y, centres, np.ones(x.size, bool), bandwidth=H)
    np.testing.assert_allclose(got.mean, 1.7, rtol=1e-14)
    np.testing.assert_allclose(got.scatter, 0.0, atol=1e-14)
    # no scatter: the error is the support term alone, S = sum_j exp(-(c - x_j)^2 / 2h^2)
    support = np.exp(-0.5 * ((centres[:, None] - x[None, :]) / H) ** 2).sum(axis=1)
    np.testing.assert_allclose(got.support, support, rtol=1e-12)
    np.testing.assert_allclose(
        got.stderr, SUPPORT_ERROR * MIN_SUPPORT / (support + SUPPORT_FLOOR * MIN_SUPPORT), rtol=1e-12
    )
    # y = 0 exactly: the scatter is exactly zero and its gradient must stay finite (safe sqrt)
    zero = jnp.zeros(x.size)
    valid = np.ones(x.size, bool)
    assert np.all(kernel_regression(x, zero, centres, valid, bandwidth=H).scatter == 0.0)
    grad = jax.jit(jax.grad(lambda yy: jnp.sum(kernel_regression(x, yy, centres, valid, bandwidth=H).scatter)))(zero)
    assert np.all(np.isfinite(grad))


def test_gaussian_noise_recovers_sigma():
    rng = np.random.default_rng(6)
    n, sigma = 20000, 0.3
    x = rng.uniform(0.0, 1.0, n)
    y = 2.0 + rng.normal(0.0, sigma, n)
    centres = np.array([0.3, 0.5, 0.7])
    got = kernel_regression(x, y, centres, np.ones(n, bool), bandwidth=0.05)
    n_eff = np.asarray(got.n_eff)
    assert np.all(n_eff > 1000)
    # standard error of a standard deviation estimate ~ sigma / sqrt(2 n_eff); allow 5 of them
    assert np.all(np.abs(got.scatter - sigma) < 5 * sigma / np.sqrt(2 * n_eff))
    assert np.all(np.abs(got.mean - 2.0) < 5 * sigma / np.sqrt(n_eff))
    support_term = SUPPORT_ERROR * MIN_SUPPORT / (np.asarray(got.support) + SUPPORT_FLOOR * MIN_SUPPORT)
    np.testing.assert_allclose(got.stderr**2, got.scatter**2 / n_eff + support_term**2, rtol=1e-12)


def test_far_away_centre_is_finite():
    x = np.array([0.0, 1.0, 2.0, 3.0])
    y = np.array([5.0, 6.0, 7.0, 8.0])
    got = kernel_regression(x, y, np.array([-1e3, 1e3]), np.ones(4, bool), bandwidth=H)
    for field in got:
        assert np.all(np.isfinite(field))
    np.testing.assert_allclose(got.mean, [5.0, 8.0])  # one point left in view: no slope to follow
    np.testing.assert_allclose(got.support, [0.0, 0.0])
    np.testing.assert_allclose(got.stderr, SUPPORT_ERROR / SUPPORT_FLOOR, rtol=1e-12)  # capped, finite


def test_edge_extrapolates_a_line_not_the_nearest_point():
    """Dense points on y = a + b x over [0, 1]: beyond the edge (by D), local-linear follows the
    line to within the ridge's bias (< 10% of b D); Nadaraya-Watson sits near y(1), off by > b D."""
    x = np.linspace(0.0, 1.0, 2001)
    a, b, h = 0.3, 2.0, 0.1
    centres = np.array([0.5, 1.0, 1.1, 1.2])
    got = kernel_regression(x, a + b * x, centres, np.ones(x.size, bool), bandwidth=h)
    np.testing.assert_allclose(got.mean[0], a + b * centres[0], atol=1e-6)
    beyond = np.clip(centres - 1.0, 0.0, None)
    assert np.all(np.abs(got.mean - (a + b * centres)) <= 0.1 * b * beyond + 0.005)


def test_support_vanishes_smoothly_and_error_grows():
    """Moving a centre out of the population: support falls and stderr rises monotonically, with
    no jump (second differences along a fine grid are small next to the changes)."""
    x, y = _random_data(12, n=200)  # x in [9, 12]
    centres = np.linspace(11.0, 13.5, 251)
    got = kernel_regression(x, y, centres, np.ones(x.size, bool), bandwidth=H)
    support, stderr, mean = map(np.asarray, (got.support, got.stderr, got.mean))
    assert np.all(np.diff(support[50:]) < 0) and np.all(np.diff(stderr[100:]) > 0)
    assert support[0] > 10 and support[-1] < 1e-3 and stderr[-1] > 10 * stderr[0]
    assert count_poorly_supported(support) == np.sum(support < MIN_SUPPORT) > 0
    step = np.abs(np.diff(mean))
    assert np.max(np.abs(np.diff(mean, n=2))) < 0.05 * np.max(step) + 1e-12
    assert np.all(np.isfinite(mean))


def test_masked_points_have_no_influence_even_if_nan():
    x, y = _random_data(7, n=120)
    valid = np.ones(x.size, bool)
    valid[::4] = False
    x_bad = np.where(valid, x, np.nan)
    y_bad = np.where(valid, y, np.nan)
    y_bad[1::8] = np.where(valid[1::8], y_bad[1::8], np.inf)
    centres = np.linspace(9.5, 11.5, 5)
    got = kernel_regression(x_bad, y_bad, centres, valid, bandwidth=H)
    ref = kernel_regression(x[valid], y[valid], centres, np.ones(valid.sum(), bool), bandwidth=H)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-13)

    def loss(xx, yy):
        r = kernel_regression(xx, yy, centres, valid, bandwidth=H)
        return jnp.sum(r.mean) + jnp.sum(r.scatter) + jnp.sum(r.stderr) + jnp.sum(r.n_eff)

    gx, gy = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(x_bad), jnp.asarray(y_bad))
    assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gy))
    np.testing.assert_array_equal(gx[~valid], 0.0)
    np.testing.assert_array_equal(gy[~valid], 0.0)


def test_fewer_than_two_valid_points_gives_nan():
    x = np.array([1.0, 2.0, 3.0])
    got = kernel_regression(x, x, np.array([2.0]), np.array([False, True, False]), bandwidth=H)
    assert np.all(np.isnan(got.mean))


def _central_fd(f, v, eps):
    v = np.asarray(v, float)
    out = np.empty_like(v)
    for i in range(v.size):
        vp, vm = v.copy(), v.copy()
        vp[i] += eps
        vm[i] -= eps
        out[i] = (f(vp) - f(vm)) / (2 * eps)
    return out


@pytest.mark.parametrize("wrt", ["x", "y"])
def test_gradient_matches_finite_differences(wrt):
    x, y = _random_data(8, n=25)
    valid = np.ones(x.size, bool)
    valid[3] = False
    centres = np.array([9.6, 10.5, 11.4])
    coef = np.array([[1.0, -0.7, 0.4], [0.3, 1.2, -0.5], [2.0, 0.6, 1.1]])  # mean, scatter, stderr

    def scalar(xx, yy):
        r = kernel_regression(xx, yy, centres, valid, bandwidth=H)
        return coef[0] @ r.mean + coef[1] @ r.scatter + 10.0 * coef[2] @ r.stderr

    if wrt == "x":
        f = jax.jit(lambda v: scalar(v, jnp.asarray(y)))
        v0 = x
    else:
        f = jax.jit(lambda v: scalar(jnp.asarray(x), v))
        v0 = y
    g = np.asarray(jax.grad(f)(jnp.asarray(v0)))
    fd = _central_fd(lambda v: float(f(jnp.asarray(v))), v0, 1e-5)
    scale = np.max(np.abs(g))
    assert scale > 0
    assert np.max(np.abs(g - fd)) / scale < 1e-6
    assert g[3] == 0.0


def test_jit_and_vmap():
    x, y = _random_data(9, n=80)
    centres = np.linspace(9.5, 11.5, 4)
    valid = np.ones(x.size, bool)
    ys = np.stack([y, y + 1.0, 2.0 * y])
    batched = jax.jit(jax.vmap(lambda yy: kernel_regression(x, yy, centres, valid, bandwidth=H)))(ys)
    for i in range(3):
        single = kernel_regression(x, ys[i], centres, valid, bandwidth=H)
        np.testing.assert_allclose(batched.mean[i], single.mean, rtol=1e-13)
        np.testing.assert_allclose(batched.stderr[i], single.stderr, rtol=1e-12)


# ------------------------------------------------------------------------------------------------
def _population(seed=10, n=400):
    rng = np.random.default_rng(seed)
    log_mh = rng.uniform(10.0, 12.5, n)
    log_state = rng.normal(size=(n, 7))
    log_state[:, 0] = log_mh - 2.3 + 0.2 * rng.normal(size=n)
    log_state[:, 2] = log_state[:, 0] - 0.4 * (log_state[:, 0] - 9.0) + 0.1 * rng.normal(size=n)
    log_state[:, 3] = log_state[:, 2] - 2.0 + 0.1 * (log_state[:, 0] - 9.0)
    valid = rng.uniform(size=n) > 0.05
    return log_mh, log_state, valid


def test_relation_coordinates_closed_form():
    log_mh, log_state, _ = _population()
    coords = relation_coordinates(log_mh, log_state)
    assert tuple(coords) == RELATION_NAMES
    np.testing.assert_allclose(coords["smhm"][0], log_mh)
    np.testing.assert_allclose(coords["smhm"][1], log_state[:, 0] - log_mh)
    np.testing.assert_allclose(coords["gas_ratio"][0], log_state[:, 0])
    np.testing.assert_allclose(coords["gas_ratio"][1], log_state[:, 2] - log_state[:, 0])
    np.testing.assert_allclose(coords["mzr"][0], log_state[:, 0])
    z_ism = 10 ** (log_state[:, 3] - log_state[:, 2])
    np.testing.assert_allclose(coords["mzr"][1], 8.69 + np.log10(z_ism / 0.0134), rtol=1e-13)
    # solar metallicity gives the solar abundance
    solar = log_state.copy()
    solar[:, 3] = solar[:, 2] + np.log10(DEFAULT_CONFIG.solar_metallicity)
    np.testing.assert_allclose(relation_coordinates(log_mh, solar)["mzr"][1], 8.69, rtol=1e-14)
    # constants come from the config
    other = dataclasses.replace(DEFAULT_CONFIG, solar_oxygen_abundance=8.5, solar_metallicity=0.02)
    shifted = relation_coordinates(log_mh, log_state, other)["mzr"][1]
    np.testing.assert_allclose(shifted - coords["mzr"][1], (8.5 - 8.69) - np.log10(0.02 / 0.0134), rtol=1e-12)


def test_summary_statistics_order_and_values():
    obs = Observations.default()
    log_mh, log_state, valid = _population()
    log_state = np.where(valid[:, None], log_state, np.nan)
    mean, stderr = summary_statistics(log_mh, log_state, valid, obs)
    support = summary_support(log_mh, log_state, valid, obs)
    assert mean.shape == stderr.shape == support.shape == (obs.n_summary,)
    coords = relation_coordinates(log_mh, log_state)
    for rel in obs.relations:
        x, y = coords[rel.name]
        if rel.name == "gas_ratio":  # the xGASS limit: 8.0, log10 0.02, helium, 0.1 dex
            assert (rel.detection_limit.log_mass_limit, rel.detection_limit.width) == (8.0, 0.1)
        y = numpy_observed_y(rel, x, y)
        ref = numpy_kernel_regression(x, y, rel.x, rel.bandwidth, valid)
        np.testing.assert_allclose(mean[obs.slices[rel.name]], ref["mean"], rtol=1e-12)
        np.testing.assert_allclose(stderr[obs.slices[rel.name]], ref["stderr"], rtol=1e-11)
        np.testing.assert_allclose(support[obs.slices[rel.name]], ref["support"], rtol=1e-12)
    assert np.all(np.isfinite(mean)) and np.all(stderr > 0)

    sub = obs.select(["mzr", "smhm"])
    m_sub, _ = summary_statistics(log_mh, log_state, valid, sub)
    np.testing.assert_allclose(m_sub[sub.slices["smhm"]], mean[obs.slices["smhm"]], rtol=1e-14)
    np.testing.assert_allclose(m_sub[sub.slices["mzr"]], mean[obs.slices["mzr"]], rtol=1e-14)


def test_summary_statistics_grad_with_failed_halos():
    obs = Observations.default()
    log_mh, log_state, valid = _population(11)
    log_state = np.where(valid[:, None], log_state, np.nan)
    weights = 1.0 / obs.sigma

    def loss(ls):
        m, s = summary_statistics(log_mh, ls, valid, obs)
        return jnp.sum(weights * m) + jnp.sum(s)

    g = jax.jit(jax.grad(loss))(jnp.asarray(log_state))
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g[~valid], 0.0)
    assert np.any(g[valid] != 0.0)
