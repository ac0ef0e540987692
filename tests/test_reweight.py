"""forecasts.reweight against analytic Gaussians: the paired check recovers known shifts and
width ratios with small errors, refuses heavy-tailed weights, and folds into a NUTS report."""

import json

import numpy as np
import pytest
from scipy.stats import genpareto

from forecasts import LinearGaussianForward, cross_validate
from forecasts.reweight import ReweightedCheck, combine, pareto_khat, reweighted_check
from sapphire import Prior
from sapphire.jsonio import json_ready

PRIOR = Prior(names=("a", "b"), low=(-20.0, -20.0), high=(20.0, 20.0))


def toy(mean, sd):
    """Posterior N(mean, diag(sd^2)) inside a box 20 sd wide."""
    return LinearGaussianForward(np.eye(2), np.zeros(2), np.asarray(mean, float), np.asarray(sd, float), PRIOR)


def iid_draws(mean, sd, seed=0, shape=(4, 500)):
    return np.asarray(mean) + np.asarray(sd) * np.random.default_rng(seed).standard_normal(shape + (2,))


def test_a_small_shift_is_measured_paired_and_passes():
    candidate, reference = toy([0.0, 0.0], [1.0, 1.0]), toy([0.05, 0.0], [1.0, 1.0])
    check = reweighted_check(reference, candidate, iid_draws([0, 0], [1, 1]), n_draws=400, seed=1)
    assert check.reliable and check.n_failed == 0 and check.n_draws == 400
    # analytic: (0 - 0.05) / 1; the paired error is far below an unpaired one (1 / sqrt(400) * sqrt(2) = 0.07)
    assert check.shift_se[0] < 0.01
    assert abs(check.shift[0] + 0.05) < 4 * check.shift_se[0] + 1e-3
    assert abs(check.shift[1]) < 4 * check.shift_se[1] + 1e-3
    np.testing.assert_allclose(check.width_ratio, 1.0, atol=0.02)
    assert check.verdict == "PASS"
    assert check.weights_ess > 390 and check.pareto_k < check.pareto_k_limit
    again = ReweightedCheck.from_dict(json.loads(json.dumps(json_ready(check.to_dict()), allow_nan=False)))
    np.testing.assert_array_equal(again.shift, check.shift)
    assert again.verdict == check.verdict and again.thresholds == check.thresholds


def test_a_half_sigma_shift_fails():
    candidate, reference = toy([0.0, 0.0], [1.0, 1.0]), toy([0.5, 0.0], [1.0, 1.0])
    check = reweighted_check(reference, candidate, iid_draws([0, 0], [1, 1], seed=2), n_draws=400, seed=2)
    assert check.reliable
    assert abs(check.shift[0] + 0.5) < 4 * check.shift_se[0]
    assert check.decisions["per_parameter"]["shift"][0] == "fail" and check.verdict == "FAIL"


def test_a_candidate_one_and_a_half_times_wider_fails():
    candidate, reference = toy([0.0, 0.0], [1.5, 1.0]), toy([0.0, 0.0], [1.0, 1.0])
    check = reweighted_check(reference, candidate, iid_draws([0, 0], [1.5, 1], seed=3), n_draws=400, seed=3)
    assert check.reliable  # a wider proposal: bounded weights
    assert abs(check.width_ratio[0] - 1.5) < 4 * check.width_ratio_se[0]
    assert check.decisions["per_parameter"]["width_ratio"] == ["fail", "pass"] and check.verdict == "FAIL"


def test_a_too_narrow_candidate_gives_heavy_tailed_weights_and_decides_nothing():
    # reference 2x wider than the candidate: weights ~ exp(3 x^2 / 8), infinite variance
    candidate, reference = toy([0.0, 0.0], [0.5, 0.5]), toy([0.0, 0.0], [1.0, 1.0])
    check = reweighted_check(reference, candidate, iid_draws([0, 0], [0.5, 0.5], seed=4), n_draws=400, seed=4)
    assert check.pareto_k > check.pareto_k_limit
    assert not check.reliable and check.verdict == "UNRELIABLE"


def test_pareto_khat_recovers_the_tail_shape():
    for k in (0.2, 0.5, 0.9):
        w = genpareto.rvs(k, size=4000, random_state=np.random.default_rng(5))
        assert abs(pareto_khat(np.log(w)) - k) < 0.15, k
    assert pareto_khat(np.array([0.0, np.nan] * 100)) == np.inf


def ar1_chains(seed, chains, draws, rho):
    """(chains, draws, 2) AR(1) chains of N(0, 1): ESS ~ chains x draws x (1 - rho) / (1 + rho)."""
    rng = np.random.default_rng(seed)
    x = np.empty((chains, draws, 2))
    x[:, 0] = rng.standard_normal((chains, 2))
    for t in range(1, draws):
        x[:, t] = rho * x[:, t - 1] + np.sqrt(1 - rho**2) * rng.standard_normal((chains, 2))
    return x


def test_combine_decides_by_the_reweighting_but_never_overrules_a_failure():
    # a short, strongly autocorrelated reference chain: alone, the NUTS-style check is INCONCLUSIVE
    nuts = cross_validate(ar1_chains(6, 2, 500, 0.9), iid_draws([0, 0], [1, 1], seed=6, shape=(4, 2000)), seed=0)
    assert nuts.verdict == "INCONCLUSIVE" and nuts.decisions["shift"] == "undecided"
    assert nuts.decisions["auc"] == "pass"
    candidate = toy([0.0, 0.0], [1.0, 1.0])
    passing = reweighted_check(toy([0.02, 0.0], [1.0, 1.0]), candidate, iid_draws([0, 0], [1, 1], seed=7), seed=7)
    merged = combine(nuts, passing)
    assert merged.verdict == "PASS" and merged.needed == [] and merged.reweighting["verdict"] == "PASS"
    assert "Paired check" in merged.to_markdown() and merged.to_dict()["reweighting"]["n_draws"] == 400
    failing = reweighted_check(toy([0.6, 0.0], [1.0, 1.0]), candidate, iid_draws([0, 0], [1, 1], seed=8), seed=8)
    assert combine(nuts, failing).verdict == "FAIL"
    narrow = toy([0.0, 0.0], [0.5, 0.5])
    unreliable = reweighted_check(candidate, narrow, iid_draws([0, 0], [0.5, 0.5], seed=9), seed=9)
    assert combine(nuts, unreliable).verdict == "INCONCLUSIVE"


def test_reference_and_candidate_must_share_their_parameters():
    other = LinearGaussianForward(np.eye(2), np.zeros(2), np.zeros(2), np.ones(2))
    with pytest.raises(ValueError, match="share their free parameters"):
        reweighted_check(other, toy([0, 0], [1, 1]), iid_draws([0, 0], [1, 1]))
