"""Summaries, exact summary Jacobians and the Gaussian likelihood (issue 3).

Compilation dominates the cost of these tests, so they share few compiled shapes: one tight
model (Tsit5, rtol = atol = 1e-10; finite differences are trustworthy only at tight tolerances,
MODEL.md s.9) on 10 halos, and one model with a small step cap on 6 halos to force failures.
The CLI tests in test_sensitivity.py reuse the tight model's compiled solves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _numpy_reference import numpy_kernel_regression, numpy_observed_y

import sapphire
from sapphire import cosmology
from sapphire.likelihood import gaussian_log_likelihood, summary_function
from sapphire.population_summaries import summary_names
from sapphire.predictive import predictive_coverage
from sapphire.summaries import relation_coordinates

N_HALOS = 10
TIGHT = dict(solver="tsit5", rtol=1e-10, atol=1e-10)
# A few parameters away from the centre so that no derivative vanishes by symmetry.
THETA = np.array([0.6, -1.2, -1.1, -1.4, -0.9, -1.6, 0.4, -1.3])


def numpy_summaries(log_mhalo, log_state, success, obs):
    coords = relation_coordinates(np.asarray(log_mhalo), np.asarray(log_state))
    parts = []
    for rel in obs.relations:
        x, y = map(np.asarray, coords[rel.name])
        parts.append(numpy_kernel_regression(x, numpy_observed_y(rel, x, y), rel.x, rel.bandwidth, np.asarray(success)))
    return np.concatenate([p["mean"] for p in parts]), np.concatenate([p["stderr"] for p in parts])


def numpy_log_likelihood(mean, stderr, obs, sigma_scale=1.0, relations=None):
    mean, stderr = np.asarray(mean), np.asarray(stderr)
    total = 0.0
    for name, sl in obs.slices.items():
        if relations is not None and name not in relations:
            continue
        var = stderr[sl] ** 2 + (sigma_scale * obs.sigma[sl]) ** 2
        total += np.sum(-0.5 * ((mean[sl] - obs.y[sl]) ** 2 / var + np.log(2 * np.pi * var)))
    return total


@pytest.fixture(scope="module")
def obs():
    return sapphire.Observations.default()


@pytest.fixture(scope="module")
def halos():
    return sapphire.HaloPopulation.from_diffmah(N_HALOS, seed=1)


@pytest.fixture(scope="module")
def model():
    return sapphire.Model(**TIGHT)


@pytest.fixture(scope="module")
def summaries(model, halos, obs):
    return model.summaries(THETA, halos, obs)


@pytest.fixture(scope="module")
def jacobians(model, halos, obs):
    return model.summary_jacobian(THETA, halos, obs, with_stderr=True)


@pytest.fixture(scope="module")
def finite_differences(model, halos, obs):
    """Central differences of Model.summaries (mean and stderr), (n_summary, 8) each."""
    step = 1e-3
    columns_mean, columns_err = [], []
    for k in range(8):
        e = np.zeros(8)
        e[k] = step
        up, down = model.summaries(THETA + e, halos, obs), model.summaries(THETA - e, halos, obs)
        columns_mean.append((np.asarray(up.mean) - np.asarray(down.mean)) / (2 * step))
        columns_err.append((np.asarray(up.stderr) - np.asarray(down.stderr)) / (2 * step))
    return np.stack(columns_mean, axis=1), np.stack(columns_err, axis=1)


# ---------------------------------------------------------------------------------- summaries
def test_summaries_shape_order_names(summaries, obs, halos):
    assert isinstance(summaries, sapphire.Summaries)
    assert summaries.mean.shape == summaries.stderr.shape == (obs.n_summary,)
    assert summaries.n_failed == 0 and summaries.success.shape == (N_HALOS,)
    assert summaries.names == summary_names(obs)
    assert len(summaries.names) == obs.n_summary
    for name, sl in obs.slices.items():
        assert all(n.startswith(name + "@") for n in summaries.names[sl])
        np.testing.assert_allclose([float(n.split("@")[1]) for n in summaries.names[sl]], obs[name].x, rtol=1e-5)
    assert np.all(np.isfinite(summaries.mean)) and np.all(np.asarray(summaries.stderr) > 0)


def test_summaries_match_numpy_kernel_regression_of_evolve(model, halos, obs, summaries):
    out = model.evolve(THETA, halos)
    mean, err = numpy_summaries(out.log_mhalo, out.log_state, out.success, obs)
    np.testing.assert_allclose(summaries.mean, mean, rtol=0, atol=1e-10)
    np.testing.assert_allclose(summaries.stderr, err, rtol=1e-8, atol=1e-12)
    # and the SMHM entries sit at the observed halo masses, in order: the model's SMHM rises
    # (on average: with 10 halos and a fixed bandwidth the local-linear fit may follow single halos)
    smhm = np.asarray(summaries.mean)[obs.slices["smhm"]]
    assert np.polyfit(obs["smhm"].x, smhm, 1)[0] > 0.2 and smhm[-1] - smhm[0] > 0.5


def test_summary_jacobian_matches_finite_differences(jacobians, finite_differences, obs):
    jac_mean, jac_err = map(np.asarray, jacobians)
    fd_mean, fd_err = finite_differences
    assert jac_mean.shape == jac_err.shape == (obs.n_summary, 8)
    for exact, fd in ((jac_mean, fd_mean), (jac_err, fd_err)):
        big = np.abs(fd) > 1e-3
        assert big.sum() > 40
        rel = np.abs(exact[big] - fd[big]) / np.abs(fd[big])
        assert np.median(rel) < 1e-3, np.median(rel)
        assert np.percentile(rel, 90) < 2e-2
        # small entries agree in absolute terms
        assert np.max(np.abs(exact - fd)[~big]) < 1e-4


def test_summary_jacobian_default_is_mean_jacobian(model, halos, obs, jacobians):
    np.testing.assert_array_equal(model.summary_jacobian(THETA, halos, obs), jacobians[0])


# -------------------------------------------------------------------------------- likelihood
def test_log_likelihood_matches_numpy(model, halos, obs, summaries):
    for kwargs in (
        {},
        {"sigma_scale": 0.5},
        {"relations": ["smhm", "mzr"]},
        {"relations": "gas_ratio", "sigma_scale": 2.0},
    ):
        got = float(sapphire.log_likelihood(THETA, model, halos, obs, **kwargs))
        relations = kwargs.get("relations")
        relations = [relations] if isinstance(relations, str) else relations
        want = numpy_log_likelihood(summaries.mean, summaries.stderr, obs, kwargs.get("sigma_scale", 1.0), relations)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-10), kwargs


def test_relations_add_up_and_sigma_scale_acts(model, halos, obs, summaries):
    ll = lambda **kw: float(sapphire.log_likelihood(THETA, model, halos, obs, **kw))
    total = ll()
    parts = [ll(relations=name) for name in obs.names]
    assert total == pytest.approx(sum(parts), rel=1e-12)
    assert len(set(np.round(parts, 6))) == 3  # each relation contributes its own value
    # smaller observational errors: the misfit term grows, the normalisation term shrinks
    mean, err = np.asarray(summaries.mean), np.asarray(summaries.stderr)
    for scale in (0.3, 3.0):
        var = err**2 + (scale * obs.sigma) ** 2
        chi2 = np.sum((mean - obs.y) ** 2 / var)
        assert ll(sigma_scale=scale) == pytest.approx(-0.5 * (chi2 + np.sum(np.log(2 * np.pi * var))), rel=1e-12)
    assert ll(sigma_scale=0.3) != pytest.approx(total)
    # a huge sigma_scale makes the data uninformative: the value tends to -sum log(sigma)
    big = 1e6
    assert ll(sigma_scale=big) == pytest.approx(-np.sum(np.log(np.sqrt(2 * np.pi) * big * obs.sigma)), rel=1e-9)


def test_gradient_matches_finite_differences_and_jax_grad(model, halos, obs):
    result = sapphire.log_likelihood_and_grad(THETA, model, halos, obs, sigma_scale=0.7, relations=["smhm", "mzr"])
    assert isinstance(result, sapphire.LikelihoodResult) and result.n_failed == 0
    value = float(sapphire.log_likelihood(THETA, model, halos, obs, sigma_scale=0.7, relations=["smhm", "mzr"]))
    assert float(result.value) == pytest.approx(value, rel=1e-6)  # sensitivity vs plain solve
    step = 1e-3
    fd = []
    for k in range(8):
        e = np.zeros(8)
        e[k] = step
        f = lambda t: float(sapphire.log_likelihood(t, model, halos, obs, sigma_scale=0.7, relations=["smhm", "mzr"]))
        fd.append((f(THETA + e) - f(THETA - e)) / (2 * step))
    fd = np.array(fd)
    grad = np.asarray(result.grad)
    assert np.all(np.abs(grad) > 1e-2)
    np.testing.assert_allclose(grad, fd, rtol=2e-3, atol=1e-3 * np.max(np.abs(fd)))
    # the custom_jvp makes plain jax.grad of log_likelihood work too (reverse mode)
    auto = jax.grad(
        lambda t: sapphire.log_likelihood(t, model, halos, obs, sigma_scale=0.7, relations=["smhm", "mzr"])
    )(jnp.asarray(THETA))
    np.testing.assert_allclose(auto, grad, rtol=1e-10, atol=1e-10)


def test_free_parameter_tangents_match_the_full_jacobian_and_finite_differences(model, halos, obs, jacobians):
    """``free`` carries k < 8 tangents (issue 20): the summaries' Jacobian is the full one's free
    columns, held parameters get zero derivative, Model.jacobian(free=...) is the full state
    Jacobian's columns, and a free-only log-likelihood gradient matches central differences."""
    free = (0, 6)  # the quickstart's exact-HMC problem: A_etaM and A_tdep
    held = [i for i in range(8) if i not in free]
    fn = summary_function(model, halos, obs, free=free)
    jac = np.asarray(jax.jacfwd(lambda t: fn(t)[0])(jnp.asarray(THETA)))
    full = np.asarray(jacobians[0])
    np.testing.assert_allclose(jac[:, free], full[:, free], rtol=1e-6, atol=1e-8 * np.max(np.abs(full)))
    assert np.all(jac[:, held] == 0.0)
    state_jac = np.asarray(model.jacobian(THETA, halos, free=free))
    assert state_jac.shape == (N_HALOS, 7, 2)
    full_state = np.asarray(model.jacobian(THETA, halos))
    np.testing.assert_allclose(state_jac, full_state[..., free], rtol=1e-6, atol=1e-8 * np.max(np.abs(full_state)))

    def log_l(t):
        mean, stderr, _ = fn(t)
        return gaussian_log_likelihood(mean, stderr**2, jnp.asarray(obs.y), jnp.asarray(obs.sigma))

    grad = np.asarray(jax.grad(log_l)(jnp.asarray(THETA)))
    assert np.all(grad[held] == 0.0) and np.all(np.abs(grad[list(free)]) > 1e-2)
    step = 1e-3
    fd = []
    for k in free:
        e = np.zeros(8)
        e[k] = step
        fd.append((float(log_l(jnp.asarray(THETA + e))) - float(log_l(jnp.asarray(THETA - e)))) / (2 * step))
    np.testing.assert_allclose(grad[list(free)], fd, rtol=2e-3, atol=1e-3 * np.max(np.abs(fd)))
    with pytest.raises(ValueError, match="free"):
        summary_function(model, halos, obs, free=(8,))


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"theta": np.zeros(7)}, "shape"),
        ({"theta": np.r_[5.0, THETA[1:]]}, "A_etaM"),
        ({"theta": np.r_[THETA[:3], np.nan, THETA[4:]]}, "B_etaE"),
        ({"model": "model"}, "model must be a sapphire.Model"),
        ({"halos": np.zeros((3, 4))}, "halos"),
        ({"obs": {"smhm": 1}}, "obs must be a sapphire.Observations"),
        ({"sigma_scale": 0.0}, "sigma_scale"),
        ({"sigma_scale": -1.0}, "sigma_scale"),
        ({"sigma_scale": float("nan")}, "sigma_scale"),
        ({"sigma_scale": "big"}, "sigma_scale"),
        ({"relations": ["smhm", "hi_mass"]}, "hi_mass"),
        ({"relations": []}, "relations"),
        ({"relations": ["mzr", "mzr"]}, "duplicate"),
        ({"on_failure": "ignore"}, "on_failure"),
    ],
)
def test_bad_input_raises(model, halos, obs, kwargs, match):
    args = dict(theta=THETA, model=model, halos=halos, obs=obs)
    args.update(kwargs)
    positional = [args.pop(k) for k in ("theta", "model", "halos", "obs")]
    for fn in (sapphire.log_likelihood, sapphire.log_likelihood_and_grad):
        with pytest.raises(ValueError, match=match):
            fn(*positional, **args)


