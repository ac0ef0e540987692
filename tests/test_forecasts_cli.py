"""``sapphire forecast | validate | recover`` (forecasts/cli.py), run in-process through
``sapphire.cli.main``.

The emulator paths use a fake emulator (a smooth map with the emulator protocol) returned by a
monkeypatched ``forecasts.problem.load_emulator`` (the emulator's file format is not exercised
here).  The exact model costs a compilation per solve kind (~15-40 s each on a shared 2-core
machine), so it runs once (a forecast on 4 halos, Fisher at the mock's truth by differences of
exact gradients); elsewhere the exact-model mocks are replaced by the fake emulator's
predictions (monkeypatched ``forecasts.campaigns.mock_observations``), and ``validate``'s exact
side by a second forward model on the same fake emulator.
"""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
from _fakes import FakeEmulator

import forecasts
import forecasts.campaigns
import forecasts.cli
import forecasts.problem
import sapphire
from sapphire.cli import main

PRIOR = sapphire.DEFAULT_PRIOR
CENTRE = ",".join(f"{v:g}" for v in PRIOR.centre)


EMU = FakeEmulator()


def fake_mock_observations(model, halos, obs, theta, *, noise_seed=None):
    """Stand-in for forecasts.mock_observations: the fake emulator's mean at theta (no exact solve)."""
    obs = sapphire.Observations.default() if obs is None else obs
    mean = np.asarray(EMU.predict(jnp.asarray(theta))[0])
    slices = EMU.observations.slices
    return sapphire.Observations(tuple(dataclasses.replace(rel, y=mean[slices[rel.name]]) for rel in obs.relations))


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """An emulator path whose loading returns EMU; mocks from EMU."""
    path = tmp_path / "fake.emu"
    path.mkdir()
    monkeypatch.setattr(forecasts.problem, "load_emulator", lambda p, observations=None: EMU)
    monkeypatch.setattr(forecasts.campaigns, "mock_observations", fake_mock_observations)
    return str(path)


def run(*argv) -> int:
    return main([str(a) for a in argv])


