"""The notebooks (notebooks/*.py, jupytext percent format) run end to end at their tiny sizes.

Each notebook is executed in this process as a plain Python script (``runpy``; jupytext is not
needed), in order, with ``SAPPHIRE_NOTEBOOK_SIZE=tiny`` and every output in one temporary
directory: notebooks 04 and 05 reuse the stores of 03 and the emulator of 04, and the compiled
solves (same tiny model and halo count everywhere) are shared between notebooks.  Each notebook
still runs on its own (``pytest -k 05`` builds what it needs).
"""

from __future__ import annotations

import json
import runpy
import time
from pathlib import Path

import numpy as np
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
TIMES: dict[str, float] = {}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    import matplotlib

    matplotlib.use("Agg")  # MPLBACKEND only counts if nothing chose a backend before
    out = tmp_path_factory.mktemp("notebooks")
    patch = pytest.MonkeyPatch()
    patch.setenv("SAPPHIRE_NOTEBOOK_SIZE", "tiny")
    patch.setenv("SAPPHIRE_NOTEBOOK_OUT", str(out))
    patch.setenv("MPLBACKEND", "Agg")
    patch.chdir(out)
    patch.syspath_prepend(str(NOTEBOOKS))  # the notebooks import demo_settings from their folder
    yield out
    patch.undo()
    if TIMES:
        print("\nnotebook wall times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in TIMES.items()))


def run_notebook(name: str) -> dict:
    path = NOTEBOOKS / name
    text = path.read_text()
    assert text.startswith("# ---\n# jupyter:") and "format_name: percent" in text, (
        f"{name}: not a jupytext percent file"
    )
    assert text.count("# %% [markdown]") >= 3, f"{name}: explain what and why in markdown cells"
    started = time.perf_counter()
    namespace = runpy.run_path(str(path), run_name="__main__")
    TIMES[name] = time.perf_counter() - started
    assert namespace["TINY"] is True
    return namespace


def non_empty(*paths: Path) -> None:
    for p in paths:
        assert p.is_file() and p.stat().st_size > 1000, f"missing or empty: {p}"


def test_01_one_galaxy(out_dir):
    ns = run_notebook("01_one_galaxy.py")
    out = out_dir / "01_one_galaxy"
    non_empty(out / "histories.png", out / "jacobian_mw.png")
    assert ns["hist"].log_state.shape == (ns["N_HALOS"], ns["N_TIMES"], 7)
    assert np.all(np.isfinite(ns["jac"]))
    # the FD spot check agreed with the exact Jacobian entry (solver noise only)
    assert ns["FD_RELATIVE_ERROR"] < 1e-3


def test_02_prior_predictive(out_dir):
    ns = run_notebook("02_prior_predictive.py")
    out = out_dir / "02_prior_predictive"
    non_empty(out / "ppc.png", out / "rank_correlation.png", out / "ppc_draws.npz")
    coverage = json.loads((out / "ppc.json").read_text())
    assert coverage["n_draws"] == ns["N_DRAWS"]
    assert set(coverage["fractions"]) == {"smhm", "gas_ratio", "mzr", "all"}
    assert np.isfinite(ns["means"]).mean() > 0.9
    # the prior brackets most of the data even with a handful of draws
    assert coverage["fractions"]["all"]["inside_envelope"] >= 0.5


def test_03_training_set(out_dir):
    ns = run_notebook("03_training_set.py")
    non_empty(out_dir / "03_training_set" / "design.png", out_dir / "03_training_set" / "values_and_slopes.png")
    assert ns["summary"]["done"] == ns["N_TRAIN"] and ns["summary"]["valid_points"] == ns["valid"].sum() > 0
    assert ns["again"].computed == 0
    assert ns["seen"] == ns["valid"].sum()
    assert (out_dir / "stores-tiny" / "test.zarr").is_dir()


def test_04_emulator(out_dir):
    ns = run_notebook("04_emulator.py")
    out = out_dir / "04_emulator"
    assert (out_dir / "emulators-tiny" / "sobolev.emu").exists()
    report = json.loads((out / "report" / "emulator_report.json").read_text())
    assert report["n_test"] == ns["test"].valid_mask().sum()
    for name in ("value_error.png", "jacobian_error.png", "calibration.png", "training_history.png"):
        non_empty(out / "report" / name)
    non_empty(out / "sobolev_vs_values.png")
    comparison = json.loads((out / "comparison.json").read_text())
    assert len(comparison) == 2 and all(np.isfinite(list(v.values())).all() for v in comparison.values())
    assert np.all(np.isfinite(ns["mean"])) and np.all(np.isfinite(ns["J"]))


def test_05_forecast(out_dir):
    ns = run_notebook("05_forecast.py")
    out = out_dir / "05_forecast"
    non_empty(out / "mock.png", out / "emulator_posterior.png", out / "crossval_corner.png")
    assert json.loads((out / "mock_observations.json").read_text())
    chains, _, draws = ns["EXACT_HMC"]
    assert ns["exact_post"].samples.shape == (chains, draws, len(ns["EXACT_FREE"]))
    assert np.all(np.isfinite(ns["exact_post"].samples)) and np.all(np.isfinite(ns["post"].samples))
    crossval = json.loads((out / "crossval.json").read_text())
    assert crossval["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")  # tiny sizes: the verdict itself is meaningless
    assert ns["fisher"].matrix.shape == (8, 8)
