"""Fill a training-set store: summaries, standard errors and exact summary Jacobians per
design point, block by block, over every local device (or Dask workers), resumably.

Work unit = one block of ``chunk`` consecutive design points (= one Zarr chunk of every
array).  Each point is evaluated by ONE compiled function (:func:`_point_outputs`: the
population solve with forward sensitivities, then the kernel regressions and their Jacobian)
with fixed shapes, whatever the backend.  Several devices are used by placing whole blocks on
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
import functools
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import sapphire
from sapphire.config import ModelConfig
from sapphire.halos import HaloPopulation
from sapphire.population_summaries import solve_z0, summaries_and_jacobian_from_states
from sapphire.model import Model
from sapphire.observations import Observations
from sapphire.prior import Prior

from . import store as store_module
from .design import extend_design, latin_hypercube_design

ROW_ARRAYS = ("summaries", "summary_stderr", "summary_jacobian", "n_failed")


@functools.partial(jax.jit, static_argnames=("settings", "config", "observations", "save_states"))
def _point_outputs(theta, forcing, settings, config, observations, save_states):
    """One design point: (mean (S,), stderr (S,), d mean/d theta (S, 8), n_failed, z = 0 log
    states (H, 7) or None)."""
    log_mhalo, log_state, success, state_jacobian = solve_z0(theta, forcing, settings, config, True)
    mean, stderr, jac_mean, _ = summaries_and_jacobian_from_states(
        log_mhalo, log_state, success, state_jacobian, observations, config
    )
    n_failed = jnp.sum(~success).astype(jnp.int32)
    return mean, stderr, jac_mean, n_failed, (log_state if save_states else None)


@functools.partial(jax.jit, static_argnames=("settings", "config", "observations", "save_states"))
def _block_outputs(thetas, forcing, settings, config, observations, save_states):
    """Every design point of a block in one call: the outputs of :func:`_point_outputs` with a
    leading point axis, for thetas (n, 8).

    For accelerators, where one point (a few hundred halos) leaves the device mostly idle: the
    n x n_halo (point, halo) pairs are solved as ONE flat batch of lanes, each lane with its own
    theta, so the population solver still sorts lanes by stiffness and picks the solver per
    group (vmapping the per-point function instead would turn that choice into a select that
    runs both solvers, the explicit one to its step cap at stiff points).  The summaries are
    then vmapped over points.  Results agree with :func:`_point_outputs` to the solver
    tolerance, not bit for bit: a lane can land in a group with another solver, and round-off
    can change an adaptive step sequence (tests/test_training_sets.py)."""
    n_points, n_halo = thetas.shape[0], forcing.t_start.shape[0]
    lane_theta = jnp.repeat(thetas, n_halo, axis=0)
    lane_forcing = jax.tree.map(lambda a: jnp.tile(a, (n_points,) + (1,) * (a.ndim - 1)), forcing)
    solved = solve_z0(lane_theta, lane_forcing, settings, config, True)
    log_mhalo, log_state, success, state_jacobian = (a.reshape((n_points, n_halo) + a.shape[1:]) for a in solved)
    mean, stderr, jac_mean, _ = jax.vmap(
        lambda *per_point: summaries_and_jacobian_from_states(*per_point, observations, config)
    )(log_mhalo, log_state, success, state_jacobian)
    n_failed = jnp.sum(~success, axis=1).astype(jnp.int32)
    return mean, stderr, jac_mean, n_failed, (log_state if save_states else None)


@dataclasses.dataclass
class Evaluator:
    """Evaluates blocks of design points for one (model, halos, observations) on a list of
    devices.  ``dispatch`` queues a block on a device and returns at once; ``collect`` waits
    for it and returns numpy rows.  ``batch_points``: one call per block
    (:func:`_block_outputs`, for GPUs) instead of one call per point."""

    model: Model
    halos: HaloPopulation
    observations: Observations
    save_states: bool = False
    devices: Sequence[Any] = ()
    batch_points: bool = False

    def __post_init__(self) -> None:
        self.devices = list(self.devices) or jax.local_devices()[:1]
        forcing = self.halos.forcing()
        self._forcing = {d: jax.device_put(forcing, d) for d in self.devices}

    def dispatch(self, theta_block: np.ndarray, device) -> list:
        forcing = self._forcing[device]
        static = (self.model.settings, self.model.config, self.observations, self.save_states)
        if self.batch_points:
            return [_block_outputs(jax.device_put(jnp.asarray(theta_block), device), forcing, *static)]
        return [
            _point_outputs(jax.device_put(jnp.asarray(theta), device), forcing, *static)
            for theta in theta_block
        ]

    def collect(self, pending: list) -> dict[str, np.ndarray]:
        """Rows of one block from ``dispatch``'s per-point results (or its one batched result)."""
        if self.batch_points:
            mean, stderr, jac, n_failed, states = pending[0]
        else:
            mean, stderr, jac, n_failed, states = (
                None if column[0] is None else jnp.stack(column) for column in zip(*pending)
            )
        rows = {
            "summaries": np.asarray(mean),
            "summary_stderr": np.asarray(stderr),
            "summary_jacobian": np.asarray(jac),
            "n_failed": np.asarray(n_failed, dtype=np.int32),
        }
        if self.save_states:
            rows["halo_log_state"] = np.asarray(states)
        return rows

    def evaluate(self, theta_block: np.ndarray) -> dict[str, np.ndarray]:
        """Synchronous evaluation of one block on the first device (raw engine timing)."""
        return self.collect(self.dispatch(theta_block, self.devices[0]))