# ------------------------------------------------------------------------------------- errors
def test_bad_options_are_named(tmp_path, fake, monkeypatch, capsys):
    cases = [
        (["forecast", "--emulator", fake, "--free", "A_etaM,bogus"], "--free: unknown name 'bogus'"),
        (["forecast", "--emulator", fake, "--fixed", "1,2,3"], "--fixed needs 8 values"),
        (["forecast", "--emulator", fake, "--fixed", "1,2,x,4,5,6,7,8"], "--fixed must be 8 comma-separated numbers"),
        (["forecast", "--emulator", fake, "--relations", "smhm,hi"], "--relations: unknown name 'hi'"),
        (["forecast", "--emulator", fake, "--sigma-scale", "-1"], "--sigma-scale must be a positive number"),
        (["forecast", "--emulator", str(tmp_path / "missing.emu")], "--emulator: no emulator at"),
        (["forecast"], "needs --emulator PATH"),
        (["forecast", "--forward", "exact"], "--forward exact needs the exact model: give --halos N"),
        (["forecast", "--forward", "exact", "--halos", "4", "--store", "x.zarr"], "give --halos or --store, not both"),
        (["forecast", "--emulator", fake, "--mock-theta", CENTRE], "--mock-theta needs the exact model"),
        (
            ["forecast", "--emulator", fake, "--halos", "4", "--mock-theta", "9" + CENTRE[CENTRE.index(",") :]],
            "--mock-theta: theta[0]: A_etaM = 9.0 lies outside the prior box",
        ),
        (["forecast", "--emulator", fake, "--fisher-at", "truth"], "--fisher-at truth needs --mock-theta"),
        (["forecast", "--emulator", fake, "--observations", str(tmp_path / "none.json")], "--observations: no file"),
        (
            ["forecast", "--emulator", fake, "--fixed", "9" + CENTRE[CENTRE.index(",") :], "--free", "A_tdep"],
            "A_etaM = 9.0 lies outside the prior box",
        ),
        (["validate", "--emulator", fake], "sapphire validate needs the exact model"),
        (["recover", "--emulator", fake, "--halos", "4", "--truths", "0"], "--truths must be >= 1"),
        (
            ["recover", "--emulator", fake, "--halos", "4", "--truths", "1", "--relation-sets", "smhm;gas"],
            "--relation-sets: unknown name 'gas'",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as info:
            run(*argv)
        assert message in str(info.value), (argv, str(info.value))
        assert str(info.value).startswith(f"sapphire {argv[0]}: ")
    # an emulator trained on other kernel centres than the observations
    other = sapphire.Observations.default()
    shifted = sapphire.Observations(
        tuple(dataclasses.replace(r, x=r.x + (0.05 if r.name == "mzr" else 0.0)) for r in other.relations)
    )
    monkeypatch.setattr(forecasts.problem, "load_emulator", lambda p, observations=None: FakeEmulator(shifted))
    with pytest.raises(
        SystemExit, match="emulator forward model: obs: relation 'mzr' x\\[0\\] = .* differs from the emulator's"
    ):
        run("forecast", "--emulator", fake)


# -------------------------------------------------------------------------------------- exact
def test_forecast_with_the_exact_model(tmp_path, capsys):
    """The exact path end to end on 4 halos (one free parameter, a noise-free mock at the prior
    centre, Fisher at the truth by central differences of exact gradients: two compilations)."""
    out = tmp_path / "exact"
    assert (
        run(
            "forecast",
            "--forward",
            "exact",
            "--halos",
            8,
            "--solver",
            "tsit5",
            "--free",
            "A_etaM",
            "--mock-theta",
            CENTRE,
            "--fisher-at",
            "truth",
            "--hessian",
            "fd_grad",
            "--quiet",
            "--out",
            out,
        )
        == 0
    )
    data = json.loads((out / "forecast.json").read_text())
    assert data["forward"]["kind"] == "ExactForward" and data["forward"]["n_halos"] == 8
    assert data["problem"]["exact"]["source"] == "diffmah" and data["map"] is None
    assert data["point"] == [PRIOR.centre[0]] and data["fisher"]["kind"] == "laplace (fd_grad)"
    # 8 halos leave some kernel centres with < 3 halos: named in the record and printed
    names = sapphire.population_summaries.summary_names(sapphire.Observations.default())
    poor = data["poorly_supported_at_point"]
    assert poor and set(poor) <= set(names)
    assert data["fisher"]["positive_definite"] and data["fisher"]["sigmas"][0] > 0
    mock = sapphire.Observations.from_dict(json.loads((out / "mock_observations.json").read_text()))
    assert mock.names == ("smhm", "gas_ratio", "mzr") and "mock: exact model" in mock.relations[0].source
    assert (out / "corner.png").stat().st_size > 5_000
    printed = capsys.readouterr().out
    assert "A_etaM" in printed and "poorly supported summaries at the point" in printed


# ----------------------------------------------------------------------------------- emulator
def test_forecast_with_the_emulator_map_fisher_hmc(tmp_path, fake, capsys):
    out = tmp_path / "fc"
    truth = PRIOR.centre + 0.1 * PRIOR.width
    assert (
        run(
            "forecast",
            "--emulator",
            fake,
            "--halos",
            4,
            "--mock-theta",
            ",".join(map(str, truth)),
            "--free",
            "A_tdep,A_etaM",
            "--starts",
            2,
            "--hmc",
            "--no-modes",
            "--chains",
            2,
            "--warmup",
            60,
            "--draws",
            60,
            "--checkpoint",
            "--quiet",
            "--out",
            out,
        )
        == 0
    )  # --no-modes: the chains of one run (modes: tests/test_forecasts_modes_cli.py)
    printed = capsys.readouterr().out
    assert "HMC mean +- std" in printed and "A_etaM" in printed and "A_tdep" in printed
    data = json.loads((out / "forecast.json").read_text())
    assert data["forward"]["free"] == ["A_etaM", "A_tdep"] and data["forward"]["kind"] == "EmulatorForward"
    np.testing.assert_allclose(data["truth"], truth[[0, 6]])
    assert data["forward"]["fixed"]["B_etaM"] == pytest.approx(truth[1])  # held at the truth by default
    # noise-free mock of the emulator itself: the MAP is the truth (up to the pull of the
    # theta-dependent emulator error on the variance), the Fisher errors are finite
    assert data["fisher"]["positive_definite"] and all(s > 0 for s in data["fisher"]["sigmas"])
    assert np.all(np.abs(np.array(data["map"]["best"]) - truth[[0, 6]]) < 0.3 * np.array(data["fisher"]["sigmas"]))
    assert data["hmc"]["draws"] == 60 and data["hmc"]["chains"] == 2 and len(data["hmc"]["r_hat"]) == 2
    for name in ("corner.png", "hmc_samples.npz", "hmc_checkpoint.npz", "mock_observations.json"):
        assert (out / name).stat().st_size > 1000, name


def test_forecast_without_hmc_draws_fisher_ellipses(tmp_path, fake, capsys):
    obs_path = tmp_path / "obs.json"
    obs_path.write_text(sapphire.Observations.default().to_json())
    out = tmp_path / "fc"
    assert (
        run(
            "forecast",
            "--emulator",
            fake,
            "--observations",
            obs_path,
            "--relations",
            "smhm,mzr",
            "--sigma-scale",
            "smhm=0.5",
            "--free",
            "A_etaM,B_etaM,A_tdep",
            "--starts",
            2,
            "--hessian",
            "gauss-newton",
            "--no-emulator-error",
            "--out",
            out,
        )
        == 0
    )
    data = json.loads((out / "forecast.json").read_text())
    assert data["forward"]["relations"] == ["smhm", "mzr"] and data["forward"]["sigma_scale"] == {"smhm": 0.5}
    assert data["forward"]["include_emulator_error"] is False and data["hmc"] is None
    assert data["fisher"]["kind"] == "gauss-newton" and data["problem"]["observations"]["source"] == str(obs_path)
    assert (out / "corner.png").stat().st_size > 10_000
    assert "Fisher sigma" in capsys.readouterr().out


def test_validate_resumes_and_reports_the_verdict(tmp_path, fake, monkeypatch, capsys):
    # the "exact" side: the same fake emulator (so the verdict must be PASS once the chains are
    # long enough for the Monte-Carlo errors (ESS ~270 each): at 40 draws it is INCONCLUSIVE; without
    # --strict a FAIL exits 0 too); its checkpoints,
    # Laplace cache and outputs are the real ones
    monkeypatch.setattr(
        forecasts.problem, "exact_forward", lambda model, halos, obs, **kw: forecasts.EmulatorForward(EMU, obs, **kw)
    )
    out = tmp_path / "val"
    argv = [
        "validate",
        "--emulator",
        fake,
        "--halos",
        4,
        "--free",
        "A_etaM,A_tdep",
        "--starts",
        2,
        "--chains",
        2,
        "--warmup",
        60,
        "--draws",
        250,
        "--exact-draws",
        250,
        "--quiet",
        "--out",
        out,
    ]
    assert run(*argv, "--strict") == 0
    printed = capsys.readouterr().out
    assert "verdict: PASS" in printed
    data = json.loads((out / "crossval.json").read_text())
    assert (
        data["verdict"] == "PASS"
        and data["runs"]["exact"]["hmc"]["draws"] == 250
        and data["runs"]["emulator"]["hmc"]["draws"] == 250
    )
    assert data["fisher"]["sigma_ratio"] == pytest.approx([1.0, 1.0])
    assert "**PASS**" in (out / "crossval.md").read_text()
    for name in (
        "crossval_corner.png",
        "crossval_fisher.png",
        "hmc_exact.ckpt.npz",
        "hmc_emulator.ckpt.npz",
        "laplace_exact.json",
    ):
        assert (out / name).stat().st_size > 1000, name
    # rerun: HMC resumes from the finished checkpoints (not rewritten), the verdict thresholds change
    stamps = {
        n: (out / n).stat().st_mtime_ns for n in ("hmc_exact.ckpt.npz", "hmc_emulator.ckpt.npz", "laplace_exact.json")
    }
    assert run(*argv, "--max-auc", "0.3", "--strict") == 1  # AUC ~0.5 +- 0.03 < 0.3 fails beyond the MC error
    assert "verdict: FAIL" in capsys.readouterr().out
    assert {n: (out / n).stat().st_mtime_ns for n in stamps} == stamps
    # another problem with the same out dir: the checkpoint is refused, with the way out named
    with pytest.raises(SystemExit, match="belongs to another forward model.*--restart"):
        run(*argv[:-2], "--sigma-scale", "0.5", "--out", out)


def test_recover_and_error_scaling_with_the_emulator(tmp_path, fake, capsys):
    out = tmp_path / "rec"
    assert (
        run(
            "recover",
            "--emulator",
            fake,
            "--halos",
            4,
            "--free",
            "A_etaM,A_tdep",
            "--truths",
            2,
            "--starts",
            2,
            "--relation-sets",
            "smhm,gas_ratio,mzr;smhm",
            "--error-scaling",
            "--scales",
            "1,0.5",
            "--quiet",
            "--out",
            out,
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "smhm+gas_ratio+mzr" in printed and "error scaling" in printed
    data = json.loads((out / "recovery.json").read_text())
    assert [s["relations"] for s in data["relation_sets"]] == [["smhm", "gas_ratio", "mzr"], ["smhm"]]
    assert len(data["truths"]) == 2 and data["free"] == ["A_etaM", "A_tdep"]
    for entry in data["relation_sets"]:  # the emulator fits its own noise-free mocks
        assert entry["failure_rate"] == 0.0
        assert np.all(np.abs(np.array(entry["normalised_bias"])) < 0.1)
    scaling = json.loads((out / "error_scaling.json").read_text())
    assert [r["sigma_scale"] for r in scaling["scales"]] == [1.0, 0.5]
    assert all(r["positive_definite"] for r in scaling["scales"])
    for name in ("recovery.png", "error_scaling.png"):
        assert (out / name).stat().st_size > 10_000
