"""Training sets: designs, the Zarr store, and bit-identical generation across backends
(one device, 4 host devices, 2 Dask workers, kill-and-resume)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import sapphire
import training_sets as T
from training_sets import store as store_module
from training_sets.generate import write_block

N_POINTS, N_HALOS, CHUNK, SEED = 6, 8, 2, 3
# Explicit solver only: compiles ~3x faster than "auto" (whose bit-identity across one and all
# devices benchmarks/bench_generate.py checks); the orchestration under test is the same.
SOLVER = "tsit5"
MODEL = sapphire.Model(solver=SOLVER)
#: The keyword arguments of the tiny stores these tests generate.
TINY_STORE = dict(n_points=N_POINTS, n_halos=N_HALOS, seed=SEED, chunk=CHUNK, model=MODEL, progress=False)


# --------------------------------------------------------------------------------- designs
def test_latin_hypercube_is_seeded_stratified_and_inside_the_box():
    prior = sapphire.DEFAULT_PRIOR
    a = T.latin_hypercube_design(prior, 20, seed=1)
    assert np.array_equal(a, T.latin_hypercube_design(prior, 20, seed=1))
    assert not np.array_equal(a, T.latin_hypercube_design(prior, 20, seed=2))
    unit = prior.to_unit(a)
    for column in unit.T:  # Latin: one point in each of the 20 strata of every axis
        assert sorted(np.floor(column * 20).astype(int)) == list(range(20))
    prior.validate(a)


def test_extension_adds_new_points_away_from_the_old_ones():
    prior = sapphire.DEFAULT_PRIOR
    old = T.latin_hypercube_design(prior, 16, seed=0)
    new = T.extend_design(prior, old, 8, seed=5)
    assert new.shape == (8, 8)
    distances = np.linalg.norm(prior.to_unit(new)[:, None] - prior.to_unit(old)[None], axis=-1)
    assert distances.min() > 0.05
    assert np.array_equal(new, T.extend_design(prior, old, 8, seed=5))


def test_design_table_is_read_by_name_and_validated(tmp_path):
    prior = sapphire.DEFAULT_PRIOR
    theta = T.latin_hypercube_design(prior, 3, seed=0)
    order = list(reversed(prior.names))
    path = tmp_path / "design.csv"
    rows = [",".join(order)] + [",".join(str(t[prior.names.index(n)]) for n in order) for t in theta]
    path.write_text("\n".join(rows) + "\n")
    assert np.array_equal(T.read_design_table(path, prior), theta)
    path.write_text("A_etaM,B_etaM\n0,0\n")
    with pytest.raises(ValueError, match="missing"):
        T.read_design_table(path, prior)
    outside = theta.copy()
    outside[0, 0] = 99.0
    path.write_text("\n".join([",".join(prior.names)] + [",".join(map(str, t)) for t in outside]))
    with pytest.raises(ValueError, match="A_etaM"):
        T.read_design_table(path, prior)
    with pytest.raises(FileNotFoundError):
        T.read_design_table(tmp_path / "nope.csv", prior)


# --------------------------------------------------------------------------------- generation
@pytest.fixture(scope="module")
def reference_store(tmp_path_factory):
    """An uninterrupted, single-device store (computed once for the module)."""
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    report = T.generate(path, **TINY_STORE, devices=1)
    assert report.computed == N_POINTS and report.failed_points == 0
    return path


def test_store_contents_match_the_model(reference_store):
    ts = T.open_training_set(reference_store)
    assert ts.n_points == N_POINTS and ts.valid_mask().all()
    assert ts.summary_jacobian.shape == (N_POINTS, len(ts.summary_names), 8)
    assert ts.attrs["design"]["batches"][0] == {"kind": "latin_hypercube", "seed": SEED, "n_points": N_POINTS}
    assert ts.attrs["halos"]["n_halos"] == N_HALOS
    model, halos = MODEL, ts.halos()
    assert halos.fingerprint() == sapphire.HaloPopulation.from_diffmah(N_HALOS, seed=0).fingerprint()
    theta = np.asarray(ts.theta[1].compute())
    direct = model.summaries(theta, halos)
    # Stored means come out of the sensitivity solve (consistent with the stored Jacobian);
    # Model.summaries uses the plain solve: equal to the solver tolerance (rtol 1e-5 on ~1-10 dex).
    np.testing.assert_allclose(ts.summaries[1].compute(), direct.mean, rtol=0, atol=2e-4)
    # Support: the effective number of halos at each centre, a smooth function of the states.
    np.testing.assert_allclose(ts.summary_support[1].compute(), direct.support, rtol=1e-3, atol=0)
    assert np.all(np.asarray(ts.summary_support.compute()) <= N_HALOS)
    np.testing.assert_allclose(
        ts.summary_jacobian[1].compute(), model.summary_jacobian(theta, halos), rtol=0, atol=1e-9
    )


def test_minibatches_stream_every_valid_row_once(reference_store):
    ts = T.open_training_set(reference_store)
    seen = []
    for batch in ts.batches(4, seed=7, buffer_chunks=1):
        assert batch["theta"].shape[0] <= 4
        seen.append(batch["theta"])
    seen = np.concatenate(seen)
    assert seen.shape == (N_POINTS, 8)
    assert np.array_equal(np.sort(seen, axis=0), np.sort(np.asarray(ts.theta.compute()), axis=0))
    subset = list(ts.batches(10, indices=[0, 5], seed=0))
    assert len(subset) == 1 and subset[0]["theta"].shape == (2, 8)


def _run_python(code: str, env_extra: dict | None = None, timeout: float = 600) -> str:
    env = dict(os.environ, **(env_extra or {}))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_four_host_devices_give_a_bit_identical_store(reference_store, tmp_path):
    path = tmp_path / "sharded.zarr"
    out = _run_python(
        f"""
        import sapphire, training_sets as T
        r = T.generate({str(path)!r}, n_points={N_POINTS}, n_halos={N_HALOS}, seed={SEED}, chunk={CHUNK}, devices="all",
                       model=sapphire.Model(solver={SOLVER!r}), progress=False)
        print(r.backend)
        """,
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    )
    assert "cpu x4" in out
    assert T.store_digest(path) == T.store_digest(reference_store)


def test_two_dask_workers_give_a_bit_identical_store(reference_store, tmp_path):
    from distributed import Client, LocalCluster

    path = tmp_path / "dask.zarr"
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        report = T.generate(path, **TINY_STORE, scheduler=client)
    assert report.backend == "dask" and report.workers == 2 and report.computed == N_POINTS
    assert T.store_digest(path) == T.store_digest(reference_store)


def _assert_within_solver_tolerance(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Values of two solves at rtol 1e-5 (dex) that may have taken different step sequences."""
    scale = max(np.abs(b).max(), 1.0)
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b)), what
    assert np.abs(a - b).max() < 5e-3 * scale and np.median(np.abs(a - b)) < 1e-5 * scale, (what, np.abs(a - b).max())