def write_block(root, block: int, rows: dict[str, np.ndarray]) -> None:
    """Write one block's rows into its own region of every array, then its ``done`` flags.
    Each Zarr chunk file is replaced atomically, so a kill leaves the block either complete
    or not done."""
    chunk = int(root.attrs["chunk"])
    start = block * chunk
    stop = start + rows["n_failed"].shape[0]
    for name, values in rows.items():
        root[name][start:stop] = values
    root["done"][start:stop] = True


def model_from_attrs(attrs: dict[str, Any]) -> Model:
    """Rebuild the :class:`Model` recorded in a store's attributes (model constants, solver
    settings, prior box)."""
    solver = dict(attrs["solver"])
    return Model(
        config=ModelConfig.from_dict(attrs["model_config"]),
        solver=solver.pop("solver"),
        rtol=solver.pop("rtol"),
        atol=solver.pop("atol"),
        max_steps=solver.pop("max_steps"),
        prior=Prior(**{k: tuple(v) for k, v in attrs["prior"].items()}),
        **solver,
    )


def pending_blocks(root) -> list[int]:
    """Blocks holding at least one row that is not done (such a block is recomputed whole)."""
    done = np.asarray(root["done"][...])
    chunk = int(root.attrs["chunk"])
    n_blocks = -(-done.size // chunk)
    return [b for b in range(n_blocks) if not done[b * chunk : (b + 1) * chunk].all()]


def _block_theta(root, block: int) -> np.ndarray:
    chunk = int(root.attrs["chunk"])
    return np.asarray(root["theta"][block * chunk : (block + 1) * chunk])


@dataclasses.dataclass
class GenerationReport:
    """What :func:`generate` did: points computed in this run, points whose solve had failed
    halos (all rows of the store), wall time [s], devices or workers used."""

    path: str
    n_points: int
    computed: int
    failed_points: int
    failed_halos: int
    seconds: float
    backend: str
    workers: int

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
) -> Path:
    """Create the store (design drawn from ``seed``, or ``design_table``), or with ``resume``
    reopen an existing one after checking it was made with the same settings and, when a
    design is given (``n_points`` or ``design_table``), the same design; without one, the
    store's own design is continued (``sapphire generate ts.zarr --resume``, ``--extend``)."""
    path = Path(path)
    theta = design = None
    if design_table is not None:
        theta, design = np.asarray(design_table, float), {"kind": "table", "seed": None}
    elif n_points is not None:
        theta, design = latin_hypercube_design(model.prior, n_points, seed), {"kind": "latin_hypercube", "seed": int(seed)}
    elif not (resume and path.exists()):
        raise ValueError("give the number of design points (--points) or a design table")
    if path.exists():
        if not resume:
            raise FileExistsError(f"{path} already exists; add --resume to finish it, or choose another path")
        root = store_module.open_group(path)
        store_module.check_identity(path, dict(root.attrs), store_module.store_identity(model, halos, observations, chunk, save_states))
        if theta is None:  # no design given: continue the store's own
            return path
        first = root.attrs["design"]["batches"][0]
        stored = np.asarray(root["theta"][: theta.shape[0]])
        if first.get("kind") != design["kind"] or first.get("seed") != design["seed"] or not np.array_equal(stored, theta):
            raise store_module.StoreError(
                f"{path} holds another design (kind {first.get('kind')}, seed {first.get('seed')}, "
                f"{root['theta'].shape[0]} points) than requested (kind {design['kind']}, seed {design['seed']}, {theta.shape[0]} points)"
            )
        return path
    return store_module.create_store(
        path, theta, model, halos, observations, design=design, chunk=chunk, save_states=save_states
    )


