"""Kernel-regression summaries of an evolved population, and their exact Jacobians.

The solve (:func:`sapphire.evolution.evolve_population`) at z = 0, chained into the kernel
regression (:func:`sapphire.summaries.summary_statistics`).  ``Model.summaries``,
``Model.summary_jacobian`` and ``Model.summaries_with_jacobian`` call :func:`model_summaries`,
:func:`model_summary_jacobian` and :func:`model_summaries_with_jacobian`; the likelihood
(:mod:`sapphire.likelihood`) and the training sets use the pieces below.  Order of the summary
vector, failed halos and derivatives: :mod:`sapphire.likelihood`'s docstring.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .config import ModelConfig
from .evolution import at_z0, evolve_population
from .halos import HaloPopulation
from .observations import Observations
from .solve import SolverSettings
from .summaries import MIN_SUPPORT, count_poorly_supported, summary_statistics, summary_support

__all__ = [
    "Summaries",
    "summary_names",
    "check_observations",
    "summaries_from_states",
    "summaries_and_jacobian_from_states",
    "summaries_and_jacobian_from_solve",
    "solve_z0",
    "solve_placed",
    "summaries_and_jacobian",
    "placed_summaries",
    "placed_summaries_and_jacobian",
    "differentiable_summaries",
    "SummaryKernel",
    "model_summaries",
    "model_summaries_with_jacobian",
    "model_summary_jacobian",
]


class Summaries(NamedTuple):
    """What ``Model.summaries`` returns.

    Attributes:
        mean: (n_summary,) kernel-regression means [dex, or 12 + log(O/H)], in the order of
            ``names`` (module docstring).
        stderr: (n_summary,) their standard errors (statistical, plus a term that grows as the
            support vanishes; :func:`sapphire.summaries.kernel_regression`).
        n_failed: number of halos whose solve failed (excluded from the regressions).
        names: (n_summary,) ``"<relation>@<x>"``, e.g. ``"smhm@10.25"``, ``"mzr@8.5"``.
        success: (n_halo,) bool, per halo.
        support: (n_summary,) effective number of halos at each centre
            (:attr:`sapphire.summaries.KernelRegression.support`); below ``MIN_SUPPORT`` a
            summary is poorly supported and its stderr is inflated.
    """

    mean: jax.Array
    stderr: jax.Array
    n_failed: int
    names: tuple[str, ...]
    success: jax.Array
    support: jax.Array | None = None

    @property
    def poorly_supported(self) -> tuple[str, ...]:
        """Names of the summaries whose support is below ``MIN_SUPPORT``."""
        if self.support is None:
            return ()
        support = np.asarray(self.support)
        return tuple(name for name, value in zip(self.names, support) if not value >= MIN_SUPPORT)

    @property
    def n_poorly_supported(self) -> int:
        """How many summaries have support below ``MIN_SUPPORT``."""
        return 0 if self.support is None else int(count_poorly_supported(self.support))


def summary_names(obs: Observations) -> tuple[str, ...]:
    """``"<relation>@<x>"`` for every entry of the stacked summary vector of ``obs``."""
    return tuple(f"{rel.name}@{x:g}" for rel in obs.relations for x in rel.x)


def check_observations(obs) -> Observations:
    """``obs`` itself, or ``Observations.default()`` for None; ``ValueError`` for anything else."""
    if obs is None:
        return Observations.default()
    if not isinstance(obs, Observations):
        raise ValueError(f"obs must be a sapphire.Observations, got {type(obs).__name__}")
    return obs


@functools.partial(jax.jit, static_argnames=("observations", "config"))
def summaries_from_states(log_mhalo, log_state, success, observations: Observations, config: ModelConfig):
    return summary_statistics(log_mhalo, log_state, success, observations, config)


@functools.partial(jax.jit, static_argnames=("observations", "config"))
def summaries_and_jacobian_from_states(log_mhalo, log_state, success, state_jacobian, observations, config):
    """(mean, stderr, d mean/d theta, d stderr/d theta): the kernel regression's derivative in
    the log states, contracted with the state Jacobian (n_halo, 7, 8).  Failed halos' rows (NaN)
    are zeroed first: they have zero weight."""
    state_jacobian = jnp.where(success[:, None, None], state_jacobian, 0.0)
    (mean, stderr), linear = jax.linearize(
        lambda ls: summary_statistics(log_mhalo, ls, success, observations, config), log_state
    )
    jac_mean, jac_stderr = jax.vmap(linear, in_axes=2, out_axes=1)(state_jacobian)
    return mean, stderr, jac_mean, jac_stderr


def solve_z0(theta, forcings, settings: SolverSettings, config: ModelConfig, with_jacobian: bool, free=None):
    """z = 0 (log_mhalo (n,), log_state (n, 7), success (n,), jacobian (n, 7, k) or None); ``free``:
    the Jacobian's parameter indices (None: all 8)."""
    return at_z0(evolve_population(theta, forcings, None, settings, config, with_jacobian, free))


def solve_placed(model, theta, halos: HaloPopulation, with_jacobian: bool):
    """:func:`solve_z0` for a concrete theta, placed on the devices by ``Model.evolve_placed``."""
    return at_z0(model.evolve_placed(theta, halos, None, with_jacobian))


def summaries_and_jacobian(theta, forcings, settings, config, observations, free=None):
    """(mean, stderr, success, d mean/d theta (S, k), d stderr/d theta (S, k)) from one
    sensitivity solve of the stacked ``forcings`` (traceable); k = len(free), or 8 if None."""
    solved = solve_z0(theta, forcings, settings, config, True, free)
    return summaries_and_jacobian_from_solve(solved, observations, config)