def test_batched_points_agree_with_point_by_point(reference_store, tmp_path):
    """--batch-points (one vmapped call per block, for GPUs) fills the same store to the solver
    tolerance: vectorised differently, round-off can change an adaptive step sequence (measured:
    2.4e-6 dex in the summaries, 2.4e-4 of the largest Jacobian entry)."""
    path = tmp_path / "batched.zarr"
    report = T.generate(path, **TINY_STORE, devices=1, batch_points=True)
    assert report.computed == N_POINTS
    batched, reference = T.open_training_set(path), T.open_training_set(reference_store)
    for name in ("summaries", "summary_stderr", "summary_support", "summary_jacobian"):
        a, b = np.asarray(getattr(batched, name).compute()), np.asarray(getattr(reference, name).compute())
        _assert_within_solver_tolerance(a, b, name)
    assert np.array_equal(np.asarray(batched.n_failed.compute()), np.asarray(reference.n_failed.compute()))
    assert batched.attrs["history"][-1]["batch_points"] is True


def test_batched_points_pick_the_solver_per_point():
    """A stiff-corner point and the centre in one flat batch of lanes (default "auto" solver:
    lanes sorted by stiffness, solver chosen per lane) agree with each point in a block of two
    copies of itself (a block of one kind).  The references share the mixed block's compiled
    program (one "auto" sensitivity compilation, ~40 s, instead of two); that a block agrees with
    ``point_outputs`` is checked above."""
    import jax.numpy as jnp

    from training_sets.evaluate import block_outputs

    model = sapphire.Model()
    forcing = sapphire.HaloPopulation.from_diffmah(4, seed=0).forcing()
    obs = sapphire.Observations.default()
    thetas = jnp.asarray(np.stack([sapphire.DEFAULT_PRIOR.centre, [2.0, -3.0, 0.0, -3.0, -2.0, 0.0, -0.5, 0.0]]))
    static = (model.settings, model.config, obs, False)
    batched = block_outputs(thetas, forcing, *static)
    for i in range(2):
        alone = block_outputs(jnp.stack([thetas[i], thetas[i]]), forcing, *static)
        for a, b in zip(batched[:5], alone[:5]):
            _assert_within_solver_tolerance(np.asarray(a[i]), np.asarray(b[0]), f"point {i}")


