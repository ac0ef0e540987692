"""Posterior-focused refinement (issue 21): held-out scores of planted emulators, store appends
that add up and resume bit-identically, and the refine loop end to end at tiny sizes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import sapphire
import training_sets as T
from forecasts.refine import RefineSettings, Targets, missing_targets, propose_points, refine, score_points
from training_sets.store import open_group, store_digest

# The tiny configuration of tests/test_training_sets.py (same compiled solve within a session).
N_POINTS, N_HALOS, CHUNK, SEED, SOLVER = 8, 8, 2, 3, "tsit5"
MODEL = sapphire.Model(solver=SOLVER)
SETTINGS = dict(n_points=N_POINTS, n_halos=N_HALOS, seed=SEED, chunk=CHUNK, devices=1, model=MODEL, progress=False)
# Mock truth: the prior centre (away from the stiff corner, quick to solve).
TRUTH = np.asarray(sapphire.DEFAULT_PRIOR.centre)
FREE = ("A_etaM", "A_tdep")
TINY = RefineSettings(
    waves=1,
    points_per_wave=4,
    chains=2,
    warmup=10,
    draws=20,
    map_starts=2,
    seed=0,
    train={"epochs": 4, "patience": 4},
)


class Planted:
    """An emulator whose predictions we control: the exact rows it is given, plus ``offset``
    sigma_obs on every summary, with the exact standard errors as its error."""

    def __init__(self, rows: dict, sigma: np.ndarray, offset: float = 0.0, prior=sapphire.DEFAULT_PRIOR):
        self.rows, self.sigma, self.offset, self.prior = rows, np.asarray(sigma), offset, prior

    def _index(self, theta):
        theta = np.atleast_2d(np.asarray(theta))
        return [int(np.flatnonzero(np.all(self.rows["theta"] == t, axis=1))[0]) for t in theta]

    def predict(self, theta):
        i = self._index(theta)
        return self.rows["summaries"][i] + self.offset * self.sigma, self.rows["summary_stderr"][i]

    def jacobian(self, theta):
        return self.rows["summary_jacobian"][self._index(theta)]


@pytest.fixture(scope="module")
def base_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("refine") / "base.zarr"
    T.generate(path, **SETTINGS)
    return path


@pytest.fixture(scope="module")
def tiny_emulator(base_store, tmp_path_factory):
    from emulator import train_emulator

    emu = train_emulator(base_store, ensemble=2, epochs=4, patience=4, hidden=(8,), seed=0, progress=False)
    path = tmp_path_factory.mktemp("refine_emu") / "emu"
    emu.save(path)
    return path


@pytest.fixture(scope="module")
def mock(base_store):
    ts = T.open_training_set(base_store)
    from forecasts import mock_observations

    return mock_observations(MODEL, ts.halos(), ts.observations, TRUTH)


# ------------------------------------------------------------------------------------ scores
def test_planted_perfect_emulator_scores_zero_and_a_biased_one_its_bias(base_store):
    ts = T.open_training_set(base_store)
    rows = ts.load()
    obs = ts.observations
    draws = np.random.default_rng(0).normal(rows["theta"][:, [0, 3]].mean(axis=0), 0.1, size=(200, 2))
    perfect = score_points(Planted(rows, obs.sigma), rows, obs, free_index=[0, 3], posterior=draws)["stats"]
    assert perfect["dlogl_tilt_shift"] == [0.0, 0.0]
    assert perfect["value_error_median"] == 0 and perfect["value_error_p95"] == 0
    assert perfect["jacobian_error_median"] == 0 and perfect["dlogl_abs_p95"] == 0
    bias = 0.3
    scored = score_points(Planted(rows, obs.sigma, offset=bias), rows, obs)
    np.testing.assert_allclose(scored["value_error"], bias, rtol=1e-12)
    assert scored["stats"]["value_error_median"] == pytest.approx(bias)
    assert scored["stats"]["value_error_p95"] == pytest.approx(bias)
    assert scored["stats"]["jacobian_error_median"] == 0
    # Delta ln L of a shift by b sigma_obs, variance stderr^2 + sigma^2 on both sides
    y, sigma, mean = np.asarray(obs.y), np.asarray(obs.sigma), rows["summaries"]
    var = rows["summary_stderr"] ** 2 + sigma**2
    expected = -0.5 * np.sum(((mean + bias * sigma - y) ** 2 - (mean - y) ** 2) / var, axis=1)
    np.testing.assert_allclose(scored["dlogl"], expected, rtol=1e-10, atol=1e-12)
    missing = missing_targets(scored["stats"], {"max_abs_shift": 0.0}, scored["dlogl"], Targets())
    assert any("value error median" in m for m in missing)
    assert not missing_targets(perfect, {"max_abs_shift": 0.0}, np.zeros(rows["theta"].shape[0]), Targets())


def test_proposal_is_seeded_inside_the_box_and_spread_out():
    prior = sapphire.DEFAULT_PRIOR
    rng = np.random.default_rng(0)
    samples = prior.centre[[0, 3]] + 0.05 * prior.width[[0, 3]] * rng.standard_normal((400, 2))
    kwargs = dict(
        prior_full=prior, free_index=[0, 3], fixed=prior.centre, n_points=12, existing=np.zeros((0, 8)), seed=4
    )
    theta, info = propose_points(samples, spread=lambda t: t[:, 0], **kwargs)
    again, _ = propose_points(samples, spread=lambda t: t[:, 0], **kwargs)
    assert np.array_equal(theta, again) and theta.shape == (12, 8)
    prior.validate(theta)
    assert np.all(theta[:, [1, 2, 4, 5, 6, 7]] == prior.centre[[1, 2, 4, 5, 6, 7]])
    unit = prior.to_unit(theta)[:, [0, 3]]
    gaps = np.linalg.norm(unit[:, None] - unit[None], axis=-1) + np.eye(12)
    assert gaps.min() > 0.01 and len(np.unique(theta, axis=0)) == 12
    assert info["n_spread"] == 3  # a quarter chosen where the spread is largest
    # broadened: the points reach beyond the posterior's +-1 sigma
    assert np.max(np.abs(theta[:, 0] - samples[:, 0].mean())) > samples[:, 0].std()


# ------------------------------------------------------------------------------------ store
def test_append_design_adds_a_block_of_its_own_idempotently(base_store, tmp_path):
    path = shutil.copytree(base_store, tmp_path / "s.zarr")
    prior = sapphire.DEFAULT_PRIOR
    new = T.latin_hypercube_design(prior, 3, seed=9)
    batch = {"kind": "refine", "wave": 1, "seed": 1}
    assert T.append_design(path, new, batch) == (N_POINTS, N_POINTS + 3)
    assert T.append_design(path, new, batch) == (N_POINTS, N_POINTS + 3)  # a resumed caller: no change
    ts = T.open_training_set(path)
    assert ts.n_points == N_POINTS + 3
    last = ts.attrs["design"]["batches"][-1]
    assert last["kind"] == "refine" and last["wave"] == 1 and last["n_points"] == 3
    assert np.array_equal(np.asarray(ts.theta[N_POINTS:]), new)
    assert not np.asarray(ts.done[N_POINTS:]).any()
    # the recorded rows redraw the design (repair of a damaged theta chunk)
    assert np.array_equal(T.generate.__globals__["recorded_design"](ts.attrs)[N_POINTS:], new)
    # an append killed between the resize and the attributes is cut back and redone
    root = open_group(path, mode="r+")
    for name in root.array_keys():
        root[name].resize((N_POINTS + 5,) + root[name].shape[1:])
    assert T.append_design(path, new[:1], {"kind": "refine", "wave": 2, "seed": 2}) == (N_POINTS + 3, N_POINTS + 4)
    assert T.open_training_set(path).n_points == N_POINTS + 4


# ------------------------------------------------------------------------------------ the loop
def test_refine_waves_append_score_before_retraining_and_resume(base_store, tiny_emulator, mock, tmp_path, monkeypatch):
    from emulator import SobolevEmulator
    from forecasts.forward import EmulatorForward, check_training_coverage

    store, out = shutil.copytree(base_store, tmp_path / "a.zarr"), tmp_path / "a"
    free_index = [sapphire.PARAMETER_NAMES.index(n) for n in FREE]
    # killed inside the wave's exact evaluation (after its first block), then rerun
    original, calls = T.generate, {"n": 0}

    def killed(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:

            def die(block):
                raise KeyboardInterrupt("killed")

            kwargs["on_block"] = die
        return original(*args, **kwargs)

    monkeypatch.setattr(T, "generate", killed)
    with pytest.raises(KeyboardInterrupt):
        refine(store, tiny_emulator, out, mock, free=FREE, fixed=TRUTH, settings=TINY, progress=False)
    monkeypatch.setattr(T, "generate", original)
    assert not bool(np.asarray(T.open_training_set(store).done).all())
    assert (out / "wave_1" / "posterior.npz").exists()  # the wave's first step is kept
    assert not (out / "refine_state.json").exists()  # no wave finished
    result = refine(store, tiny_emulator, out, mock, free=FREE, fixed=TRUTH, settings=TINY, progress=False)
    ts = T.open_training_set(store)
    assert len(result.waves) == 1 and result.stopped in ("waves", "targets met")
    assert ts.n_points == N_POINTS + TINY.points_per_wave  # the counts add up
    assert [b.get("wave") for b in ts.attrs["design"]["batches"]] == [None, 1]
    assert [w["rows"] for w in result.waves] == [[8, 12]]
    assert result.waves[0]["n_scored"] == TINY.points_per_wave
    assert bool(np.asarray(ts.done).all())
    # the same store, bit for bit, as an uninterrupted evaluation of the same design blocks
    reference = shutil.copytree(base_store, tmp_path / "ref.zarr")
    for batch in ts.attrs["design"]["batches"][1:]:
        T.append_design(reference, batch["theta"], {k: v for k, v in batch.items() if k not in ("theta", "n_points")})
    original(reference, resume=True, model=MODEL, halos=ts.halos(), chunk=CHUNK, progress=False)
    assert store_digest(reference) == store_digest(store)
    # wave 1 was scored with the starting emulator, before retraining on its points
    emu0 = SobolevEmulator.load(tiny_emulator)
    from forecasts.hmc import HmcResult

    posterior = HmcResult.load(out / "wave_1" / "posterior.npz").flat
    again = score_points(emu0, ts.load(np.arange(8, 12)), mock, free_index=free_index, posterior=posterior)["stats"]
    assert json.loads(json.dumps(again)) == result.waves[0]["scores"]
    # the refined emulator: trained on all 12 points, its refined region recorded and checked
    emu = SobolevEmulator.load(out / "emulator")
    assert sum(len(emu.training["split"][k]) for k in ("train", "val", "test")) == ts.n_points
    assert [r["wave"] for r in emu.refined_region] == [1]
    assert emu.in_refined_region(TRUTH) and not emu.in_refined_region(np.asarray(sapphire.DEFAULT_PRIOR.low))
    fm = EmulatorForward(emu, mock)  # all 8 free: a draw off the 2-d refined slice is flagged
    with pytest.warns(RuntimeWarning, match="refined"):
        check_training_coverage(fm, np.asarray(sapphire.DEFAULT_PRIOR.low)[None], "test", "draws")
    assert (out / "refine_report.md").exists() and (out / "refine_errors.png").exists()
    # a finished refinement reruns as a no-op; other settings into the same directory are refused
    rerun = refine(store, tiny_emulator, out, mock, free=FREE, fixed=TRUTH, settings=TINY, progress=False)
    assert rerun.waves == result.waves
    with pytest.raises(ValueError, match="other settings"):
        refine(store, tiny_emulator, out, mock, free=("A_etaM",), fixed=TRUTH, settings=TINY, progress=False)


# ------------------------------------------------------------------------------------ command line
def test_refine_command_refuses_bad_input_in_one_line_and_writes_nothing(base_store, tiny_emulator, tmp_path, capsys):
    from sapphire.cli import main

    def refused(*argv) -> str:
        with pytest.raises(SystemExit) as info:
            main(["refine", *map(str, argv)])
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and len(err) == 1 and err[0].startswith("sapphire refine: "), err
        return err[0]

    out = tmp_path / "out"
    ok = [base_store, tiny_emulator, "--out", out]
    assert "no training-set store" in refused(tmp_path / "nope.zarr", tiny_emulator, "--out", out)
    assert "no emulator" in refused(base_store, tmp_path / "nope", "--out", out)
    assert "--free" in refused(*ok, "--free", "A_etaM,bogus")
    assert "--mock-theta" in refused(*ok, "--mock-theta", "1,2,3")
    assert "not both" in refused(*ok, "--mock-theta", ",".join(map(str, TRUTH)), "--observations", "x.json")
    assert "--waves" in refused(*ok, "--waves", "0")
    assert "--broaden" in refused(*ok, "--broaden", "0.5")
    assert "--spread-fraction" in refused(*ok, "--spread-fraction", "2")
    assert not out.exists()
    assert T.open_training_set(base_store).n_points == N_POINTS


# ------------------------------------------------------------------------------------ value-only points
def test_value_only_points_mix_with_jacobian_points_in_the_store_and_in_training(base_store, tmp_path):
    import jax.numpy as jnp

    from emulator import train_emulator
    from emulator.loss import member_loss
    from training_sets.inspection import verify_store

    path = shutil.copytree(base_store, tmp_path / "mixed.zarr")
    new = T.latin_hypercube_design(sapphire.DEFAULT_PRIOR, 4, seed=11)
    T.append_design(path, new, {"kind": "refine", "wave": 1, "jacobian": False})
    T.generate(path, resume=True, model=MODEL, halos=T.open_training_set(path).halos(), chunk=CHUNK, progress=False)
    ts = T.open_training_set(path)
    assert ts.has_jacobian.tolist() == [True] * N_POINTS + [False] * 4
    assert ts.valid_mask().all() and bool(np.asarray(ts.done).all())
    rows = ts.load(np.arange(N_POINTS, N_POINTS + 4))
    assert np.isnan(rows["summary_jacobian"]).all() and np.isfinite(rows["summaries"]).all()
    # the plain solve's summaries agree with the sensitivity solve's to the solver tolerance
    np.testing.assert_allclose(rows["summaries"][0], MODEL.summaries(new[0], ts.halos()).mean, rtol=0, atol=2e-4)
    assert verify_store(path)["ok"]
    emu = train_emulator(path, ensemble=2, epochs=3, patience=3, hidden=(8,), seed=0, progress=False)
    assert emu.training["excluded"]["excluded"] == 0
    assert np.all(np.isfinite(emu.training["history"]["train_loss"]))
    # the Jacobian term ignores masked rows and, with every row kept, is the unmasked term bit for bit
    import jax

    from emulator.network import Architecture, init_ensemble

    graphdef, params = init_ensemble(Architecture(n_in=8, n_out=3, hidden=(4,)), [0])
    member = jax.tree.map(lambda a: a[0], params)
    u = jnp.asarray(np.random.default_rng(0).uniform(size=(5, 8)))
    z, jz = jnp.zeros((5, 3)), jnp.asarray(np.random.default_rng(1).normal(size=(5, 3, 8)))
    args = (graphdef, jnp.eye(3), 1.0, 0.01, 0.05, jnp.ones(3), member, u, z)
    plain = member_loss(*args, jz)
    assert float(member_loss(*args, jz, jnp.ones(5))[0]) == float(plain[0])
    mask = jnp.asarray([1.0, 1.0, 0.0, 1.0, 0.0])
    changed = jz.at[2].set(1e3).at[4].set(7.0)
    assert float(member_loss(*args, jz, mask)[0]) == float(member_loss(*args, changed, mask)[0])
    assert float(member_loss(*args, jz, mask)[0]) != float(plain[0])