def test_relation_not_in_obs_and_bad_obs_for_summaries(model, halos, obs):
    smhm_only = obs.select("smhm")
    with pytest.raises(ValueError, match="gas_ratio"):
        sapphire.log_likelihood(THETA, model, halos, smhm_only, relations="gas_ratio")
    with pytest.raises(ValueError, match="obs must be"):
        model.summaries(THETA, halos, "default")
    with pytest.raises(ValueError, match="obs must be"):
        model.summary_jacobian(THETA, halos, [1, 2])
    with pytest.raises(ValueError, match="prior box"):
        model.summaries(np.r_[THETA[:7], 1.0], halos, obs)


def test_gaussian_log_likelihood_non_finite_is_minus_inf_with_zero_gradient():
    mean = jnp.array([0.0, jnp.nan, 1.0])
    variance = jnp.array([0.1, 0.1, 0.1]) ** 2
    y, sigma = jnp.zeros(3), jnp.ones(3)
    selected = jnp.array([True, True, False])
    assert float(gaussian_log_likelihood(mean, variance, y, sigma, selected)) == -np.inf
    grads = jax.grad(gaussian_log_likelihood, argnums=(0, 1))(mean, variance, y, sigma, selected)
    assert all(np.all(np.isfinite(g)) for g in grads)
    # the NaN entry not selected: finite, and equal to the first entry's term alone
    value = float(gaussian_log_likelihood(mean, variance, y, sigma, jnp.array([True, False, False])))
    assert value == pytest.approx(-0.5 * np.log(2 * np.pi * 1.01))
    # no mask: every entry enters, so the NaN one makes it -inf
    assert float(gaussian_log_likelihood(mean, variance, y, sigma)) == -np.inf
    keep = jnp.array([0, 2])
    finite = gaussian_log_likelihood(mean[keep], variance[keep], y[keep], sigma[keep])
    assert float(finite) == pytest.approx(-0.5 * (np.log(2 * np.pi * 1.01) + 1.0 / 1.01 + np.log(2 * np.pi * 1.01)))


