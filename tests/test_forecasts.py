"""Forecasts (issue 6): forward models, MAP, Fisher/Laplace, HMC (checkpointed), cross-validation
and the campaigns, on tiny configurations.

The machinery is proven on a linear-Gaussian toy whose posterior is known analytically (MAP =
mode, Laplace = Gauss-Newton = (A^T C^-1 A)^-1, NUTS moments within their Monte Carlo errors),
on a fake emulator (a smooth non-linear map with the emulator protocol) and, for the wiring of
the exact model, on 4 halos with 2 free parameters.  Compilation dominates the cost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from _fakes import FakeEmulator
from numpyro.diagnostics import effective_sample_size

import forecasts
import sapphire
from forecasts import (
    CheckpointMismatch,
    EmulatorForward,
    ExactForward,
    LinearGaussianForward,
    cross_validate,
    find_map,
    finite_difference_hessian,
    gauss_newton_fisher,
    laplace,
    run_hmc,
)

PRIOR = sapphire.DEFAULT_PRIOR
TIGHT = dict(solver="tsit5", rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------- helpers
class SaddleEmulator(FakeEmulator):
    """mean_0 = u_0 u_1 (u = theta - centre), other means 0: at u = 0 the gradient vanishes and
    the Hessian of -ln L in (u_0, u_1) is [[0, -y_0], [-y_0, 0]] / sigma_0^2: a saddle."""

    def predict(self, theta):
        u = jnp.asarray(theta) - self._centre
        mean = jnp.zeros_like(self._y0).at[0].set(u[0] * u[1])
        return mean, jnp.zeros_like(mean)


def toy_problem(n_params=3, n_summary=12, seed=0, half_width=30.0):
    """A linear-Gaussian toy whose box is the analytic mode +- ``half_width`` marginal sigmas."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n_summary, n_params))
    b = rng.normal(size=n_summary)
    sigma = rng.uniform(0.05, 0.15, n_summary)
    y = A @ rng.normal(0, 0.3, n_params) + b + rng.normal(0, sigma)
    wide = LinearGaussianForward(A, b, y, sigma)
    mode, cov = wide.analytic_posterior()
    half = half_width * np.sqrt(np.diag(cov))
    names = tuple(f"t{i}" for i in range(n_params))
    prior = sapphire.Prior(names, tuple(mode - half), tuple(mode + 0.8 * half))  # asymmetric box
    return LinearGaussianForward(A, b, y, sigma, prior)


def numpy_log_likelihood(mean, variance, y, sigma):
    var = variance + sigma**2
    return float(np.sum(-0.5 * ((mean - y) ** 2 / var + np.log(2 * np.pi * var))))


@pytest.fixture(scope="module")
def toy():
    return toy_problem()


@pytest.fixture(scope="module")
def toy_hmc(toy):
    return run_hmc(toy, num_chains=4, num_warmup=500, num_samples=1000, seed=1)


# --------------------------------------------------------------------------------- forward models
def test_toy_forward_values_gradient_and_free_subset(toy):
    theta = np.asarray(toy.prior.centre) + 0.01
    mean, variance = toy.predict(theta)
    np.testing.assert_allclose(mean, toy.A @ theta + toy.b, rtol=1e-13)
    assert np.all(np.asarray(variance) == 0)
    want = numpy_log_likelihood(toy.A @ theta + toy.b, 0.0, toy.y, toy.sigma)
    assert float(toy.log_likelihood(theta)) == pytest.approx(want, rel=1e-12)
    value, grad = toy.log_likelihood_and_grad(theta)
    assert value == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(grad, toy.A.T @ ((toy.y - toy.A @ theta - toy.b) / toy.sigma**2), rtol=1e-10)
    np.testing.assert_allclose(toy.summary_jacobian(theta), toy.A, rtol=1e-13)
    # a free subset: the held parameter takes its fixed value
    sub = LinearGaussianForward(toy.A, toy.b, toy.y, toy.sigma, toy.full_prior, free=["t2", "t0"], fixed=theta)
    assert sub.free_names == ("t0", "t2") and sub.free_index == (0, 2) and sub.prior.names == ("t0", "t2")
    np.testing.assert_allclose(sub.full_theta(theta[[0, 2]]), theta)
    assert float(sub.log_likelihood(theta[[0, 2]])) == pytest.approx(want, rel=1e-12)
    # sigma_scale multiplies the errors; the fingerprint tracks the data
    scaled = LinearGaussianForward(toy.A, toy.b, toy.y, toy.sigma, toy.full_prior, sigma_scale=0.5)
    np.testing.assert_allclose(scaled.sigma, 0.5 * toy.sigma)
    assert scaled.fingerprint() != toy.fingerprint() and sub.fingerprint() != toy.fingerprint()
    with pytest.raises(AttributeError, match="immutable"):
        toy.y = toy.y + 1


