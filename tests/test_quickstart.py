"""The real paths at tiny sizes, on one session-scoped ``sapphire quickstart --scale tiny`` run
(tests/conftest.py): the quickstart end to end, a rerun that skips every stage, a kill inside
a stage that resumes to the uninterrupted run's draws, a real trained emulator
through EmulatorForward / find_map / laplace / run_hmc / cross_validate against ExactForward on
the same mock, and ``sapphire train`` / ``emulator-report`` on the real tiny stores."""

import json
import shutil

import numpy as np
import pytest

import sapphire
from forecasts import quickstart
from forecasts.hmc import HmcResult
from sapphire.cli import main
from training_sets.generate import model_from_attrs

# one pytest-xdist worker runs every test of this file, so the session fixture is built once
pytestmark = pytest.mark.xdist_group("quickstart_tiny")


def test_tiny_quickstart_end_to_end(quickstart_tiny):
    out, summary = quickstart_tiny.out, quickstart_tiny.summary
    assert (
        summary["verdict"] in quickstart.EXIT_STATUS
        and summary["exit_status"] == quickstart.EXIT_STATUS[summary["verdict"]]
    )
    assert json.loads((out / "summary.json").read_text())["verdict"] == summary["verdict"]
    for name in (
        "report.md",
        "crossval.json",
        "crossval_corner.png",
        "emulator_posterior.png",
        "regime.json",
        "emulator_report/emulator_report.json",
        "exact_hmc.npz",
        "emulator_hmc_reduced.npz",
    ):
        assert (out / name).exists(), name
    assert not any(row["skipped"] for row in summary["stages"])
    # the exact check has >= 2 free parameters, and the report gives each chain's ESS and the shift +- MC error
    sizes = quickstart.SCALES["tiny"]
    assert len(sizes.exact_free) >= 2 and "A_etaM" in sizes.exact_free
    params = summary["crossval"]["parameters"]
    assert [p["name"] for p in params] == list(sizes.exact_free)
    assert all(p["shift_se"] > 0 and np.isfinite(p["shift_in_reference_sigma"]) for p in params)
    assert [row["run"] for row in summary["chains"]] == ["emulator, 8 free", "exact, reduced", "emulator, reduced"]
    assert all(len(row["ess"]) == len(row["names"]) for row in summary["chains"])
    exact = HmcResult.load(out / "exact_hmc.npz")
    check = summary["decisive_check"]
    assert check["rounds"][-1]["exact_draws"] == exact.samples.shape[1] <= sizes.max_exact_draws
    assert check["stopped"] in ("decided", "budget", "max draws", "on threshold")
    assert (check["stopped"] == "decided") == (summary["verdict"] != "INCONCLUSIVE")
    report = (out / "report.md").read_text()
    for text in ("ESS", "exit status", "cooling CGM", "A_etaM =", "The decisive check", "starts converged"):
        assert text in report, text
    # every round also reweighted the emulator's draws by the exact likelihood (forecasts.reweight)
    decisive = json.loads((out / "decisive.json").read_text())
    reweighting = decisive["reweighting"]
    assert reweighting["names"] == list(sizes.exact_free) and 2 <= reweighting["n_draws"] <= sizes.reweight_draws
    assert reweighting["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE", "UNRELIABLE")
    assert reweighting["reliable"] == (reweighting["verdict"] != "UNRELIABLE")
    assert all(r["reweighting"]["verdict"] == reweighting["verdict"] for r in check["rounds"][-1:])
    assert summary["crossval"]["reweighting"]["n_draws"] == reweighting["n_draws"] and "reweighted shift" in report
    # where the truth lies: the regime fractions of the solved halos, A_etaM's place in its range
    # refinement waves between the emulator and the forecasts: held-out scores, counts that add up,
    # the training store left as it was
    import training_sets

    refine = summary["refine"]
    assert len(refine["waves"]) == sizes.refine_waves and refine["stopped"] in ("waves", "targets met")
    assert all(w["n_points"] == sizes.refine_points and w["scores"]["value_error_median"] >= 0 for w in refine["waves"])
    refined = training_sets.open_training_set(out / "refine" / "store.zarr")
    assert refined.n_points == sizes.n_train + sizes.refine_waves * sizes.refine_points
    assert training_sets.open_training_set(out / "train.zarr").n_points == sizes.n_train
    assert model_from_attrs(refined.attrs).settings.solver == sizes.solver == "tsit5"  # the scale's exact model
    assert "Refinement waves" in report and (out / "refine" / "refine_report.md").exists()
    regime = summary["cgm_regime"]
    assert 0 <= regime["fraction_cooling"] <= 1 and regime["n_solved"] <= sizes.n_halos
    assert (
        regime["A_etaM_unit"] == pytest.approx(quickstart.TRUTH_UNIT[0], abs=1e-12) and regime["A_etaM_half"] == "upper"
    )


