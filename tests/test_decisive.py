"""Known answers for forecasts.decisive.extend_until_decided: i.i.d. Gaussian "chains" (seeded,
prefix-consistent, as an extended HMC run is) of one distribution reach PASS by extension, a
0.5-sigma shift reaches FAIL, a spent budget stops at INCONCLUSIVE naming the ESS needed, and
a rerun resumes from the saved state.  No sampler runs: ~10 s."""

import json

import numpy as np
import pytest

from forecasts.crossval import cross_validate
from forecasts.decisive import extend_until_decided
from forecasts.hmc import HmcResult

CHAINS, D, LONGEST = 4, 2, 20_000


def fake_runner(seed: int, shift: float, calls: list):
    """``run(num_samples, time_limit_s)``: the first num_samples draws of fixed i.i.d. N(shift, 1)
    chains (4 x 20,000 x 2), 1 ms of "sampling" per draw."""
    draws = np.random.default_rng(seed).normal(size=(CHAINS, LONGEST, D)) + np.array([shift, 0.0])

    def run(n: int, time_limit_s):
        calls.append((n, time_limit_s))
        x = draws[:, :n]
        zeros = np.zeros((CHAINS, n))
        return HmcResult(
            names=("a", "b"),
            samples=x,
            diverging=zeros.astype(bool),
            accept_prob=zeros + 0.8,
            num_steps=zeros + 3,
            r_hat=np.ones(D),
            ess=np.full(D, CHAINS * n),
            n_divergent=0,
            warmup_divergent=0,
            step_size=np.ones(CHAINS),
            inverse_mass_matrix=np.tile(np.eye(D), (CHAINS, 1, 1)),
            complete=True,
            num_warmup=0,
            num_samples=n,
            times={"sampling": 1e-3 * n},
            settings={},
            fingerprint="fake",
        )

    return run


def compare(reference, candidate):
    return cross_validate(reference, candidate, seed=0, max_classifier_points=1000)


def check(shift: float, budget: float, tmp_path=None, **kwargs):
    ref_calls, cand_calls = [], []
    result = extend_until_decided(
        fake_runner(1, 0.0, ref_calls),
        fake_runner(2, shift, cand_calls),
        compare,
        reference_draws=kwargs.pop("reference_draws", 25),
        candidate_draws=kwargs.pop("candidate_draws", 25),
        budget_s=budget,
        max_reference_draws=LONGEST,
        max_candidate_draws=LONGEST,
        state_path=None if tmp_path is None else tmp_path / "state.json",
        key="k",
        log=lambda line: None,
        **kwargs,
    )
    return result, ref_calls, cand_calls


def test_same_distribution_is_extended_until_pass():
    result, ref_calls, _ = check(0.0, budget=1e6)
    assert result.rounds[0]["verdict"] == "INCONCLUSIVE"  # 100 draws per set: shift se ~0.14, too wide for 0.2
    assert result.verdict == "PASS" and result.stopped == "decided"
    # the extension follows the report's ask (ESS ~ draws here), so few rounds are needed
    assert 2 <= len(result.rounds) <= 4
    assert ref_calls[0] == (25, None) and all(limit is not None for _, limit in ref_calls[1:])
    assert np.all(np.abs(result.report.shift) + 2 * result.report.shift_se < 0.2)


def test_half_sigma_shift_is_extended_until_fail():
    result, _, _ = check(0.5, budget=1e6, reference_draws=5, candidate_draws=5)
    assert result.verdict == "FAIL" and result.stopped == "decided"
    assert result.report.parameter_decisions["shift"][0] == "fail"
    assert abs(result.report.shift[0] - 0.5) < 4 * result.report.shift_se[0]


def test_spent_budget_stops_inconclusive_and_rerun_resumes(tmp_path):
    result, ref_calls, _ = check(0.0, budget=0.0, tmp_path=tmp_path)
    assert result.verdict == "INCONCLUSIVE" and result.stopped == "budget" and len(result.rounds) == 1
    assert "ESS" in result.report.advice
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["stopped"] == "budget" and saved["reference_draws"] == 25
    # a rerun with a budget continues from the saved round (not from scratch) and decides
    again, ref_calls, _ = check(0.0, budget=1e6, tmp_path=tmp_path)
    assert again.rounds[0] == result.rounds[0] and len(again.rounds) >= 2
    assert again.verdict == "PASS"
    assert ref_calls[0][1] is not None  # the resumed first call is an extension, under the budget


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="budget_s >= 0"):
        check(0.0, budget=-1.0)
