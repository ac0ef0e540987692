"""Session fixtures shared by several test files: the tiny quickstart's run directory (real
training and test stores, a trained emulator, the mock, exact and emulator HMC results)."""

import types

import pytest


@pytest.fixture(scope="session")
def quickstart_tiny(tmp_path_factory):
    """``run_quickstart(scale="tiny", seed=0)`` once per session: ``out`` (its directory),
    ``summary`` (what it returned) and ``log`` (its lines).  Tests must not modify ``out``:
    copy it first."""
    from forecasts.quickstart import run_quickstart

    out = tmp_path_factory.mktemp("quickstart_tiny")
    lines: list[str] = []
    summary = run_quickstart(out, scale="tiny", seed=0, progress=False, log=lines.append)
    return types.SimpleNamespace(out=out, summary=summary, log=lines)