# ------------------------------------------------------------------------------ failed halos
@pytest.fixture(scope="module")
def failing():
    """6 halos, 3 of which start only 0.5 Gyr before z = 0 (~20-40 steps), under a 60-step cap
    that the other 3 (>= 100 steps) cannot meet; and the same 6 diffmah halos unaltered (all fail)."""
    base = sapphire.HaloPopulation.from_diffmah(6, seed=2)
    late = cosmology.present_age() - 0.5
    mixed = sapphire.HaloPopulation.from_arrays(
        base.times, base.log_mhalo, base.mhalo_rate, exists_from=[late, -np.inf, late, -np.inf, late, -np.inf]
    )
    return sapphire.Model(solver="tsit5", max_steps=60), mixed, base


def test_failed_halos_are_excluded_and_counted(failing, obs):
    model, mixed, _ = failing
    theta = sapphire.DEFAULT_PRIOR.centre
    out = model.evolve(theta, mixed)
    success = np.asarray(out.success)
    assert success.tolist() == [True, False, True, False, True, False], np.asarray(out.num_steps)
    s = model.summaries(theta, mixed, obs)
    assert s.n_failed == 3 and np.asarray(s.success).tolist() == success.tolist()
    assert np.all(np.isfinite(s.mean)) and np.all(np.isfinite(s.stderr))
    mean, err = numpy_summaries(out.log_mhalo, out.log_state, success, obs)  # valid halos only
    np.testing.assert_allclose(s.mean, mean, atol=1e-10)
    np.testing.assert_allclose(s.stderr, err, rtol=1e-8, atol=1e-12)
    jac = np.asarray(model.summary_jacobian(theta, mixed, obs))
    assert np.all(np.isfinite(jac)) and np.any(jac != 0)


