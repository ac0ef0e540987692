"""Fill a training-set store: summaries, standard errors and exact summary Jacobians per
design point, block by block, over every local device (or Dask workers), resumably.

Work unit = one block of ``chunk`` consecutive design points (= one Zarr chunk of every
array).  Each point is evaluated by ONE compiled function
(:func:`~training_sets.evaluate.point_outputs`: the population solve with forward
sensitivities, then the kernel regressions and their Jacobian) with fixed shapes, whatever the
backend.  Several devices are used by placing whole blocks on
different devices (round robin) and letting JAX's asynchronous dispatch run them
concurrently; no computation is split across devices.  Why not a Mesh-sharded batch of
points: (1) a point's result would then depend on how the batch was partitioned, while here
it is the same compiled program on the same inputs, so unsharded, sharded, Dask and resumed
stores are bit-identical by construction (and tested); (2) vmapping the population solve over
points turns its per-group explicit/implicit ``lax.cond`` into a select that runs both
solvers; (3) shard_map fails inside lineax's implicit solves (docs/design.md).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

import sapphire
from sapphire.halos import HaloPopulation
from sapphire.model import Model
from sapphire.observations import Observations
from sapphire.prior import Prior

from . import store as store_module
from .design import extend_design, latin_hypercube_design
from .distributed import run_on_dask
from .evaluate import ROW_ARRAYS, Evaluator, block_theta, model_from_attrs, write_block

__all__ = [
    "ROW_ARRAYS",
    "Evaluator",
    "append_design",
    "GenerationReport",
    "extend_store",
    "generate",
    "model_from_attrs",
    "pending_blocks",
    "prepare_store",
    "recorded_design",
    "repair_store",
    "resolve_devices",
    "stored_design",
    "write_block",
]


def pending_blocks(root) -> list[int]:
    """Blocks holding at least one row that is not done (such a block is recomputed whole)."""
    done = store_module.read_rows(root, "done")
    chunk = int(root.attrs["chunk"])
    n_blocks = -(-done.size // chunk)
    return [b for b in range(n_blocks) if not done[b * chunk : (b + 1) * chunk].all()]


@dataclasses.dataclass
class GenerationReport:
    """What :func:`generate` did: points computed in this run, points whose solve had failed
    halos (all rows of the store), wall time [s], devices or workers used, and the damaged
    chunks that a resumed run found and recomputed (one line each)."""

    path: str
    n_points: int
    computed: int
    failed_points: int
    failed_halos: int
    seconds: float
    backend: str
    workers: int
    repaired: list[str] = dataclasses.field(default_factory=list)

    @property
    def points_per_hour(self) -> float:
        return 3600.0 * self.computed / self.seconds if self.seconds > 0 else float("nan")


def resolve_devices(devices: str | int | None) -> list:
    """``"all"``/None: every local device; an integer n: the first n (error if fewer)."""
    available = jax.local_devices()
    if devices in (None, "all"):
        return available
    n = int(devices)
    if not 1 <= n <= len(available):
        raise ValueError(f"--devices {n}: this process sees {len(available)} device(s) ({available[0].platform})")
    return available[:n]


def recorded_design(attrs: dict[str, Any]) -> np.ndarray | None:
    """The design (N, 8) a store's ``design`` attribute describes, redrawn from its batches
    (a seeded Latin hypercube, then its seeded extensions); None when a batch came from a
    table, which cannot be redrawn."""
    prior = Prior(**{k: tuple(v) for k, v in attrs["prior"].items()})
    theta = np.zeros((0, len(prior.names)))
    for batch in attrs["design"]["batches"]:
        if batch["kind"] == "latin_hypercube":
            new = latin_hypercube_design(prior, int(batch["n_points"]), batch["seed"])
        elif batch["kind"] == "latin_hypercube_extension":
            new = extend_design(prior, theta, int(batch["n_points"]), batch["seed"])
        elif "theta" in batch:  # a block appended with its rows recorded (append_design)
            new = np.asarray(batch["theta"], np.float64).reshape(-1, len(prior.names))
        else:
            return None
        theta = np.concatenate([theta, new])
    return theta


def stored_design(path, root, damage: list[store_module.ChunkDamage]) -> np.ndarray:
    """The store's design (N, 8): its ``theta`` rows, with the rows of damaged ``theta``
    chunks redrawn by :func:`recorded_design` (which must reproduce the intact rows exactly).
    Raises :class:`~training_sets.store.StoreError` if they cannot be redrawn."""
    bad = [d for d in damage if d.array == "theta"]
    if not bad:
        return store_module.read_rows(root, "theta")
    redrawn = recorded_design(dict(root.attrs))
    if redrawn is None or redrawn.shape[0] != root["theta"].shape[0]:
        raise store_module.StoreError(
            f"{path}: {bad[0].describe()}, and its design came from a table, which cannot be redrawn: "
            "regenerate the store from the table"
        )
    intact = np.ones(redrawn.shape[0], bool)
    for d in bad:
        intact[d.rows[0] : d.rows[1]] = False
    for start in range(0, redrawn.shape[0], root["theta"].chunks[0]):
        rows = slice(start, start + root["theta"].chunks[0])
        if intact[rows].all() and not np.array_equal(store_module.read_rows(root, "theta", rows), redrawn[rows]):
            raise store_module.StoreError(
                f"{path}: theta is damaged and its recorded design does not reproduce the intact rows"
            )
    return redrawn


def repair_store(path, damage: list[store_module.ChunkDamage], theta: np.ndarray, halos: HaloPopulation) -> None:
    """Undo ``damage`` (from :func:`~training_sets.store.scan_chunks`) so that a resumed run
    recomputes it: damaged chunk files are removed, ``theta`` rows are rewritten from the
    design ``theta`` (N, 8), ``halos/`` arrays from ``halos`` (whose fingerprint the store
    records), and the rows of every other damaged chunk are marked not done."""
    root = store_module.open_group(path, mode="r+")
    directory = store_module.group_path(root)
    for d in damage:
        chunk_file = directory / root[d.array].path / d.key
        if chunk_file.exists():
            chunk_file.unlink()
    arrays = store_module.halo_arrays(halos)
    for d in damage:
        if d.array == "theta":
            store_module.writable(root, "theta")[d.rows[0] : d.rows[1]] = theta[d.rows[0] : d.rows[1]]
        elif d.array.startswith("halos/"):
            name = d.array.split("/", 1)[1]
            store_module.writable(root["halos"], name)[...] = arrays[name]
        else:
            store_module.writable(root, "done")[d.rows[0] : d.rows[1]] = False


def prepare_store(
    path: str | os.PathLike,
    *,
    n_points: int | None,
    seed: int,
    model: Model,
    halos: HaloPopulation,
    observations: Observations,
    chunk: int,
    save_states: bool = False,
    design_table: np.ndarray | None = None,
    resume: bool = False,
    jacobian: bool = True,
) -> tuple[Path, list[store_module.ChunkDamage]]:
    """Create the store (design drawn from ``seed``, or ``design_table``), or with ``resume``
    reopen an existing one after checking it was made with the same settings and, when a
    design is given (``n_points`` or ``design_table``), the same design; without one, the
    store's own design is continued (``sapphire generate ts.zarr --resume``, ``--extend``).
    Resuming reads every chunk (:func:`~training_sets.store.scan_chunks`) and, once every
    check has passed, :func:`repair_store` s the damage, whose rows the run then recomputes.
    ``jacobian=False``: a new store's design block is recorded as value-only (no Jacobians).
    Returns the path and the damaged chunks found."""
    path = Path(path)
    theta = design = None
    if design_table is not None:
        theta, design = np.asarray(design_table, float), {"kind": "table", "seed": None}
    elif n_points is not None:
        theta, design = (
            latin_hypercube_design(model.prior, n_points, seed),
            {"kind": "latin_hypercube", "seed": int(seed)},
        )
    elif not (resume and path.exists()):
        raise ValueError("give the number of design points (--points) or a design table")
    if not path.exists():
        if not jacobian:
            design = dict(design, jacobian=False)
        store_module.create_store(
            path, theta, model, halos, observations, design=design, chunk=chunk, save_states=save_states
        )
        return path, []
    if not resume:
        raise FileExistsError(f"{path} already exists; add --resume to finish it, or choose another path")
    root = store_module.open_group(path)
    store_module.check_identity(
        path, dict(root.attrs), store_module.store_identity(model, halos, observations, chunk, save_states)
    )
    damage = store_module.scan_chunks(root)
    stored = stored_design(path, root, damage)
    if theta is not None:
        first = root.attrs["design"]["batches"][0]
        if (
            first.get("kind") != design["kind"]
            or first.get("seed") != design["seed"]
            or not np.array_equal(stored[: theta.shape[0]], theta)
        ):
            raise store_module.StoreError(
                f"{path} holds another design (kind {first.get('kind')}, seed {first.get('seed')}, "
                f"{stored.shape[0]} points) than requested (kind {design['kind']}, seed {design['seed']}, {theta.shape[0]} points)"
            )
    if damage:  # every check passed: only now write
        repair_store(path, damage, stored, halos)
    return path, damage


def extend_store(
    path: str | os.PathLike, n_new: int, seed: int, *, expected: dict[str, Any] | None = None, jacobian: bool = True
) -> int:
    """Append ``n_new`` design points (a Latin hypercube that avoids the existing points,
    :func:`~training_sets.design.extend_design`) to a store, not yet computed; returns the new
    number of points.  Run ``generate(..., resume=True)`` afterwards to compute them.
    ``expected`` (:func:`~training_sets.store.store_identity` of the run that will compute
    them): checked, like the design, before anything is written, so a refused extension
    leaves the store as it was.  ``jacobian=False``: the new points are value-only."""
    if isinstance(n_new, bool) or int(n_new) != n_new or n_new < 1:
        raise ValueError(f"the number of points to add (--extend) must be a positive integer, got {n_new!r}")
    root = store_module.open_group(path)
    attrs = dict(root.attrs)
    if expected is not None:
        store_module.check_identity(path, attrs, expected)
    prior = Prior(**{k: tuple(v) for k, v in attrs["prior"].items()})
    old = stored_design(path, root, [d for d in store_module.scan_chunks(root) if d.array == "theta"])
    new = extend_design(prior, old, int(n_new), seed)
    n = old.shape[0] + new.shape[0]
    root = store_module.open_group(path, mode="r+")  # every check passed: only now write
    for name in root.array_keys():
        arr = root[name]
        arr.resize((n,) + arr.shape[1:])
    store_module.writable(root, "theta")[old.shape[0] :] = new
    extension = {"kind": "latin_hypercube_extension", "seed": int(seed), "n_points": int(n_new)}
    if not jacobian:
        extension["jacobian"] = False  # value-only points
    batches = list(attrs["design"]["batches"]) + [extension]
    root.attrs["design"] = {"batches": batches}
    return n


def append_design(
    path: str | os.PathLike, theta: np.ndarray, batch: dict[str, Any], *, expected: dict[str, Any] | None = None
) -> tuple[int, int]:
    """Append the design points ``theta`` (n, 8) to a store as a block of their own, not yet
    computed; returns the rows ``(start, stop)`` they occupy.  Run ``generate(..., resume=True)``
    afterwards to compute them.

    ``batch`` describes the block (JSON-ready: e.g. ``{"kind": "refine", "wave": 2, "seed": 7,
    "proposal": {...}}``); it is recorded in the store's ``design`` attribute together with
    ``n_points`` and the rows themselves (``theta``), so a damaged ``theta`` chunk can be
    redrawn (:func:`recorded_design`).  Idempotent, for resumable callers: if the store's last
    block is already this one (same ``batch`` and rows) nothing is written and its rows are
    returned.  A store whose arrays are longer than its recorded blocks (an append killed
    between the resize and the attribute write) is cut back to its recorded rows first.
    ``expected`` (:func:`~training_sets.store.store_identity`): checked before anything is
    written."""
    from sapphire.jsonio import json_ready

    root = store_module.open_group(path)
    attrs = dict(root.attrs)
    if expected is not None:
        store_module.check_identity(path, attrs, expected)
    prior = Prior(**{k: tuple(v) for k, v in attrs["prior"].items()})
    theta = prior.validate(np.atleast_2d(np.asarray(theta, np.float64)))
    if theta.shape[0] < 1:
        raise ValueError("append_design: no design points to append")
    record = json_ready(dict(batch, n_points=int(theta.shape[0]), theta=theta.tolist()))
    batches = list(attrs["design"]["batches"])
    recorded = sum(int(b["n_points"]) for b in batches)
    if batches and json_ready(batches[-1]) == record:
        return recorded - theta.shape[0], recorded
    root = store_module.open_group(path, mode="r+")  # every check passed: only now write
    n_old = root["theta"].shape[0]
    if n_old != recorded:  # an interrupted append: forget its rows
        for name in root.array_keys():
            root[name].resize((recorded,) + root[name].shape[1:])
    n = recorded + theta.shape[0]
    for name in root.array_keys():
        arr = root[name]
        arr.resize((n,) + arr.shape[1:])
    store_module.writable(root, "theta")[recorded:] = theta
    root.attrs["design"] = {"batches": batches + [record]}
    return recorded, n


def _progress(total: int, description: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="pt", disable=not enabled, smoothing=0.1, dynamic_ncols=True)


def _record_history(root, entry: dict[str, Any]) -> None:
    """Append a run to the store's ``history`` attribute (not part of its content digest)."""
    root.attrs["history"] = list(root.attrs.get("history", [])) + [entry]