def test_rerun_skips_every_stage_and_exits_by_verdict(quickstart_tiny, capsys):
    summary = quickstart_tiny.summary
    code = main(["quickstart", "--scale", "tiny", "--out", str(quickstart_tiny.out), "--quiet"])
    again = json.loads((quickstart_tiny.out / "summary.json").read_text())
    assert code == quickstart.EXIT_STATUS[summary["verdict"]]
    assert all(row["skipped"] for row in again["stages"])
    assert again["verdict"] == summary["verdict"]
    assert [p["shift_in_reference_sigma"] for p in again["crossval"]["parameters"]] == pytest.approx(
        [p["shift_in_reference_sigma"] for p in summary["crossval"]["parameters"]], abs=1e-12
    )
    assert "done in an earlier run, skipped" in capsys.readouterr().out


class Killed(Exception):
    pass


def test_kill_inside_a_stage_resumes(quickstart_tiny, tmp_path, monkeypatch):
    """Copy the finished run, forget its 8-free emulator forecast, kill that stage's HMC after its
    first block (a checkpoint written), rerun: only that stage is computed again (the stages that
    do not depend on it are skipped) and its draws equal the uninterrupted run's."""
    import forecasts.hmc

    stage = "emulator forecast (8 free)"
    out = tmp_path / "qs"
    shutil.copytree(quickstart_tiny.out, out)
    records = json.loads((out / "stages.json").read_text())
    del records[stage]
    (out / "stages.json").write_text(json.dumps(records))
    for name in ("emulator_hmc.ckpt.npz", "emulator_forecast.json"):
        (out / name).unlink()

    real_bar = forecasts.hmc.progress_bar
    blocks = []

    def bar(description, total):
        if description == "emulator HMC":

            def kill(info):
                blocks.append(info["iteration"])
                raise Killed(f"killed at iteration {info['iteration']}")

            return kill
        return real_bar(description, total)

    monkeypatch.setattr(forecasts.hmc, "progress_bar", bar)
    with pytest.raises(Killed):
        quickstart.run_quickstart(out, scale="tiny", seed=0, progress=True, log=lambda line: None)
    chains, warmup, draws = quickstart.SCALES["tiny"].emulator_hmc
    assert (
        blocks == [warmup]
        and (out / "emulator_hmc.ckpt.npz").exists()
        and not (out / "emulator_forecast.json").exists()
    )
    monkeypatch.setattr(forecasts.hmc, "progress_bar", real_bar)
    resumed = quickstart.run_quickstart(out, scale="tiny", seed=0, progress=False, log=lambda line: None)
    assert [row["stage"] for row in resumed["stages"] if not row["skipped"]] == [stage]
    before = json.loads((quickstart_tiny.out / "emulator_forecast.json").read_text())["hmc"]
    after = json.loads((out / "emulator_forecast.json").read_text())["hmc"]
    assert after["draws"] == draws and after["mean"] == before["mean"] and after["std"] == before["std"]
    assert resumed["verdict"] == quickstart_tiny.summary["verdict"]


