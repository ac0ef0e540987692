"""Evaluate blocks of design points: the one compiled function per design point (or per block
of points, for accelerators) that every backend of :mod:`training_sets.generate` and
:mod:`training_sets.distributed` shares, and the writing of a block's rows into a store.

Kept apart from :mod:`training_sets.generate` so that the Dask backend
(:mod:`training_sets.distributed`) and the local one import it, one way, without a circle.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sapphire.config import ModelConfig
from sapphire.halos import HaloPopulation
from sapphire.model import Model
from sapphire.observations import Observations
from sapphire.population_summaries import solve_z0, summaries_and_jacobian_from_states, summaries_from_states
from sapphire.prior import Prior
from sapphire.summaries import summary_support

from .store import writable

ROW_ARRAYS = ("summaries", "summary_stderr", "summary_support", "summary_jacobian", "n_failed")


@functools.partial(jax.jit, static_argnames=("settings", "config", "observations", "save_states", "with_jacobian"))
def point_outputs(theta, forcing, settings, config, observations, save_states, with_jacobian=True):
    """One design point: (mean (S,), stderr (S,), support (S,), d mean/d theta (S, 8), n_failed,
    z = 0 log states (H, 7) or None).  ``with_jacobian=False``: a value-only point, the plain solve (no
    sensitivities) and a NaN Jacobian."""
    if not with_jacobian:
        log_mhalo, log_state, success, _ = solve_z0(theta, forcing, settings, config, False)
        mean, stderr = summaries_from_states(log_mhalo, log_state, success, observations, config)
        support = summary_support(log_mhalo, log_state, success, observations, config)
        jac_mean = jnp.full(mean.shape + theta.shape[-1:], jnp.nan)
        n_failed = jnp.sum(~success).astype(jnp.int32)
        return mean, stderr, support, jac_mean, n_failed, (log_state if save_states else None)
    log_mhalo, log_state, success, state_jacobian = solve_z0(theta, forcing, settings, config, True)
    mean, stderr, jac_mean, _ = summaries_and_jacobian_from_states(
        log_mhalo, log_state, success, state_jacobian, observations, config
    )
    support = summary_support(log_mhalo, log_state, success, observations, config)
    n_failed = jnp.sum(~success).astype(jnp.int32)
    return mean, stderr, support, jac_mean, n_failed, (log_state if save_states else None)


@functools.partial(jax.jit, static_argnames=("settings", "config", "observations", "save_states"))
def block_outputs(thetas, forcing, settings, config, observations, save_states):
    """Every design point of a block in one call: the outputs of :func:`point_outputs` with a
    leading point axis, for thetas (n, 8).

    For accelerators, where one point (a few hundred halos) leaves the device mostly idle: the
    n x n_halo (point, halo) pairs are solved as ONE flat batch of lanes, each lane with its own
    theta, so the population solver still sorts lanes by stiffness and picks the solver per
    group (vmapping the per-point function instead would turn that choice into a select that
    runs both solvers, the explicit one to its step cap at stiff points).  The summaries are
    then vmapped over points.  Each lane's solver depends on its own stiffness only, so results
    agree with :func:`point_outputs` to the solver tolerance; not bit for bit, since the
    compiled programs differ and round-off can change an adaptive step sequence
    (tests/test_training_sets.py)."""
    n_points, n_halo = thetas.shape[0], forcing.t_start.shape[0]
    lane_theta = jnp.repeat(thetas, n_halo, axis=0)
    lane_forcing = jax.tree.map(lambda a: jnp.tile(a, (n_points,) + (1,) * (a.ndim - 1)), forcing)
    solved = solve_z0(lane_theta, lane_forcing, settings, config, True)
    log_mhalo, log_state, success, state_jacobian = (a.reshape((n_points, n_halo) + a.shape[1:]) for a in solved)
    mean, stderr, jac_mean, _ = jax.vmap(
        lambda *per_point: summaries_and_jacobian_from_states(*per_point, observations, config)
    )(log_mhalo, log_state, success, state_jacobian)
    support = jax.vmap(lambda *per_point: summary_support(*per_point, observations, config))(
        log_mhalo, log_state, success
    )
    n_failed = jnp.sum(~success, axis=1).astype(jnp.int32)
    return mean, stderr, support, jac_mean, n_failed, (log_state if save_states else None)


@dataclasses.dataclass
class Evaluator:
    """Evaluates blocks of design points for one (model, halos, observations) on a list of
    devices.  ``dispatch`` queues a block on a device and returns at once; ``collect`` waits
    for it and returns numpy rows.  ``batch_points``: one call per block
    (:func:`block_outputs`, for GPUs) instead of one call per point."""

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

    def dispatch(self, theta_block: np.ndarray, device, with_jacobian: bool = True) -> list:
        """Queue a block; ``with_jacobian=False``: value-only points (plain solves, NaN Jacobians;
        one point at a time even with ``batch_points``)."""
        forcing = self._forcing[device]
        static = (self.model.settings, self.model.config, self.observations, self.save_states)
        if not with_jacobian:
            return [
                point_outputs(jax.device_put(jnp.asarray(theta), device), forcing, *static, with_jacobian=False)
                for theta in theta_block
            ]
        if self.batch_points:
            return [block_outputs(jax.device_put(jnp.asarray(theta_block), device), forcing, *static)]
        return [point_outputs(jax.device_put(jnp.asarray(theta), device), forcing, *static) for theta in theta_block]

    def collect(self, pending: list) -> dict[str, np.ndarray]:
        """Rows of one block from ``dispatch``'s per-point results (or its one batched result)."""
        if len(pending) == 1 and pending[0][0].ndim == 2:  # block_outputs' one batched result
            mean, stderr, support, jac, n_failed, states = pending[0]
        else:
            mean, stderr, support, jac, n_failed, states = (
                None if column[0] is None else jnp.stack(column) for column in zip(*pending)
            )
        rows = {
            "summaries": np.asarray(mean),
            "summary_stderr": np.asarray(stderr),
            "summary_support": np.asarray(support),
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
        writable(root, name)[start:stop] = values
    writable(root, "done")[start:stop] = True


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


def block_theta(root, block: int) -> np.ndarray:
    """The design points (n, 8) of block ``block`` of a store's group (n = chunk, or fewer in the last block)."""
    chunk = int(root.attrs["chunk"])
    return np.asarray(root["theta"][block * chunk : (block + 1) * chunk])
