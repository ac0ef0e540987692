"""Known-answer tests of forecasts.modes (issue 19): mode weights and evidence of Gaussian
mixtures in a box against their analytic values, failed evaluations counted, chains grouped
into modes, NUTS per mode, and the reports."""

import json

import numpy as np
import pytest
from _fakes import FakeEmulator, TwoModeEmulator

import forecasts
from forecasts.modes import (
    GaussianMixtureTarget,
    Mode,
    ModeChains,
    ModesResult,
    group_chains,
    merge_mixing_modes,
    mode_table,
    modes_summary,
    outside_training,
    refine_modes,
    weigh_modes,
)
from forecasts.plots import modes_corner


@pytest.fixture(scope="session")
def two_modes():
    target = GaussianMixtureTarget.two_modes()
    return target, weigh_modes(
        target.log_likelihood, prior=target.prior, num_particles=500, num_runs=8, seed=0, progress=False
    )


def test_two_modes_weights_and_evidence(two_modes):
    target, result = two_modes
    assert target.mode_weights == pytest.approx([0.7, 0.3], abs=1e-9)  # 12 sigma box: all the mass inside
    assert result.n_modes == 2
    assert [m.weight for m in result.modes] == pytest.approx([0.7, 0.3], abs=0.05)
    assert sum(m.weight for m in result.modes) == pytest.approx(1.0, abs=1e-12)
    # the heavy mode is the one at -5 sigma_0 along theta_0, the light one at +5 sigma_0
    assert result.modes[0].mean[0] == pytest.approx(target.means[0, 0], abs=0.2)
    assert result.modes[1].mean[0] == pytest.approx(target.means[1, 0], abs=0.2)
    np.testing.assert_allclose(result.modes[0].std, target.sigma[0], rtol=0.2)
    # the error bar must be informative for "within 3 error bars" to mean something
    assert 0 < result.log_evidence_error < 0.3
    assert abs(result.log_evidence - target.log_evidence) < 3 * result.log_evidence_error
    assert result.n_failed == 0 and result.n_evaluations > 1000


def test_one_mode_weight_one():
    target = GaussianMixtureTarget.one_mode()
    result = weigh_modes(
        target.log_likelihood, prior=target.prior, num_particles=500, num_runs=8, seed=1, progress=False
    )
    assert result.n_modes == 1
    assert result.modes[0].weight == pytest.approx(1.0)
    assert abs(result.log_evidence - target.log_evidence) < 3 * result.log_evidence_error < 1.0
    assert np.all(np.abs(result.modes[0].mean - target.means[0]) < 0.2 * target.sigma)


def test_failed_evaluations_are_counted_not_used():
    # a 2-d Gaussian whose likelihood is NaN for theta_1 > 3: counted, and no particle lives there
    import jax.numpy as jnp

    target = GaussianMixtureTarget([1.0], [[0.0, 0.0]], [1.0, 1.0], [-8.0, -8.0], [8.0, 8.0])

    def broken(theta):
        return jnp.where(theta[1] > 3.0, jnp.nan, target.log_likelihood(theta))

    result = weigh_modes(broken, prior=target.prior, num_particles=500, num_runs=2, seed=2, progress=False)
    # about 5/16 of the prior draws alone fall in the broken strip
    assert result.n_failed > 0.25 * 500 * 2
    assert np.all(result.samples[result.weights > 0, 1] <= 3.0)
    assert np.all(np.isfinite(result.log_likelihood[result.weights > 0]))


def test_bad_input_is_refused():
    target = GaussianMixtureTarget.one_mode(n=2)
    with pytest.raises(ValueError, match="needs prior"):
        weigh_modes(target.log_likelihood)
    with pytest.raises(ValueError, match="target_ess"):
        weigh_modes(target.log_likelihood, prior=target.prior, target_ess=1.5)
    with pytest.raises(ValueError, match="num_particles"):
        weigh_modes(target.log_likelihood, prior=target.prior, num_particles=0)


# ------------------------------------------------------------------------------------------------
def _iid_chains(rng, centres, draws=500, n=3):
    return np.stack([c + rng.standard_normal((draws, n)) for c in centres])