def test_killed_run_resumes_to_a_bit_identical_store(reference_store, tmp_path):
    """Kill -9 a CLI run once some (not all) blocks are written, then --resume."""
    path = tmp_path / "killed.zarr"
    command = [
        sys.executable,
        "-m",
        "sapphire.cli",
        "generate",
        str(path),
        "--points",
        str(N_POINTS),
        "--halos",
        str(N_HALOS),
        "--seed",
        str(SEED),
        "--chunk",
        str(CHUNK),
        "--solver",
        SOLVER,
        "--quiet",
    ]
    env = dict(os.environ, SAPPHIRE_CPU_DEVICES="1")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        try:
            done = np.asarray(store_module.open_group(path)["done"][...])
        except (ValueError, KeyError, FileNotFoundError):
            done = np.zeros(0, bool)
        if done.size and 0 < done.sum() < N_POINTS:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at = int(done.sum())
            break
        time.sleep(0.02)
    if killed_at is None:
        proc.kill()
        pytest.fail(f"could not catch the run between blocks (rc {proc.poll()}): {proc.stderr.read().decode()[-2000:]}")
    left = T.open_training_set(path)
    assert 0 < int(left.done.sum().compute()) < N_POINTS  # interrupted for real
    resumed = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert T.store_digest(path) == T.store_digest(reference_store)
    ts = T.open_training_set(path)
    first, second = ts.attrs["history"]
    assert first["finished"] is None and second["resumed"] and second["finished"]