def generate(
    path: str | os.PathLike,
    *,
    n_points: int | None = None,
    n_halos: int = 128,
    seed: int = 0,
    halo_seed: int = 0,
    halos: HaloPopulation | None = None,
    model: Model | None = None,
    observations: Observations | None = None,
    chunk: int = 8,
    save_states: bool = False,
    design_table: np.ndarray | None = None,
    resume: bool = False,
    devices: str | int | None = "all",
    scheduler: str | Any | None = None,
    batch_points: bool = False,
    progress: bool = True,
    on_block: Callable[[int], None] | None = None,
    jacobian: bool = True,
) -> GenerationReport:
    """Build (or, with ``resume``, finish) the training set at ``path``.

    Design: ``n_points`` of a Latin hypercube seeded by ``seed`` (or ``design_table``).  Halos:
    ``halos`` or ``HaloPopulation.from_diffmah(n_halos, seed=halo_seed)``.  Blocks of
    ``chunk`` points are evaluated on ``devices`` (``"all"`` local devices, or a count), or,
    with ``scheduler`` (a ``tcp://`` address or a ``distributed.Client``), by Dask workers
    that each write their own blocks.  ``batch_points``: evaluate each block's points as one
    flat batch of (point, halo) lanes (:func:`~training_sets.evaluate.block_outputs`; for GPUs,
    speed in docs/training_sets.md), agreeing with the default
    evaluation to the solver tolerance, not bit for bit (recorded in the store's history).
    ``on_block(block)`` is called after each block is written (tests use it).  ``jacobian=False``:
    a new store's points are value-only (summaries and standard errors from the plain solve,
    Jacobian rows NaN; a Jacobian costs ~6x a solve on a CPU); in any store a block is evaluated
    value-only when every row of it belongs to a design block recorded so
    (:func:`~training_sets.store.jacobian_rows`).  With ``resume``,
    damaged or missing chunks are found first and their rows recomputed (:func:`prepare_store`),
    so the finished store is bit-identical to an uninterrupted run.  Returns a
    :class:`GenerationReport`.
    """
    model = model or Model()
    observations = observations or Observations.default()
    if halos is None:
        halos = HaloPopulation.from_diffmah(n_halos, seed=halo_seed, config=model.config)
    path, damage = prepare_store(
        path,
        n_points=n_points,
        seed=seed,
        model=model,
        halos=halos,
        observations=observations,
        chunk=chunk,
        save_states=save_states,
        design_table=design_table,
        resume=resume,
        jacobian=jacobian,
    )
    root = store_module.open_group(path, mode="r+")
    todo = pending_blocks(root)
    with_jacobian = store_module.jacobian_rows(dict(root.attrs), root["theta"].shape[0])
    n_total = root["theta"].shape[0]
    todo_points = sum(min(chunk, n_total - b * chunk) for b in todo)
    started = time.perf_counter()
    entry = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "sapphire_version": sapphire.__version__,
        "jax_version": jax.__version__,
        "resumed": bool(resume),
        "blocks": len(todo),
        "batch_points": bool(batch_points),
    }
    if damage:
        entry["repaired"] = [d.describe() for d in damage]
    _record_history(root, dict(entry, finished=None))  # a killed run leaves its trace
    if scheduler is not None:
        if not with_jacobian.all():
            raise ValueError("value-only design points (--no-jacobian) are computed locally, not by Dask workers")
        bar = _progress(todo_points, "design points", progress)
        entry["backend"], workers = "dask", run_on_dask(path, todo, scheduler, bar, on_block, batch_points)
    else:
        device_list = resolve_devices(devices)
        entry["backend"], workers = f"{device_list[0].platform} x{len(device_list)}", len(device_list)
        evaluator = Evaluator(model, halos, observations, save_states, device_list, batch_points)
        chunk_rows = int(root.attrs["chunk"])
        block_jacobian = {b: bool(with_jacobian[b * chunk_rows : (b + 1) * chunk_rows].any()) for b in todo}
        _run_local(root, evaluator, todo, _progress(todo_points, "design points", progress), on_block, block_jacobian)
    seconds = time.perf_counter() - started
    n_failed = store_module.read_rows(root, "n_failed")
    entry.update(
        finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        seconds=round(seconds, 3),
        points=todo_points,
        workers=workers,
    )
    root.attrs["history"] = list(root.attrs["history"])[:-1] + [entry]
    return GenerationReport(
        path=str(path),
        n_points=n_total,
        computed=todo_points,
        failed_points=int(np.sum(n_failed > 0)),
        failed_halos=int(np.sum(np.maximum(n_failed, 0))),
        seconds=seconds,
        backend=entry["backend"],
        workers=workers,
        repaired=[d.describe() for d in damage],
    )


def _run_local(root, evaluator: Evaluator, todo: list[int], bar, on_block, block_jacobian=None) -> None:
    """Round robin: queue one block per device, then collect and write them in order.
    ``block_jacobian``: block -> evaluate with Jacobians (default all)."""
    block_jacobian = block_jacobian or {}
    from concurrent.futures import ThreadPoolExecutor

    devices = evaluator.devices
    with bar, ThreadPoolExecutor(max_workers=len(devices)) as pool:
        for start in range(0, len(todo), len(devices)):
            wave = todo[start : start + len(devices)]
            # Dispatching from one thread per device lets the first wave's per-device
            # compilations run concurrently; later dispatches return at once.
            futures = [
                pool.submit(evaluator.dispatch, block_theta(root, b), d, block_jacobian.get(b, True))
                for b, d in zip(wave, devices)
            ]
            queued = [(b, f.result()) for b, f in zip(wave, futures)]
            for block, pending in queued:
                rows = evaluator.collect(pending)
                write_block(root, block, rows)
                bar.update(rows["n_failed"].shape[0])
                if on_block is not None:
                    on_block(block)