def test_failure_policy_of_the_likelihood(failing, obs):
    model, mixed, all_fail = failing
    theta = sapphire.DEFAULT_PRIOR.centre
    s = model.summaries(theta, mixed, obs)
    # "exclude" (default): the likelihood of the valid halos' summaries, finite gradient
    value = float(sapphire.log_likelihood(theta, model, mixed, obs))
    assert value == pytest.approx(numpy_log_likelihood(s.mean, s.stderr, obs), rel=1e-12)
    result = sapphire.log_likelihood_and_grad(theta, model, mixed, obs)
    assert result.n_failed == 3 and np.isfinite(float(result.value))
    assert np.all(np.isfinite(result.grad)) and np.any(np.asarray(result.grad) != 0)
    # "reject": -inf with zero gradient as soon as a halo failed
    assert float(sapphire.log_likelihood(theta, model, mixed, obs, on_failure="reject")) == -np.inf
    rejected = sapphire.log_likelihood_and_grad(theta, model, mixed, obs, on_failure="reject")
    assert float(rejected.value) == -np.inf and rejected.n_failed == 3
    np.testing.assert_array_equal(rejected.grad, np.zeros(8))
    # every halo failed: NaN summaries, -inf, zero (not NaN) gradient, under either policy
    s_all = model.summaries(theta, all_fail, obs)
    assert s_all.n_failed == 6 and np.all(np.isnan(s_all.mean))
    for policy in ("exclude", "reject"):
        r = sapphire.log_likelihood_and_grad(theta, model, all_fail, obs, on_failure=policy)
        assert float(r.value) == -np.inf and r.n_failed == 6
        np.testing.assert_array_equal(r.grad, np.zeros(8))