def test_a_block_cut_between_data_and_done_is_recomputed(reference_store, tmp_path, monkeypatch):
    """The crash window inside a block (data written, done flags not): resume recomputes it."""
    import importlib

    G = importlib.import_module("training_sets.generate")  # the module, not the re-exported function

    path = tmp_path / "cut.zarr"
    calls = {"n": 0}

    def crashing_write(root, block, rows):
        calls["n"] += 1
        if calls["n"] == 2:
            for name, values in rows.items():  # half the job: data but no done flags
                start = block * CHUNK
                root[name][start : start + len(values)] = values + 1.0 if name == "summaries" else values
            raise KeyboardInterrupt("simulated kill")
        write_block(root, block, rows)

    monkeypatch.setattr(G, "write_block", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        T.generate(path, **TINY_STORE, devices=1)
    monkeypatch.setattr(G, "write_block", write_block)
    assert int(T.open_training_set(path).done.sum().compute()) == CHUNK
    report = T.generate(path, **TINY_STORE, devices=1, resume=True)
    assert report.computed == N_POINTS - CHUNK
    assert T.store_digest(path) == T.store_digest(reference_store)


# --------------------------------------------------------------------------------- validation
def test_bad_stores_are_refused_with_clear_messages(reference_store, tmp_path):
    with pytest.raises(T.StoreError, match="no training-set store"):
        T.open_training_set(tmp_path / "missing.zarr")
    import shutil

    import zarr

    copy = tmp_path / "copy.zarr"
    shutil.copytree(reference_store, copy)
    zarr.open_group(str(copy), mode="r+").attrs["schema_version"] = 99
    with pytest.raises(T.StoreError, match="schema version 99 \\(newer"):
        T.open_training_set(copy)
    old = tmp_path / "old_definition.zarr"  # generated before issue 16: no summary_definition
    shutil.copytree(reference_store, old)
    group = zarr.open_group(str(old), mode="r+")
    assert group.attrs["summary_definition"] == 2
    del group.attrs["summary_definition"]
    with pytest.raises(
        T.StoreError, match="summary definition 1; this sapphire computes 2 .*fixed bandwidth.*regenerate"
    ):
        T.open_training_set(old)
    (tmp_path / "junk.zarr").mkdir()
    with pytest.raises(T.StoreError):
        T.open_training_set(tmp_path / "junk.zarr")
    # Resuming with other settings names the difference.
    with pytest.raises(T.StoreError, match="solver.rtol"):
        T.generate(
            reference_store,
            n_points=N_POINTS,
            n_halos=N_HALOS,
            seed=SEED,
            chunk=CHUNK,
            resume=True,
            model=sapphire.Model(solver=SOLVER, rtol=1e-6),
            progress=False,
        )
    with pytest.raises(T.StoreError, match="halos"):
        T.generate(reference_store, **TINY_STORE, resume=True, halo_seed=1)
    with pytest.raises(T.StoreError, match="another design"):
        T.generate(
            reference_store,
            n_points=N_POINTS,
            n_halos=N_HALOS,
            seed=SEED + 1,
            chunk=CHUNK,
            resume=True,
            model=MODEL,
            progress=False,
        )
    with pytest.raises(FileExistsError, match="--resume"):
        T.generate(reference_store, **TINY_STORE)


def test_failed_points_are_recorded_and_excluded(reference_store, tmp_path):
    import shutil

    import zarr

    copy = tmp_path / "failed.zarr"
    shutil.copytree(reference_store, copy)
    root = zarr.open_group(str(copy), mode="r+")
    root["n_failed"][2] = 3
    ts = T.open_training_set(copy)
    assert list(np.nonzero(~ts.valid_mask())[0]) == [2]
    from training_sets.inspection import summarise

    summary = summarise(ts)
    assert (
        summary["points_with_failed_halos"] == 1
        and summary["failed_halos_total"] == 3
        and summary["valid_points"] == N_POINTS - 1
    )
    assert all(2 not in batch["n_failed"] for batch in ts.batches(2))


def test_extending_a_store_keeps_old_rows_and_computes_only_new_ones(reference_store, tmp_path):
    import shutil

    copy = tmp_path / "extended.zarr"
    shutil.copytree(reference_store, copy)
    n = T.extend_store(copy, 2, seed=11)
    assert n == N_POINTS + 2
    ts = T.open_training_set(copy)
    assert int(ts.done.sum().compute()) == N_POINTS
    report = T.generate(copy, **TINY_STORE, resume=True, devices=1)
    assert report.computed == 2
    ts = T.open_training_set(copy)
    ref = T.open_training_set(reference_store)
    assert ts.done.all().compute()
    assert np.array_equal(ts.summaries[:N_POINTS].compute(), ref.summaries.compute())
    assert [b["kind"] for b in ts.attrs["design"]["batches"]] == ["latin_hypercube", "latin_hypercube_extension"]


def test_cli_extend_and_resume_need_no_design_arguments(reference_store, tmp_path, capsys):
    """``sapphire generate ts.zarr --extend M`` (and ``--resume``) continue the store's own
    design: no --points or --seed of the original run needed."""
    import shutil

    from sapphire.cli import main

    copy = tmp_path / "extended.zarr"
    shutil.copytree(reference_store, copy)
    common = ["--halos", str(N_HALOS), "--chunk", str(CHUNK), "--solver", SOLVER, "--devices", "1", "--quiet"]
    assert main(["generate", str(copy), "--extend", "2", "--seed", "11", *common]) == 0
    assert "2 points computed" in capsys.readouterr().out
    assert main(["generate", str(copy), "--resume", *common]) == 0
    assert "0 points computed" in capsys.readouterr().out
    ts = T.open_training_set(copy)
    assert ts.n_points == N_POINTS + 2 and bool(ts.done.all().compute())


def test_inspect_cli_prints_summary_and_figure(reference_store, tmp_path, capsys):
    from sapphire.cli import main

    figure = tmp_path / "design.png"
    assert main(["inspect", str(reference_store), "--figure", str(figure)]) == 0
    out = capsys.readouterr().out
    assert f"{N_POINTS}/{N_POINTS} done" in out and figure.stat().st_size > 10_000
    assert "poorly supported (support < 3 halos)" in out


def test_a_10000_point_store_streams_in_minibatches_without_loading_whole(tmp_path):
    """Synthetic rows (no solves): peak memory while streaming every minibatch stays far below
    the size of the arrays."""
    import tracemalloc

    from training_sets.store import create_store, open_group

    n, chunk = 10_000, 50
    obs = sapphire.Observations.default()
    rng = np.random.default_rng(0)
    # Uniform draws: scipy's discrepancy-optimised Latin hypercube takes ~25 s at 10,000 points.
    theta = MODEL.prior.from_unit(rng.uniform(size=(n, MODEL.prior.ndim)))
    path = create_store(
        tmp_path / "big.zarr",
        theta,
        MODEL,
        sapphire.HaloPopulation.from_diffmah(2, seed=0),
        obs,
        design={"kind": "uniform", "seed": 0},
        chunk=chunk,
    )
    root = open_group(path, mode="r+")
    s = obs.n_summary
    root["summaries"][:] = rng.normal(size=(n, s))
    root["summary_stderr"][:] = rng.uniform(size=(n, s))
    root["summary_support"][:] = rng.uniform(1.0, 100.0, size=(n, s))
    root["summary_jacobian"][:] = rng.normal(size=(n, s, 8))
    root["n_failed"][:] = 0
    root["done"][:] = True
    total_bytes = n * (8 + s + s + s + 8 * s) * 8
    ts = T.open_training_set(path)
    ts.load([0])  # zarr's one-time codec buffers (~14 MB) are not data
    tracemalloc.start()
    rows = 0
    for batch in ts.batches(256, seed=1, buffer_chunks=4):
        rows += batch["theta"].shape[0]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert rows == n
    assert peak < total_bytes / 4, f"peak {peak / 1e6:.1f} MB vs arrays {total_bytes / 1e6:.1f} MB"