def test_real_emulator_through_the_forecast_path(quickstart_tiny):
    """The quickstart's reduced check ran a real trained SobolevEmulator through EmulatorForward,
    find_map, run_hmc and cross_validate against ExactForward's HMC on the same mock (and its
    8-free forecast through laplace): check those results belong to these forward models, and
    the emulator likelihood's gradient against central differences."""
    import training_sets
    from emulator import SobolevEmulator
    from forecasts.crossval import cross_validate
    from forecasts.fisher import laplace
    from forecasts.forward import EmulatorForward, ExactForward

    out, sizes = quickstart_tiny.out, quickstart.SCALES["tiny"]
    mock = sapphire.Observations.from_dict(json.loads((out / "mock_observations.json").read_text()))
    # the forecasts ran on the refined emulator (the refine stage's)
    emu_path = out / "refine" / "emulator" if sizes.refine_waves else out / "emulator.emu"
    emu = SobolevEmulator.load(emu_path, observations=mock)
    train = training_sets.open_training_set(out / "train.zarr")
    truth = sapphire.DEFAULT_PRIOR.from_unit(quickstart.TRUTH_UNIT)
    free = list(sizes.exact_free)
    emu_fm = EmulatorForward(emu, mock, free=free, fixed=truth)
    exact_fm = ExactForward(model_from_attrs(train.attrs), train.halos(), mock, free=free, fixed=truth)
    exact, emu_post = HmcResult.load(out / "exact_hmc.npz"), HmcResult.load(out / "emulator_hmc_reduced.npz")
    assert exact.fingerprint == exact_fm.fingerprint() and emu_post.fingerprint == emu_fm.fingerprint()
    assert exact.names == emu_post.names == tuple(free)
    assert np.all(np.isfinite(emu_post.samples)) and np.all(emu_post.n_failed == 0)
    saved = json.loads((out / "decisive.json").read_text())
    assert saved["map"]["converged_fraction"] > 0
    # the cross-validation of those two runs is what the quickstart reported
    report = cross_validate(exact, emu_post, seed=0)
    np.testing.assert_allclose(
        report.shift, [p["shift_in_reference_sigma"] for p in quickstart_tiny.summary["crossval"]["parameters"]]
    )
    # Laplace at the emulator MAP of the reduced problem
    point = np.asarray(saved["map"]["best"])
    fisher = laplace(emu_fm, point)
    assert fisher.matrix.shape == (2, 2) and np.all(np.isfinite(fisher.matrix))
    # gradient of the real emulator's likelihood (float64) against central differences
    fm64 = EmulatorForward(emu.with_precision("float64"), mock, free=free, fixed=truth)
    theta = np.asarray(truth)[list(fm64.free_index)]
    _, grad, _ = fm64.log_likelihood_grad_and_failures(theta)
    h = 1e-6 * (np.asarray(fm64.prior.high) - np.asarray(fm64.prior.low))
    fd = [
        (float(fm64.log_likelihood(theta + h * e)) - float(fm64.log_likelihood(theta - h * e))) / (2 * h[i])
        for i, e in enumerate(np.eye(2))
    ]
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6 * np.max(np.abs(fd)))


def test_train_and_emulator_report_commands_on_the_real_tiny_store(quickstart_tiny, tmp_path):
    import training_sets
    from emulator import SobolevEmulator

    out = quickstart_tiny.out
    artifact = tmp_path / "cli.emu"
    assert (
        main(
            [
                "train",
                str(out / "train.zarr"),
                str(artifact),
                "--ensemble",
                "2",
                "--epochs",
                "5",
                "--patience",
                "5",
                "--hidden",
                "8",
                "--quiet",
            ]
        )
        == 0
    )
    emu = SobolevEmulator.load(artifact)
    train = training_sets.open_training_set(out / "train.zarr")
    assert emu.store_fingerprint == train.fingerprint
    # the artifact's training design is rows of the store's
    stored = np.asarray(train.theta.compute())
    assert all(np.min(np.max(np.abs(stored - row), axis=1)) < 1e-12 for row in np.asarray(emu.training_theta))
    assert (
        main(["emulator-report", str(artifact), str(out / "test.zarr"), "--out", str(tmp_path / "report"), "--quiet"])
        == 0
    )
    report = json.loads((tmp_path / "report" / "emulator_report.json").read_text())
    assert report["n_test"] == quickstart.SCALES["tiny"].n_test
    assert all(np.isfinite(v["median"]) for v in report["value_error_sigma_obs"]["per_summary"].values())
