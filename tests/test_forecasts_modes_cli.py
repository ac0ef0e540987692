"""``sapphire forecast`` with modes and ``sapphire validate --modes`` (forecasts/cli.py, issue 19),
run in-process through ``sapphire.cli.main`` on a fake emulator with two mirror-image modes
(``_fakes.TwoModeEmulator``: with A_etaM and A_tdep free, weights 1/2 each by symmetry).

``validate``'s exact side is a second forward model on the same fake emulator (monkeypatched
``forecasts.problem.exact_forward``), so the two posteriors are the same: every mode must pass
and the weights must agree within their errors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from _fakes import TwoModeEmulator

import forecasts
import forecasts.problem
from sapphire.cli import main

EMU = TwoModeEmulator()
SMALL = [
    "--free",
    "A_etaM,A_tdep",
    "--particles",
    300,
    "--smc-runs",
    4,
    "--starts",
    2,
    "--chains-per-mode",
    2,
    "--quiet",
]


@pytest.fixture
def two_modes(tmp_path, monkeypatch):
    """An emulator path whose loading returns the two-mode fake."""
    path = tmp_path / "two.emu"
    path.mkdir()
    monkeypatch.setattr(forecasts.problem, "load_emulator", lambda p, observations=None: EMU)
    return str(path)


def run(*argv) -> int:
    return main([str(a) for a in argv])


def test_forecast_hmc_weighs_the_modes_by_default(tmp_path, two_modes, capsys):
    out = tmp_path / "fc"
    # --hmc with the emulator: modes on by default, NUTS per mode
    assert run("forecast", "--emulator", two_modes, "--hmc", "--warmup", 100, "--draws", 150, *SMALL, "--out", out) == 0
    printed = capsys.readouterr().out
    assert (
        "2 mode(s)" in printed
        and "chi^2/dof" in printed
        and "2 modes (chains [0, 1] | [2, 3]), each converged" in printed
    )
    data = json.loads((out / "forecast.json").read_text())
    modes = data["modes"]
    assert len(modes) == 2
    assert sum(m["weight"] for m in modes) == pytest.approx(1.0, abs=1e-9)
    assert [m["weight"] for m in modes] == pytest.approx([0.5, 0.5], abs=0.05)
    centre, width = forecasts.EmulatorForward(EMU, free=["A_etaM", "A_tdep"]).prior.centre, EMU.prior.width[[0, 6]]
    # the NUTS means sit at u_0 = -+a, one mode on each side
    assert sorted(np.round((np.array([m["mean"][0] for m in modes]) - centre[0]) / width[0], 2)) == [-EMU.a, EMU.a]
    for m in modes:
        assert len(m["r_hat"]) == 2 and max(m["r_hat"]) <= 1.01
        assert m["std"][1] / width[1] == pytest.approx(EMU.eps, rel=0.25)
        assert (
            m["chi2"] == pytest.approx(0.0, abs=0.5) and m["dof"] == data["forward"]["n_summary"] - 2
        )  # the MAP fits exactly
    assert math.isfinite(data["log_evidence"]) and data["log_evidence_error"] > 0
    assert data["chain_groups"]["n_modes"] == 2 and data["converged_in_modes"] is True
    assert (out / "corner.png").stat().st_size > 10_000 and "| weight |" in (out / "modes.md").read_text()


def test_forecast_modes_without_hmc_and_not_for_the_plain_run(tmp_path, two_modes, capsys):
    out = tmp_path / "smc"
    assert run("forecast", "--emulator", two_modes, "--modes", *SMALL, "--out", out) == 0
    data = json.loads((out / "forecast.json").read_text())
    assert len(data["modes"]) == 2 and data["modes"][0]["r_hat"] is None and data["hmc"] is None
    assert (out / "corner.png").stat().st_size > 10_000
    # --hmc --no-modes: today's NUTS; group_chains sorts its chains (both started at the MAP: one mode)
    out = tmp_path / "plain"
    assert (
        run(
            "forecast",
            "--emulator",
            two_modes,
            "--hmc",
            "--no-modes",
            "--chains",
            2,
            "--warmup",
            100,
            "--draws",
            100,
            "--hmc-init",
            "map",
            *SMALL,
            "--out",
            out,
        )
        == 0
    )
    data = json.loads((out / "forecast.json").read_text())
    assert "modes" not in data and data["chain_groups"]["n_modes"] == 1 and data["chain_groups"]["groups"] == [[0, 1]]
    assert f"chains: {data['chain_groups']['verdict']}" in capsys.readouterr().out  # converged or not: 100 draws decide


def test_validate_mode_by_mode(tmp_path, two_modes, monkeypatch, capsys):
    monkeypatch.setattr(
        forecasts.problem, "exact_forward", lambda model, halos, obs, **kw: forecasts.EmulatorForward(EMU, obs, **kw)
    )
    out = tmp_path / "val"
    assert (
        run(
            "validate",
            "--modes",
            "--emulator",
            two_modes,
            "--halos",
            4,
            "--warmup",
            100,
            "--draws",
            250,
            "--weight-draws",
            400,
            *SMALL,
            "--strict",
            "--out",
            out,
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "verdict: PASS" in printed
    data = json.loads((out / "crossval.json").read_text())
    assert data["verdict"] == "PASS" and len(data["modes"]) == 2
    for entry in data["modes"]:
        w = entry["weights"]
        assert entry["report"]["verdict"] == "PASS"
        assert w["candidate"] == pytest.approx(0.5, abs=0.05) and w["reference"] == pytest.approx(0.5, abs=0.05)
        assert abs(w["z"]) < 3 and 0 < w["reference_error"] < 0.05
    # the exact side's importance-sampling evidence agrees with the emulator's SMC evidence (same posterior)
    ln_z = np.logaddexp.reduce(data["exact_mode_weights"]["log_evidence"])
    err = math.hypot(
        data["emulator_modes"]["log_evidence_error"], max(data["exact_mode_weights"]["log_evidence_error"])
    )
    assert abs(ln_z - data["emulator_modes"]["log_evidence"]) < 3 * err
    assert "Mode 1" in (out / "crossval.md").read_text()
    for name in ("crossval_mode0_corner.png", "crossval_mode1_corner.png", "crossval_modes_corner.png"):
        assert (out / name).stat().st_size > 5_000, name


def test_quickstart_check_runs_mode_by_mode_when_the_emulator_has_several_modes(tmp_path):
    """The quickstart's exact check with two emulator modes (forecasts.quickstart): tempered SMC
    finds both, NUTS runs in each, the "exact" side (a second forward model on the same fake, so
    the same posterior) is started in each mode, and the per-mode verdict is PASS with weights
    1/2 +- their errors; decisive.json carries the modes and reloads to the same verdict."""
    import dataclasses

    import sapphire
    from forecasts.optimize import find_map
    from forecasts.quickstart import SCALES, ModesVerdict, decide_by_modes, modes_line, weigh_check_modes

    free = ["A_etaM", "A_tdep"]
    centre = sapphire.DEFAULT_PRIOR.from_unit(np.full(8, 0.5))
    emu_fm = forecasts.EmulatorForward(EMU, EMU.observations, free=free, fixed=centre)
    exact_fm = forecasts.EmulatorForward(EMU, EMU.observations, free=free, fixed=centre)
    sizes = dataclasses.replace(
        SCALES["tiny"], emulator_hmc=(2, 100, 250), exact_hmc=(2, 100, 250), smc_particles=300, smc_runs=4
    )
    lines: list[str] = []
    modes, chains = weigh_check_modes(emu_fm, sizes, 0, tmp_path, False, lines.append)
    assert modes.n_modes == 2 and len(chains) == 2 and "2 mode(s)" in lines[0]
    fit = find_map(emu_fm, n_starts=2, seed=0)
    state: dict = {}
    line = decide_by_modes(exact_fm, modes, chains, centre[[0, 6]], sizes, 0, 600.0, tmp_path, fit, state, False)
    assert state["crossval"].verdict == "PASS" and line.startswith("PASS, mode by mode (2 emulator modes)")
    saved = json.loads((tmp_path / "decisive.json").read_text())
    assert saved["modes"]["n_modes"] == 2
    assert saved["modes"]["weight"] == pytest.approx([0.5, 0.5], abs=0.05)
    for entry in saved["modes_check"]["payload"]["modes"]:
        assert entry["report"]["verdict"] == "PASS" and abs(entry["weights"]["z"]) < 3
    reloaded = ModesVerdict.from_dict(saved["modes_check"])
    assert (reloaded.verdict, reloaded.markdown) == ("PASS", state["crossval"].markdown)
    assert "Mode 1" in reloaded.to_markdown() and len(saved["figures"]) >= 2
    assert all(Path(p).stat().st_size > 5_000 for p in saved["figures"])
    assert "weights 0.5" in modes_line(saved["modes"]) and "mode by mode" in modes_line(saved["modes"])