def extend_store(path: str | os.PathLike, n_new: int, seed: int) -> int:
    """Append ``n_new`` design points (a Latin hypercube that avoids the existing points,
    :func:`~training_sets.design.extend_design`) to a store, not yet computed; returns the new
    number of points.  Run ``generate(..., resume=True)`` afterwards to compute them."""
    root = store_module.open_group(path, mode="r+")
    attrs = dict(root.attrs)
    prior = Prior(**{k: tuple(v) for k, v in attrs["prior"].items()})
    old = np.asarray(root["theta"][...])
    new = extend_design(prior, old, n_new, seed)
    n = old.shape[0] + new.shape[0]
    names = [k for k in root.array_keys()]
    for name in names:
        arr = root[name]
        arr.resize((n,) + arr.shape[1:])
    root["theta"][old.shape[0] :] = new
    batches = list(attrs["design"]["batches"]) + [{"kind": "latin_hypercube_extension", "seed": int(seed), "n_points": int(n_new)}]
    root.attrs["design"] = {"batches": batches}
    return n


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
) -> GenerationReport:
    """Build (or, with ``resume``, finish) the training set at ``path``.

    Design: ``n_points`` of a Latin hypercube seeded by ``seed`` (or ``design_table``).  Halos:
    ``halos`` or ``HaloPopulation.from_diffmah(n_halos, seed=halo_seed)``.  Blocks of
    ``chunk`` points are evaluated on ``devices`` (``"all"`` local devices, or a count), or,
    with ``scheduler`` (a ``tcp://`` address or a ``distributed.Client``), by Dask workers
    that each write their own blocks.  ``batch_points``: evaluate each block's points as one
    flat batch of (point, halo) lanes (:func:`_block_outputs`; one H200: 1,600 points x 512
    halos in 79 s; one CPU device: 1.07x faster than point by point), agreeing with the default
    evaluation to the solver tolerance, not bit for bit (recorded in the store's history).
    ``on_block(block)`` is called after each block is written (tests use it).  Returns a
    :class:`GenerationReport`.
    """
    model = model or Model()
    observations = observations or Observations.default()
    if halos is None:
        halos = HaloPopulation.from_diffmah(n_halos, seed=halo_seed, config=model.config)
    path = prepare_store(
        path, n_points=n_points, seed=seed, model=model, halos=halos, observations=observations,
        chunk=chunk, save_states=save_states, design_table=design_table, resume=resume,
    )
    root = store_module.open_group(path, mode="r+")
    todo = pending_blocks(root)
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
    _record_history(root, dict(entry, finished=None))  # a killed run leaves its trace
    if scheduler is not None:
        from .distributed import run_on_dask

        bar = _progress(todo_points, "design points", progress)
        entry["backend"], workers = "dask", run_on_dask(path, todo, scheduler, bar, on_block, batch_points)
    else:
        device_list = resolve_devices(devices)
        entry["backend"], workers = f"{device_list[0].platform} x{len(device_list)}", len(device_list)
        evaluator = Evaluator(model, halos, observations, save_states, device_list, batch_points)
        _run_local(root, evaluator, todo, _progress(todo_points, "design points", progress), on_block)
    seconds = time.perf_counter() - started
    n_failed = np.asarray(root["n_failed"][...])
    entry.update(
        finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        seconds=round(seconds, 3), points=todo_points, workers=workers,
    )
    root.attrs["history"] = list(root.attrs["history"])[:-1] + [entry]
    return GenerationReport(
        path=str(path), n_points=n_total, computed=todo_points, failed_points=int(np.sum(n_failed > 0)),
        failed_halos=int(np.sum(np.maximum(n_failed, 0))), seconds=seconds, backend=entry["backend"], workers=workers,
    )


def _run_local(root, evaluator: Evaluator, todo: list[int], bar, on_block) -> None:
    """Round robin: queue one block per device, then collect and write them in order."""
    from concurrent.futures import ThreadPoolExecutor

    devices = evaluator.devices
    with bar, ThreadPoolExecutor(max_workers=len(devices)) as pool:
        for start in range(0, len(todo), len(devices)):
            wave = todo[start : start + len(devices)]
            # Dispatching from one thread per device lets the first wave's per-device
            # compilations run concurrently; later dispatches return at once.
            futures = [pool.submit(evaluator.dispatch, _block_theta(root, b), d) for b, d in zip(wave, devices)]
            queued = [(b, f.result()) for b, f in zip(wave, futures)]
            for block, pending in queued:
                rows = evaluator.collect(pending)
                write_block(root, block, rows)
                bar.update(rows["n_failed"].shape[0])
                if on_block is not None:
                    on_block(block)