# ------------------------------------------------------------------------ predictive coverage
def test_predictive_coverage(obs):
    rng = np.random.default_rng(0)
    draws = obs.y[None, :] + rng.normal(0.0, 0.3, (200, obs.n_summary))
    draws[:, 0] += 5.0  # first point far below every draw
    draws[:5, 1] = np.nan  # NaN draws are ignored
    cov = predictive_coverage(obs, draws)
    points = cov["points"]
    assert len(points) == obs.n_summary and cov["n_draws"] == 200
    assert not points[0]["inside_envelope"] and not points[0]["inside_band"]
    assert points[1]["n_finite"] == 195 and points[1]["inside_envelope"]
    lo, hi = points[2]["envelope"]
    assert lo == pytest.approx(np.min(draws[:, 2])) and hi == pytest.approx(np.max(draws[:, 2]))
    band = points[2]["band"]
    assert band == pytest.approx(list(np.percentile(draws[:, 2], [2.5, 97.5])))
    inside = np.array([p["inside_envelope"] for p in points])
    assert cov["fractions"]["all"]["inside_envelope"] == pytest.approx(inside.mean())
    n_smhm = obs["smhm"].size
    assert cov["fractions"]["smhm"]["inside_envelope"] == pytest.approx(inside[:n_smhm].mean())
    assert cov["fractions"]["smhm"]["inside_envelope"] < 1.0 <= cov["fractions"]["mzr"]["inside_envelope"]


def test_detection_limit_reaches_every_summary_path(obs):
    """Where a halo's ISM is nearly empty (log gas ratio far below the xGASS limit), the
    summaries of Model.summaries, the traceable summary_function and the NumPy reference all
    see that halo at the limit."""
    model = sapphire.Model(solver="tsit5")  # the summaries are the subject: one solver compiles faster
    halos = sapphire.HaloPopulation.from_diffmah(16, seed=0)
    theta = np.array([0.14, -2.63, -0.59, -1.41, -1.27, -0.81, 0.19, -1.61])  # gas-poor dwarfs
    out = model.evolve(theta, halos)
    gas = np.asarray(out.log_state[:, 2] - out.log_state[:, 0])
    limit = np.asarray(obs["gas_ratio"].detection_limit.limit(out.log_state[:, 0]))
    assert np.any(gas < limit - 2.0), "no halo below the limit: the test would prove nothing"
    expected, _ = numpy_summaries(out.log_mhalo, out.log_state, out.success, obs)
    direct = model.summaries(theta, halos, obs).mean
    traced = jax.jit(sapphire.likelihood.summary_function(model, halos, obs))(jnp.asarray(theta))[0]
    np.testing.assert_allclose(direct, expected, atol=1e-10)
    np.testing.assert_allclose(traced, expected, atol=1e-10)
