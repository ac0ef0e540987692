"""MAP convergence (forecasts.optimize): adam finished by L-BFGS-B on the box, convergence measured
as the Newton step in posterior sigmas, converged optima grouped into modes.  Known answers: the
analytic MAP of a linear-Gaussian toy, and a toy with two mirror-image modes."""

import jax.numpy as jnp
import numpy as np
import pytest

import sapphire
from forecasts import LinearGaussianForward, find_map


def linear_toy(seed=0, n_params=3, n_summary=12):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n_summary, n_params))
    # a strongly correlated design: a curved valley in the box, where adam alone stalls
    A[:, 1] = A[:, 0] + 0.05 * A[:, 1]
    theta = rng.normal(size=n_params)
    sigma = np.full(n_summary, 0.05)
    return LinearGaussianForward(A, np.zeros(n_summary), A @ theta + sigma * rng.normal(size=n_summary), sigma)


class TwoModes(LinearGaussianForward):
    """mean = ((A theta)_0^2, (A theta)_1, ...): with y_0 = 1 the likelihood has two mirror modes,
    (A theta)_0 = +1 and -1."""

    @staticmethod
    def _predict_full(extra, data, theta_full):
        lin = data["A"] @ theta_full + data["b"]
        mean = lin.at[0].set(lin[0] ** 2)
        return mean, jnp.zeros_like(mean), jnp.zeros((), jnp.int32)


def test_polished_map_converges_to_the_analytic_mode():
    toy = linear_toy()
    mode, cov = toy.analytic_posterior()
    sigma = np.sqrt(np.diag(cov))
    # adam alone, stopped early, leaves the starts short of the mode (the check can fail) ...
    rough = find_map(toy, n_starts=8, seed=1, max_steps=200, polish=False)
    assert rough.n_converged < 8 and np.max(np.abs(rough.points - mode) / sigma) > 0.01
    # ... L-BFGS-B on the box finishes every start
    fit = find_map(toy, n_starts=8, seed=1, max_steps=200)
    assert fit.n_converged == 8 and fit.converged_fraction == 1.0, fit.summary_line()
    assert np.all(fit.newton_step < 1e-3)
    assert np.max(np.abs(fit.points - mode) / sigma) < 1e-4
    assert len(fit.modes) == 1 and fit.modes[0].members[0] == fit.best_index and fit.spread_sigma < 1e-3
    np.testing.assert_allclose(fit.sigma, sigma, rtol=1e-8)  # Gauss-Newton is exact for a linear model
    data = fit.to_dict()
    assert data["converged_fraction"] == 1.0 and len(data["modes"]) == 1 and data["max_failed"] == [0] * 8
    assert "8/8 starts converged; 1 mode" in fit.summary_line()


def test_two_mirror_modes_are_named():
    # mean = (a^2, b), y = (1, 0.3): modes at (+-1, 0.3), 40 sigma apart, equally likely
    prior = sapphire.Prior(names=("a", "b"), low=(-2.0, -2.0), high=(2.0, 2.0))
    toy = TwoModes(np.eye(2), np.zeros(2), np.array([1.0, 0.3]), np.full(2, 0.1), prior)
    fit = find_map(toy, n_starts=8, seed=0)
    assert fit.n_converged == 8, fit.summary_line()
    assert len(fit.modes) == 2, fit.summary_line()
    centres = sorted(m.theta[0] for m in fit.modes)
    np.testing.assert_allclose(centres, [-1.0, 1.0], atol=1e-6)
    for m in fit.modes:
        np.testing.assert_allclose(m.theta[1], 0.3, atol=1e-6)
        assert m.spread_sigma < 0.01
    assert fit.modes[0].loss == pytest.approx(fit.modes[1].loss, abs=1e-9)
    assert sum(len(m.members) for m in fit.modes) == 8 and "2 modes" in fit.summary_line()


def test_map_on_a_face_of_the_box_counts_as_converged():
    toy = linear_toy(seed=2)
    mode, cov = toy.analytic_posterior()
    low = np.array(toy.prior.low)
    low[0] = mode[0] + 3 * np.sqrt(cov[0, 0])  # the mode lies outside: the MAP sits on this face
    boxed = LinearGaussianForward(
        toy.A, toy.b, toy.y, toy.sigma, sapphire.Prior(toy.prior.names, tuple(low), tuple(toy.prior.high))
    )
    fit = find_map(boxed, n_starts=4, seed=0, max_steps=200)
    assert fit.n_converged == 4, fit.summary_line()
    np.testing.assert_allclose(fit.best[0], low[0], atol=1e-12)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="newton_tol > 0"):
        find_map(linear_toy(), n_starts=2, newton_tol=0.0)