def summaries_and_jacobian_from_solve(solved, observations, config):
    """:func:`summaries_and_jacobian` from a :func:`solve_z0` result computed with its Jacobian."""
    log_mhalo, log_state, success, jacobian = solved
    mean, stderr, jac_mean, jac_stderr = summaries_and_jacobian_from_states(
        log_mhalo, log_state, success, jacobian, observations, config
    )
    return mean, stderr, success, jac_mean, jac_stderr


def placed_summaries(model, theta, halos, observations):
    """(mean, stderr, success) for a concrete theta (no derivative)."""
    log_mhalo, log_state, success, _ = solve_placed(model, theta, halos, False)
    mean, stderr = summaries_from_states(log_mhalo, log_state, success, observations, model.config)
    return mean, stderr, success


def placed_summaries_and_jacobian(model, theta, halos, observations):
    """:func:`summaries_and_jacobian` for a concrete theta, placed by ``Model.evolve_placed``."""
    solved = solve_placed(model, theta, halos, True)
    return summaries_and_jacobian_from_solve(solved, observations, model.config)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2, 3))
def differentiable_summaries(settings, config, observations, free, theta, forcings):
    """(mean, stderr, success) of the population at theta; differentiable in theta.

    ``free`` (tuple of parameter indices, or None for all 8): the derivative carries only
    these tangents, so the tangent of theta must vanish outside them (:class:`SummaryKernel`
    guarantees it by holding the other parameters constant)."""
    log_mhalo, log_state, success, _ = solve_z0(theta, forcings, settings, config, False)
    mean, stderr = summaries_from_states(log_mhalo, log_state, success, observations, config)
    return mean, stderr, success


@differentiable_summaries.defjvp
def _differentiable_summaries_jvp(settings, config, observations, free, primals, tangents):
    theta, forcings = primals
    theta_dot = tangents[0]  # the halo forcing is not differentiated
    if free is not None:
        theta_dot = theta_dot[np.asarray(free)]
    mean, stderr, success, jac_mean, jac_stderr = summaries_and_jacobian(
        theta, forcings, settings, config, observations, free
    )
    # A summary that is not finite (< 2 valid halos) has no derivative: zero rows, so that a
    # reverse-mode cotangent of 0 there gives 0 rather than 0 * NaN.
    jac_mean = jnp.where(jnp.isfinite(mean)[:, None], jac_mean, 0.0)
    jac_stderr = jnp.where(jnp.isfinite(stderr)[:, None], jac_stderr, 0.0)
    no_tangent = np.zeros(success.shape, dtype=jax.dtypes.float0)
    return (mean, stderr, success), (jac_mean @ theta_dot, jac_stderr @ theta_dot, no_tangent)


@dataclasses.dataclass(frozen=True)
class SummaryKernel:
    """The static part of :func:`sapphire.likelihood.summary_function` (hashable: equal settings, config and
    relation geometry give equal kernels, hence shared jit compilations)."""

    settings: SolverSettings
    config: ModelConfig
    observations: Observations
    #: Parameter indices that are differentiated (None: all 8); the others are held constant
    #: (zero derivative), and the sensitivity solve carries only len(free) tangents.
    free: tuple[int, ...] | None = None

    def __call__(self, forcings, theta):
        theta = jnp.asarray(theta, jnp.float64)
        if self.free is not None:
            index = np.asarray(self.free)
            theta = jax.lax.stop_gradient(theta).at[index].set(theta[index])
        return differentiable_summaries(self.settings, self.config, self.observations, self.free, theta, forcings)


def model_summaries(model, theta, halos, obs) -> Summaries:
    """Implementation of ``Model.summaries`` (primal solve; no derivatives)."""
    obs = check_observations(obs)
    theta = model.check_theta(theta)
    halos = model.check_halos(halos)
    log_mhalo, log_state, success, _ = solve_placed(model, theta, halos, False)
    mean, stderr = summaries_from_states(log_mhalo, log_state, success, obs, model.config)
    return Summaries(
        mean=mean,
        stderr=stderr,
        n_failed=int(np.sum(~np.asarray(success))),
        names=summary_names(obs),
        success=success,
        support=summary_support(log_mhalo, log_state, success, obs, model.config),
    )


def model_summaries_with_jacobian(model, theta, halos, obs) -> tuple[Summaries, jax.Array]:
    """Implementation of ``Model.summaries_with_jacobian``."""
    obs = check_observations(obs)
    theta = model.check_theta(theta)
    halos = model.check_halos(halos)
    solved = solve_placed(model, theta, halos, True)
    mean, stderr, success, jac_mean, _ = summaries_and_jacobian_from_solve(solved, obs, model.config)
    summaries = Summaries(
        mean=mean,
        stderr=stderr,
        n_failed=int(np.sum(~np.asarray(success))),
        names=summary_names(obs),
        success=success,
        support=summary_support(solved[0], solved[1], success, obs, model.config),
    )
    return summaries, jac_mean


def model_summary_jacobian(model, theta, halos, obs, with_stderr: bool = False):
    """Implementation of ``Model.summary_jacobian``."""
    obs = check_observations(obs)
    theta = model.check_theta(theta)
    halos = model.check_halos(halos)
    _, _, _, jac_mean, jac_stderr = placed_summaries_and_jacobian(model, theta, halos, obs)
    return (jac_mean, jac_stderr) if with_stderr else jac_mean