def test_group_chains_separated_modes_are_modes_not_failure():
    rng = np.random.default_rng(0)
    chains = _iid_chains(rng, [np.zeros(3), np.full(3, 10.0), np.full(3, 10.0), np.full(3, 10.0)])
    from numpyro.diagnostics import split_gelman_rubin

    assert np.max(split_gelman_rubin(chains)) > 1.5  # judged across modes, this would be a failure
    groups = group_chains(chains)
    assert groups.n_modes == 2
    assert groups.groups == ((0,), (1, 2, 3))
    assert not groups.failed and np.all(groups.r_hat < 1.01)
    assert groups.verdict.startswith("2 modes")
    np.testing.assert_allclose(groups.means, [[0, 0, 0], [10, 10, 10]], atol=0.2)


def _split_result(rng, centres, weights, num_runs=4, per_run=200):
    """A ModesResult whose SMC modes have the given centres (2-d) and weights, particles N(c, 1)."""
    labels = np.tile(np.repeat(np.arange(len(centres)), per_run // len(centres)), num_runs)
    samples = np.asarray(centres, float)[labels] + rng.standard_normal((labels.size, 2))
    w = np.asarray(weights, float)[labels]
    w = w / w.sum()
    modes = tuple(
        Mode(
            weight=float(w[labels == m].sum()),
            weight_error=0.01,
            mean=np.asarray(c, float),
            cov=np.eye(2),
            std=np.ones(2),
            best_theta=np.asarray(c, float),
            best_log_likelihood=-float(m),
            n_samples=int((labels == m).sum()),
        )
        for m, c in enumerate(centres)
    )
    return ModesResult(
        names=("a", "b"),
        samples=samples,
        weights=w,
        log_likelihood=np.zeros(labels.size),
        labels=labels,
        modes=modes,
        log_evidence=0.0,
        log_evidence_error=0.1,
        log_evidence_runs=np.zeros(num_runs),
        n_failed=0,
        n_evaluations=1,
        n_steps=(1,) * num_runs,
        acceptance=np.ones(num_runs),
        times={},
        settings={},
    )


def test_modes_whose_chains_mix_are_merged():
    """Three SMC modes; NUTS chains started in modes 0 and 2 wander over the same region (they
    mix), those of mode 1 stay apart: two modes, weights 0.5 + 0.2 and 0.3, R-hat over all the
    merged chains."""
    rng = np.random.default_rng(1)
    result = _split_result(rng, [(0, 0), (10, 10), (1, 0)], [0.5, 0.3, 0.2])

    class Hmc:
        samples = _iid_chains(
            rng, [np.zeros(2), np.zeros(2), np.full(2, 10.0), np.full(2, 10.0), np.zeros(2), np.zeros(2)], n=2
        )

    refined = tuple(
        ModeChains(
            mode=m,
            chains=(2 * m, 2 * m + 1),
            samples=Hmc.samples[2 * m : 2 * m + 2],
            r_hat=np.ones(2),
            ess=np.ones(2),
            start=np.zeros((2, 2)),
            hmc=Hmc,
        )
        for m in range(3)
    )
    groups = group_chains(Hmc.samples)
    maps = (np.array([[0.0, 0.0], [10.0, 10.0], [1.0, 0.0]]), np.array([3.0, 1.0, 2.0]))
    merged, chains, new_maps, sets = merge_mixing_modes(result, refined, groups, maps)
    assert sets == [[0, 2], [1]] and merged.n_modes == 2
    assert [m.weight for m in merged.modes] == pytest.approx([0.7, 0.3])
    assert sum(m.weight for m in merged.modes) == pytest.approx(1.0)
    assert chains[0].chains == (0, 1, 4, 5) and chains[1].chains == (2, 3) and np.max(chains[0].r_hat) < 1.01
    np.testing.assert_allclose(new_maps[0], [[1.0, 0.0], [10.0, 10.0]])  # the better MAP of the merged pair
    assert set(np.unique(merged.labels)) == {0, 1} and np.all(merged.labels[result.labels == 2] == 0)
    # chains that stay in their own modes: nothing merged
    same, _, _, sets = merge_mixing_modes(result, refined, group_chains(Hmc.samples[[0, 1, 2, 3]]), maps)
    assert sets == [[0], [1], [2]] and same is result


@pytest.mark.parametrize("kind", ["drift", "stuck"])
def test_group_chains_flags_non_convergence_inside_a_mode(kind):
    rng = np.random.default_rng(1)
    chains = _iid_chains(rng, [np.zeros(3)] * 4)
    if kind == "drift":  # chain 3 wanders slowly across the mode
        chains[3] = np.linspace(-2.0, 2.0, 500)[:, None] + 0.1 * rng.standard_normal((500, 3))
    else:  # chain 3 sticks near one point of the mode
        chains[3] = 0.7 + 0.01 * rng.standard_normal((500, 3))
    groups = group_chains(chains)
    assert groups.n_modes == 1
    assert groups.failed
    assert "NOT CONVERGED" in groups.verdict


def test_group_chains_refuses_bad_shape():
    with pytest.raises(ValueError, match="chains must be"):
        group_chains(np.zeros((4, 3)))


# ------------------------------------------------------------------------------------------------
def test_two_modes_through_an_emulator_nuts_per_mode_and_reports(tmp_path):
    emu = TwoModeEmulator()
    fm = forecasts.EmulatorForward(emu, free=["A_etaM", "A_tdep"])
    centre, width = fm.prior.centre, fm.prior.width
    result = weigh_modes(fm, num_particles=500, num_runs=4, seed=4, progress=False)
    assert result.n_modes == 2
    assert [m.weight for m in result.modes] == pytest.approx([0.5, 0.5], abs=0.05)
    assert sorted(np.sign(m.mean[0] - centre[0]) for m in result.modes) == [-1, 1]
    for mode in result.modes:  # u_0 = -+a within 0.2 of the mode's width eps / (2a)
        assert abs(abs(mode.mean[0] - centre[0]) / width[0] - emu.a) < 0.2 * emu.eps / (2 * emu.a)
        assert mode.std[1] / width[1] == pytest.approx(emu.eps, rel=0.2)

    refined = refine_modes(fm, result, chains_per_mode=2, num_warmup=150, num_samples=200, seed=5)
    assert [r.chains for r in refined] == [(0, 1), (2, 3)]
    for mode, r in zip(result.modes, refined):
        side = np.sign(mode.mean[0] - centre[0])
        assert np.all(np.sign(r.samples[..., 0] - centre[0]) == side)  # never left its mode
        assert np.max(r.r_hat) < 1.05
        assert np.all(np.abs(r.mean - mode.mean) < 0.3 * mode.std)
    # the same four chains judged together: a failure; grouped into modes: two converged modes
    assert np.max(refined[0].hmc.r_hat) > 1.5
    groups = group_chains(refined[0].hmc, threshold=1.05)
    assert groups.groups == ((0, 1), (2, 3)) and not groups.failed

    table = mode_table(result, fm, refined)
    n_dof = fm.n_summary - 2
    assert "chi^2/dof" in table and "max R-hat" in table and f"/{n_dof} |" in table
    summary = json.loads(json.dumps(modes_summary(result, refined)))
    assert [m["weight"] for m in summary["modes"]] == pytest.approx([0.5, 0.5], abs=0.05)
    assert len(summary["modes"][1]["r_hat"]) == 2 and summary["log_evidence_error"] > 0

    path = modes_corner(result.samples, result.weights, result.labels, result.names, tmp_path / "c.png")
    assert path.stat().st_size > 10_000


def test_particles_outside_the_emulator_training_box_are_counted():
    class NarrowFake(FakeEmulator):
        def in_training_range(self, theta):  # trained only on A_etaM < prior centre
            return np.asarray(theta)[..., 0] < self.prior.centre[0]

    fm = forecasts.EmulatorForward(NarrowFake(), free=["A_etaM", "A_tdep"])
    centre, width = fm.prior.centre, fm.prior.width
    samples = centre + width * np.array([[-0.1, 0.0], [0.1, 0.0], [0.2, 0.1], [-0.3, 0.0]])
    weights = np.array([0.4, 0.1, 0.2, 0.3])
    with pytest.warns(UserWarning, match="2 of 4 SMC particles .* outside the emulator's training box"):
        out = outside_training(fm, samples, weights)
    assert out == {"n_particles": 2, "weight": pytest.approx(0.3)}
    assert outside_training(GaussianMixtureTarget.one_mode(n=2).log_likelihood, samples, weights) is None
