"""Beyond one node: evaluate blocks on Dask workers, each writing its own Zarr regions.

The driver submits one task per pending block (``distributed.Client.submit``) and only
watches completions; a worker opens the store, rebuilds the model and halo population from
its attributes (cached per worker process, so each worker compiles once), evaluates the
block with the same compiled function as the local backend and writes the block's rows and
then its ``done`` flags.  Blocks are disjoint Zarr chunks, so workers never write the same
file.  The store must live on a file system every worker sees.

On a SLURM cluster, start workers with dask-jobqueue and pass the scheduler's address::

    from dask_jobqueue import SLURMCluster
    cluster = SLURMCluster(cores=1, processes=1, memory="8GB", walltime="04:00:00",
                           job_extra_directives=["--gres=gpu:1"])
    cluster.scale(jobs=16)
    # sapphire generate /shared/ts.zarr --points 10000 --halos 1000 --scheduler <cluster.scheduler_address>
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import store as store_module
from .evaluate import Evaluator, block_theta, model_from_attrs, write_block


@functools.lru_cache(maxsize=4)
def _worker_evaluator(path: str, batch_points: bool = False):
    """(group, Evaluator) for a store, built once per worker process."""
    import jax

    from sapphire.observations import Observations

    root = store_module.open_group(path, mode="r+")
    attrs = dict(root.attrs)
    evaluator = Evaluator(
        model=model_from_attrs(attrs),
        halos=store_module.read_halos(root),
        observations=Observations.from_dict(attrs["observations"]),
        save_states=bool(attrs["save_states"]),
        devices=jax.local_devices()[:1],
        batch_points=batch_points,
    )
    return root, evaluator


def compute_block(path: str, block: int, batch_points: bool = False) -> dict[str, Any]:
    """Dask task: evaluate and write one block of a store; returns its size, failures and
    seconds."""
    started = time.perf_counter()
    root, evaluator = _worker_evaluator(str(Path(path).resolve()), batch_points)
    rows = evaluator.evaluate(block_theta(root, block))
    write_block(root, block, rows)
    return {
        "block": block,
        "points": int(rows["n_failed"].shape[0]),
        "failed_points": int(np.sum(rows["n_failed"] > 0)),
        "seconds": time.perf_counter() - started,
    }


def run_on_dask(
    path, todo: list[int], scheduler, bar, on_block: Callable[[int], None] | None, batch_points: bool = False
) -> int:
    """Run the pending ``todo`` blocks on the cluster at ``scheduler`` (address or Client);
    returns the number of workers.  A task that raises stops the run with that error (rows of
    other blocks already written stay valid; ``--resume`` continues)."""
    from distributed import Client, as_completed

    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        n_workers = len(client.scheduler_info().get("workers", {}))
        futures = [client.submit(compute_block, str(Path(path).resolve()), b, batch_points, pure=False) for b in todo]
        with bar:
            for future in as_completed(futures):
                result = future.result()
                bar.update(result["points"])
                if on_block is not None:
                    on_block(result["block"])
        return n_workers
    finally:
        if client is not scheduler:
            client.close()