def test_bad_input_is_named(toy):
    with pytest.raises(ValueError, match=r"t1 = 1000000.0 lies outside the prior box"):
        toy.log_likelihood(np.array([toy.prior.centre[0], 1e6, toy.prior.centre[2]]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        toy.log_likelihood_and_grad(np.zeros(2))
    with pytest.raises(ValueError, match="non-finite t0"):
        laplace(toy, np.array([np.nan, 0.0, 0.0]))
    with pytest.raises(ValueError, match="unknown parameter 'nope'"):
        LinearGaussianForward(toy.A, toy.b, toy.y, toy.sigma, toy.full_prior, free=["nope"])
    with pytest.raises(ValueError, match="fixed: .*t1 = 99.0 lies outside"):
        LinearGaussianForward(toy.A, toy.b, toy.y, toy.sigma, toy.full_prior, free=["t0"], fixed={"t1": 99.0})
    with pytest.raises(ValueError, match="sigma_scale must be finite and > 0"):
        LinearGaussianForward(toy.A, toy.b, toy.y, toy.sigma, toy.full_prior, sigma_scale=-1.0)
    with pytest.raises(ValueError, match="starts"):
        find_map(toy, starts=np.full((2, 3), 1e6))


def test_emulator_forward_protocol_and_mismatch_errors():
    emu = FakeEmulator()
    obs = emu.observations
    theta = PRIOR.centre + 0.1
    fm = EmulatorForward(emu, free=["A_etaM", "A_tdep", "B_etaZ"], fixed=theta)
    assert fm.free_names == ("A_etaM", "B_etaZ", "A_tdep") and fm.relations == obs.names
    t = theta[list(fm.free_index)]
    mean, var = fm.predict(t)
    emu_mean, emu_err = emu.predict(theta)
    np.testing.assert_allclose(mean, emu_mean, rtol=1e-14)
    np.testing.assert_allclose(var, np.asarray(emu_err) ** 2, rtol=1e-14)
    np.testing.assert_allclose(
        fm.summary_jacobian(t), np.asarray(emu.jacobian(theta))[:, list(fm.free_index)], rtol=1e-13
    )
    assert float(fm.log_likelihood(t)) == pytest.approx(
        numpy_log_likelihood(emu_mean, np.asarray(emu_err) ** 2, obs.y, obs.sigma), rel=1e-12
    )
    # without emulator error, a subset of relations, scaled errors, and another y (a mock)
    mock = sapphire.Observations(tuple(sapphire.Relation(r.name, r.x, r.y + 0.05, r.sigma) for r in obs.relations))
    sub = EmulatorForward(
        emu, mock, include_emulator_error=False, relations=["mzr", "smhm"], sigma_scale=0.5, fixed=theta
    )
    sl = np.concatenate([np.arange(obs.n_summary)[obs.slices[n]] for n in ("smhm", "mzr")])
    np.testing.assert_allclose(sub.y, obs.y[sl] + 0.05)
    np.testing.assert_allclose(sub.sigma, 0.5 * obs.sigma[sl])
    want = numpy_log_likelihood(np.asarray(emu_mean)[sl], 0.0, obs.y[sl] + 0.05, 0.5 * obs.sigma[sl])
    assert float(sub.log_likelihood(theta)) == pytest.approx(want, rel=1e-12)
    # mismatches are named
    moved = sapphire.Observations(
        tuple(sapphire.Relation(r.name, r.x + (0.1 if r.name == "mzr" else 0.0), r.y, r.sigma) for r in obs.relations)
    )
    with pytest.raises(ValueError, match=r"'mzr' x\[0\] = 8.1 differs from the emulator's x\[0\] = 8"):
        EmulatorForward(emu, moved)
    shorter = sapphire.Observations(
        tuple(
            sapphire.Relation(r.name, r.x[:-1], r.y[:-1], r.sigma[:-1]) if r.name == "smhm" else r
            for r in obs.relations
        )
    )
    with pytest.raises(ValueError, match="'smhm' has 10 points, the emulator's has 11"):
        EmulatorForward(emu, shorter)
    smhm_only = FakeEmulator(obs.select("smhm"))
    with pytest.raises(ValueError, match="relation 'gas_ratio' is not emulated"):
        EmulatorForward(smhm_only, obs)
    with pytest.raises(ValueError, match="relation 'mzr' is not present"):
        EmulatorForward(smhm_only, relations=["mzr"])
    with pytest.raises(ValueError, match="lacks 'jacobian'"):
        EmulatorForward(type("NoJacobian", (), {"observations": obs, "prior": PRIOR, "predict": None})())


# ------------------------------------------------------------------------------------------ MAP
def test_map_finds_the_analytic_mode(toy):
    mode, cov = toy.analytic_posterior()
    result = find_map(toy, n_starts=6, seed=3)
    assert result.points.shape == (6, 3) and result.losses.shape == (6,)
    assert result.converged.all(), result.steps
    sigma = np.sqrt(np.diag(cov))
    assert np.max(np.abs(result.points - mode) / sigma) < 1e-4
    assert result.best_loss == pytest.approx(-float(toy.log_likelihood(mode)), abs=1e-9)
    assert json.loads(json.dumps(result.to_dict()))["converged"] == [True] * 6
    # seeded: same starts, same answer
    again = find_map(toy, n_starts=6, seed=3)
    np.testing.assert_array_equal(again.starts, result.starts)


def test_map_respects_the_bounds():
    """Mode outside the box in t0: the MAP sits on that face, the other coordinates at the
    conditional mode; every start stays inside."""
    base = toy_problem(seed=4)
    mode, cov = base.analytic_posterior()
    lo, hi = np.array(base.prior.low), np.array(base.prior.high)
    lo[0] = mode[0] + 2 * np.sqrt(cov[0, 0])
    boxed = LinearGaussianForward(
        base.A, base.b, base.y, base.sigma, sapphire.Prior(base.prior.names, tuple(lo), tuple(hi))
    )
    result = find_map(boxed, n_starts=4, seed=0)
    assert np.all(result.points >= lo) and np.all(result.points <= hi)
    assert result.converged.all()
    np.testing.assert_allclose(result.best[0], lo[0], atol=1e-12)
    held = LinearGaussianForward(
        base.A, base.b, base.y, base.sigma, base.prior, free=["t1", "t2"], fixed=np.r_[lo[0], 0.0, 0.0]
    )
    conditional_mode, conditional_cov = held.analytic_posterior()
    assert np.max(np.abs(result.best[1:] - conditional_mode) / np.sqrt(np.diag(conditional_cov))) < 1e-3


# --------------------------------------------------------------------------------------- Fisher
def test_fisher_of_the_toy_is_analytic(toy):
    mode, cov = toy.analytic_posterior()
    for fisher in (laplace(toy, mode), gauss_newton_fisher(toy, mode), laplace(toy, mode, method="fd_grad")):
        tol = 1e-8 if "fd" not in fisher.kind else 1e-6
        assert fisher.positive_definite and fisher.message == ""
        np.testing.assert_allclose(fisher.covariance, cov, rtol=tol, atol=tol * np.abs(cov).max())
        np.testing.assert_allclose(fisher.sigmas, np.sqrt(np.diag(cov)), rtol=tol)
        eig = np.linalg.eigvalsh(np.linalg.inv(cov))
        assert fisher.condition_number == pytest.approx(eig.max() / eig.min(), rel=1e-6)
    assert json.loads(json.dumps(laplace(toy, mode).to_dict()))["positive_definite"] is True


def test_autodiff_hessians_match_finite_differences(toy):
    theta = np.asarray(toy.prior.centre) * 0.9
    auto = laplace(toy, theta).matrix
    fd = finite_difference_hessian(
        lambda t: -toy.log_likelihood(t), theta, 1e-3 * np.sqrt(np.diag(toy.analytic_posterior()[1]))
    )
    np.testing.assert_allclose(auto, fd, rtol=1e-6, atol=1e-6 * np.abs(auto).max())
    # a non-linear mean with a theta-dependent model variance (fake emulator, 4 free parameters)
    emu = FakeEmulator(curvature=0.5)
    fm = EmulatorForward(emu, free=["A_etaM", "B_etaM", "A_etaE", "A_tdep"])
    point = fm.prior.centre + 0.13 * fm.prior.width
    auto = laplace(fm, point).matrix
    fd = finite_difference_hessian(lambda t: -fm.log_likelihood(t), point, 1e-4 * fm.prior.width)
    np.testing.assert_allclose(auto, fd, rtol=1e-5, atol=1e-6 * np.abs(auto).max())
    via_grad = laplace(fm, point, method="fd_grad").matrix
    np.testing.assert_allclose(via_grad, auto, rtol=1e-6, atol=1e-7 * np.abs(auto).max())
    # Gauss-Newton neglects the variance's theta-dependence and the curvature: close, not equal
    gn = gauss_newton_fisher(fm, point).matrix
    assert np.abs(gn - auto).max() > 1e-6 * np.abs(auto).max()


def test_saddle_point_is_reported_not_inverted():
    emu = SaddleEmulator()
    fm = EmulatorForward(emu, free=["A_etaM", "B_etaM"])
    fisher = laplace(fm, fm.prior.centre)
    assert not fisher.positive_definite
    assert fisher.covariance is None and fisher.sigmas is None and fisher.correlation is None
    assert "saddle" in fisher.message and "A_etaM" in fisher.message
    scale = abs(fm.y[0]) / fm.sigma[0] ** 2
    np.testing.assert_allclose(fisher.eigenvalues, [-scale, scale], rtol=1e-10)
    assert fisher.condition_number == pytest.approx(1.0)
    flat = forecasts.fisher_result(np.diag([1.0, 0.0]), ("a", "b"), np.zeros(2))
    assert not flat.positive_definite and "singular" in flat.message


# ------------------------------------------------------------------------------------------ HMC
def test_hmc_recovers_the_toy_posterior_within_monte_carlo_error(toy, toy_hmc):
    mode, cov = toy.analytic_posterior()
    post = toy_hmc
    assert post.samples.shape == (4, 1000, 3) and post.complete
    assert np.all(post.r_hat < 1.01), post.r_hat
    assert post.n_divergent == 0
    # means: |mean - mode| < 4 sigma / sqrt(ESS)
    z = (post.mean - mode) / (np.sqrt(np.diag(cov)) / np.sqrt(post.ess))
    assert np.all(np.abs(z) < 4), z
    # covariances: each entry's estimator is the mean of (x_i - mu_i)(x_j - mu_j); its Monte Carlo
    # error is its own standard deviation over sqrt(its ESS)
    centred = post.samples - mode
    for i in range(3):
        for j in range(i + 1):
            products = centred[..., i] * centred[..., j]
            ess = float(effective_sample_size(products[..., None])[0])
            error = products.std() / np.sqrt(ess)
            assert abs(products.mean() - cov[i, j]) < 4 * error, (i, j, products.mean(), cov[i, j], error)
    summary = json.loads(json.dumps(post.summary()))
    assert summary["chains"] == 4 and summary["draws"] == 1000 and summary["settings"]["dense_mass"] is True
    print(f"\ntoy NUTS 4 x (500 + 1000): {post.times}")


def test_hmc_checkpoint_resumes_bitwise(tmp_path):
    toy = toy_problem(n_params=2, n_summary=6, seed=7)
    settings = dict(num_chains=2, num_warmup=30, num_samples=40, seed=5, block_size=10)
    uninterrupted = run_hmc(toy, **settings)
    path = tmp_path / "run.npz"
    partial = run_hmc(toy, checkpoint=path, max_blocks=4, **settings)  # 3 warmup blocks + 1 of draws
    assert not partial.complete and partial.samples.shape == (2, 10, 2) and path.exists()
    resumed = run_hmc(toy, checkpoint=path, **settings)
    assert resumed.complete
    # same forward-model object and settings: both calls reused the first call's compiled block
    assert uninterrupted.times["compile"] > 0 and partial.times["compile"] == 0 and resumed.times["compile"] == 0
    np.testing.assert_array_equal(resumed.samples, uninterrupted.samples)
    np.testing.assert_array_equal(resumed.diverging, uninterrupted.diverging)
    np.testing.assert_array_equal(resumed.step_size, uninterrupted.step_size)
    # a finished checkpoint reloads without sampling; num_samples may be raised to extend it
    again = run_hmc(toy, checkpoint=path, **settings)
    np.testing.assert_array_equal(again.samples, uninterrupted.samples)
    # a checkpoint of another problem or other settings is refused, clearly
    other = LinearGaussianForward(toy.A, toy.b, toy.y + 0.01, toy.sigma, toy.full_prior)
    with pytest.raises(CheckpointMismatch, match="another forward model"):
        run_hmc(other, checkpoint=path, **settings)
    with pytest.raises(CheckpointMismatch, match="seed: checkpoint 5 vs now 6"):
        run_hmc(toy, checkpoint=path, **dict(settings, seed=6))
    # what identifies a checkpoint is the same in another process (hash seeds differ)
    script = (
        "import sys; sys.path.insert(0, 'tests'); import numpyro.distributions as dist, jax.numpy as jnp; "
        "from test_forecasts import toy_problem; from forecasts.hmc import _prior_tag; "
        "fm = toy_problem(n_params=2, n_summary=6, seed=7); "
        "print(fm.fingerprint(), _prior_tag(dist.Uniform(jnp.asarray(fm.prior.low), jnp.asarray(fm.prior.high)).to_event(1)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
        env=dict(os.environ, PYTHONHASHSEED="12345"),
    ).stdout.split()
    assert out == [toy.fingerprint(), resumed.settings["prior"]]
    # the result file round-trips
    loaded = forecasts.HmcResult.load(resumed.save(tmp_path / "post.npz"))
    np.testing.assert_array_equal(loaded.samples, resumed.samples)
    np.testing.assert_allclose(loaded.r_hat, resumed.r_hat)


# ------------------------------------------------------------------------------ cross-validation
def test_cross_validate_pass_fail_and_outputs(tmp_path, toy, toy_hmc):
    mode, cov = toy.analytic_posterior()
    rng = np.random.default_rng(11)
    same = rng.multivariate_normal(mode, cov, 4000)
    report = cross_validate(toy_hmc, same, labels=("hmc", "exact draws"))
    assert report.verdict == "PASS", report.to_markdown()
    assert np.all(np.abs(report.shift) < 0.1) and np.all(np.abs(report.width_ratio - 1) < 0.1) and report.auc < 0.56
    sigma = np.sqrt(np.diag(cov))
    shifted = same + np.array([0.3, 0.0, 0.0]) * sigma
    bad = cross_validate(toy_hmc, shifted)
    assert bad.verdict == "FAIL" and not bad.checks["shift"] and bad.shift[0] == pytest.approx(0.3, abs=0.07)
    wide = cross_validate(same, mode + 1.4 * (same - mode))
    assert wide.verdict == "FAIL" and not wide.checks["width_ratio"] and not wide.checks["auc"]
    # outputs: JSON, Markdown, corner and Fisher-ellipse figures
    f_ref = laplace(toy, mode)
    f_cand = forecasts.fisher_result(f_ref.matrix / 1.1, toy.free_names, mode + 0.1 * sigma)
    report = cross_validate(toy_hmc, same, fisher_reference=f_ref, fisher_candidate=f_cand)
    data = json.loads(report.to_json(tmp_path / "cv.json"))
    assert data["verdict"] == "PASS" and data["thresholds"]["max_auc"] == 0.6
    np.testing.assert_allclose(data["fisher"]["sigma_ratio"], np.sqrt(1.1), rtol=1e-10)
    np.testing.assert_allclose(data["fisher"]["map_shift"], 0.1, rtol=1e-8)
    assert "PASS" in report.to_markdown() and "| t0 |" in report.to_markdown()
    paths = report.plot(tmp_path, truths=mode)
    assert [p.name for p in paths] == ["crossval_corner.png", "crossval_fisher.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
    with pytest.raises(ValueError, match="reference has 3 parameters, candidate 2"):
        cross_validate(same, same[:, :2])


# -------------------------------------------------------------------------------- exact model
@pytest.fixture(scope="module")
def exact_setup():
    model = sapphire.Model(**TIGHT)
    halos = sapphire.HaloPopulation.from_diffmah(4, seed=0)
    truth = PRIOR.centre.copy()
    truth[[0, 6]] = [0.8, 0.3]
    mock = forecasts.mock_observations(model, halos, None, truth)
    fm = ExactForward(
        model, halos, mock, free=["A_tdep", "A_etaM"], fixed=truth, relations=["smhm", "mzr"], sigma_scale=0.5
    )
    return model, halos, truth, mock, fm


def test_exact_forward_matches_sapphire_and_finite_differences(exact_setup):
    model, halos, truth, mock, fm = exact_setup
    assert fm.free_names == ("A_etaM", "A_tdep") and fm.relations == ("smhm", "mzr") and fm.n_summary == 22
    theta = np.array([0.7, 0.35])
    full = np.asarray(fm.full_theta(theta))
    np.testing.assert_array_equal(full[[0, 6]], theta)
    want = float(sapphire.log_likelihood(full, model, halos, mock, sigma_scale=0.5, relations=["smhm", "mzr"]))
    assert np.isfinite(want)
    assert float(fm.log_likelihood(theta)) == pytest.approx(want, rel=1e-12)
    value, grad = fm.log_likelihood_and_grad(theta)
    assert value == pytest.approx(want, rel=1e-8)
    step = 1e-4
    fd = [
        (float(fm.log_likelihood(theta + e)) - float(fm.log_likelihood(theta - e))) / (2 * step)
        for e in np.eye(2) * step
    ]
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max())
    assert fm.diagnostics(theta) == {"log_likelihood": pytest.approx(want, rel=1e-12), "n_failed": 0, "finite": True}
    # Laplace (central differences of exact gradients: the compiled gradient, no new
    # compilation; the default autodiff Hessian compiles for ~40 s) and Gauss-Newton at the truth
    lap = laplace(fm, truth[[0, 6]], method="fd_grad", relative_step=1e-3)
    gn = gauss_newton_fisher(fm, truth[[0, 6]])
    assert lap.kind == "laplace (fd_grad)" and gn.positive_definite
    # Summary definition 2: 4 halos leave centres with < 3 halos, whose support-inflated stderr
    # depends on theta, so the truth of a noise-free mock is not the likelihood's maximum and the
    # Laplace Hessian there adds the curvature of -1/2 sum log(variance) to Gauss-Newton (it is
    # indefinite here).  Checked against second differences of the log-likelihood's values.
    x0, h = truth[[0, 6]], 3e-3
    f = lambda d: -float(fm.log_likelihood(x0 + d))
    e = np.eye(2) * h
    fd = np.array(
        [
            [(f(e[i] + e[j]) - f(e[i] - e[j]) - f(e[j] - e[i]) + f(-e[i] - e[j])) / (4 * h * h) for j in range(2)]
            for i in range(2)
        ]
    )
    np.testing.assert_allclose(lap.matrix, fd, rtol=0.02, atol=0.02 * np.abs(fd).max())
    with pytest.raises(ValueError, match="A_tdep = 9.0 lies outside the prior box"):
        fm.log_likelihood(np.array([0.5, 9.0]))


def test_exact_forward_failed_halos_give_minus_inf_not_nan():
    model = sapphire.Model(solver="tsit5", max_steps=60)  # every diffmah halo needs > 60 steps
    halos = sapphire.HaloPopulation.from_diffmah(4, seed=2)
    fm = ExactForward(model, halos, free=["A_etaM"])
    value, grad = fm.log_likelihood_and_grad(np.array([0.5]))
    assert value == -np.inf and np.array_equal(grad, [0.0])
    assert fm.diagnostics(np.array([0.5]))["n_failed"] == 4


# ---------------------------------------------------------------------------------- campaigns
def test_mock_recovery_runs_every_path(tmp_path):
    model = sapphire.Model(**TIGHT)
    halos = sapphire.HaloPopulation.from_diffmah(4, seed=0)
    emu = FakeEmulator(curvature=0.0, error=0.01)
    free = ["A_etaM", "A_tdep"]
    factory = forecasts.emulator_factory(emu, free=free)
    report = forecasts.mock_recovery(
        model,
        halos,
        n_truths=2,
        seed=0,
        forward_factory=factory,
        relation_sets=[("smhm",), ("gas_ratio", "mzr")],
        free=free,
        n_starts=2,
        noise=True,
        failure_sigma=1e9,
    )
    assert report.truths.shape == (2, 2) and len(report.relation_sets) == 2
    lo, hi = np.array(PRIOR.low)[[0, 6]], np.array(PRIOR.high)[[0, 6]]
    assert np.all(report.truths > lo + 0.1 * (hi - lo) - 1e-12) and np.all(report.truths < hi - 0.1 * (hi - lo) + 1e-12)
    for entry in report.relation_sets:
        assert entry["positive_definite"].all()  # a linear emulator has a convex loss
        ok = entry["converged"]
        np.testing.assert_allclose(entry["normalised_bias"][ok], ((entry["map"] - report.truths) / entry["sigma"])[ok])
        assert entry["failure_rate"] == pytest.approx(np.mean(~ok))
        # the best start converged exactly when some start did; modes counted over converged starts
        assert np.array_equal(entry["map_converged_fraction"] > 0, ok) and np.all(entry["map_modes"][ok] >= 1)
    data = json.loads(report.to_json(tmp_path / "recovery.json"))
    assert data["relation_sets"][1]["relations"] == ["gas_ratio", "mzr"]
    assert report.plot(tmp_path / "recovery.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="frees"):
        forecasts.mock_recovery(model, halos, n_truths=1, forward_factory=factory, free=["A_etaM"])
    assert len(forecasts.ALL_RELATION_SETS) == 7


def test_error_scaling_forecast_on_the_toy(tmp_path, toy):
    mode, cov = toy.analytic_posterior()

    def factory(obs=None, relations=None, sigma_scale=1.0):
        return LinearGaussianForward(toy.A, toy.b, toy.y, toy.sigma, toy.full_prior, sigma_scale=sigma_scale)

    report = forecasts.error_scaling_forecast(factory, mode, scales=(1.0, 0.5, 0.1))
    sigma = np.sqrt(np.diag(cov))
    for row in report.rows:
        s = row["sigma_scale"]
        np.testing.assert_allclose(row["fisher_sigma"], s * sigma, rtol=1e-8)
        np.testing.assert_allclose(row["gauss_newton_sigma"], s * sigma, rtol=1e-8)
        np.testing.assert_allclose(row["precision_gain"], 1.0 / s, rtol=1e-8)
        assert "hmc_std" not in row
    assert json.loads(report.to_json())["scales"][2]["sigma_scale"] == 0.1
    # with HMC (one scale, short chains: the path, and widths within 35%), at the MAP (theta None)
    report = forecasts.error_scaling_forecast(
        factory,
        None,
        scales=(0.5,),
        with_hmc=True,
        hmc_options=dict(num_chains=2, num_warmup=100, num_samples=100, seed=0),
    )
    row = report.rows[0]
    np.testing.assert_allclose(row["theta"], mode, atol=1e-4 * sigma.min())
    assert np.all(np.abs(np.array(row["hmc_std"]) / (0.5 * sigma) - 1) < 0.35) and row["hmc_r_hat_max"] < 1.1
    assert row["hmc_divergent"] == 0 and row["hmc_warmup_divergent"] >= 0  # chains start at the MAP
    assert report.plot(tmp_path / "scaling.png").stat().st_size > 10_000
