"""Session fixtures shared by several test files, and how xdist deals the files to workers.

Scheduling: every test file is one xdist work unit (its ``xdist_group``, unless it names one),
so a module's fixtures -- compiled solves, tiny stores -- are built by one worker, not by each
worker that draws one of its tests.  Units start longest first (``LONGEST_FIRST``, measured in
docs/design.md s.18) so that no long unit starts last while the other worker idles; xdist's own
order (by number of tests) is switched off in pyproject.toml (``--no-loadscope-reorder``).
"""

import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

import pytest

#: Work units measured longest (docs/design.md s.18), in that order; the others follow in
#: collection order.  A unit missing here only starts later: the order changes no result.
LONGEST_FIRST = (
    "quickstart_tiny",
    "test_engine_accuracy",
    "test_training_sets",
    "test_forecasts",
    "test_model_api",
    "test_notebooks",
    "test_likelihood",
    "test_forecasts_modes_cli",
    "test_forecasts_cli",
    "test_emulator",
    "test_refine",
    "test_solver_choice",
)


def pytest_configure(config):
    """One persistent JAX compilation cache per test run, in a fresh temporary folder shared by
    the xdist workers and every process the tests start (they inherit the environment): a
    program compiled twice in the run -- the same store solve by a killed CLI run and by its
    resume, the same tiny exact model by two workers -- is compiled once and loaded after.
    Nothing survives the run (pytest_unconfigure removes the folder), so every run compiles
    from scratch; a folder the caller set in ``JAX_COMPILATION_CACHE_DIR`` is used as it is."""
    if hasattr(config, "workerinput") or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return  # a worker inherits the controller's folder; the caller's own folder stays theirs
    folder = tempfile.mkdtemp(prefix="sapphire-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = config._sapphire_jax_cache = folder
    if "jax" in sys.modules:  # imported already (by a plugin): its config read the environment then
        sys.modules["jax"].config.update("jax_compilation_cache_dir", folder)


def pytest_unconfigure(config):
    folder = getattr(config, "_sapphire_jax_cache", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def _work_unit(item: pytest.Item) -> str:
    """The item's xdist group if it names one, else its file's name (``test_model_api``)."""
    marks = list(item.iter_markers("xdist_group"))
    if marks:
        return str(marks[0].args[0] if marks[0].args else marks[0].kwargs.get("name", "default"))
    return Path(str(item.path)).stem


@pytest.hookimpl(tryfirst=True)  # before xdist tags each node id with its group
def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    for item in items:
        if not any(item.iter_markers("xdist_group")):
            item.add_marker(pytest.mark.xdist_group(_work_unit(item)))
    items.sort(key=lambda item: rank.get(_work_unit(item), len(rank)))  # stable: files keep their order


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
