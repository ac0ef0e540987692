"""Summaries of an evolved population and the Gaussian likelihood of the observed relations.

>>> model = sapphire.Model()
>>> halos = sapphire.HaloPopulation.from_diffmah(256, seed=0)
>>> obs = sapphire.Observations.default()
>>> s = model.summaries(theta, halos, obs)          # s.mean, s.stderr: (obs.n_summary,)
>>> J = model.summary_jacobian(theta, halos, obs)   # (obs.n_summary, 8), exact
>>> sapphire.log_likelihood(theta, model, halos, obs)                 # scalar, differentiable
>>> value, grad, n_failed = sapphire.log_likelihood_and_grad(theta, model, halos, obs)

Order of the summary vector
---------------------------
Relations in ``obs.relations`` order (canonical: ``smhm``, ``gas_ratio``, ``mzr``, those
present), each evaluated at its observed x in the file's order; ``obs.slices[name]`` is the
slice of relation ``name``, and ``Summaries.names[i]`` reads e.g. ``"smhm@10.25"``.  Entry i is
the Gaussian-kernel (Nadaraya-Watson) regression of the halos' z = 0 y on x at x_i
(:func:`sapphire.summaries.summary_statistics`), ``stderr`` its standard error.

Failed halos
------------
A halo whose solve failed (or hit ``max_steps``) is EXCLUDED from every kernel regression (zero
weight, out of the bandwidth and of the gradients: the ``valid`` mask is ``success``) and
COUNTED (``Summaries.n_failed``, ``LikelihoodResult.n_failed``).  ``log_likelihood`` then
follows ``on_failure``:

* ``"exclude"`` (default): the likelihood of the summaries of the halos that solved.  Where a
  selected relation has fewer than 2 valid halos its summaries are NaN and the value is
  ``-inf`` (gradient 0).
* ``"reject"``: ``-inf`` (gradient 0) as soon as one halo failed, i.e. the parameters are
  treated as outside the support.

Derivatives
-----------
The summaries are a ``jax.custom_jvp`` whose tangent is ``J @ theta_dot``, with J the chain
rule of the kernel regression through the state Jacobian of the error-controlled sensitivity
solve (``Model.jacobian``: the same derivative that ``solve_population``'s custom_jvp gives, so
exact to the solver tolerance).  Rows of failed halos are zeroed before the chain rule (they
carry no weight), so ``jax.grad`` (reverse mode) stays finite when halos fail; differentiating
``solve_population`` directly in reverse mode would give NaN there (NaN Jacobian rows times a
zero cotangent).  The primal evaluation (no derivative requested) runs the plain solve of
``Model.evolve``; the derivative runs the sensitivity solve of ``Model.jacobian``.  Called
eagerly, ``Model.summaries``, ``Model.summary_jacobian``, :func:`log_likelihood` and
:func:`log_likelihood_and_grad` reuse those methods' compiled solves (no extra compilation);
``jax.grad``/``jax.jacfwd``/``jax.jit`` of :func:`log_likelihood` stage the solve into their own
trace and compile a copy of it once per shape and mode (measured ~10-20 s on the 2-core CPU).
First derivatives only (``jax.grad``, ``jax.jacfwd``, ``jax.value_and_grad``, ``jax.jvp``), not
Hessians.

Note that a value taken together with its gradient comes from the sensitivity solve, which takes
its own steps: it equals the primal value to the solver tolerance (and, with ``max_steps`` set
tight, may count different failures).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .config import ModelConfig
from .halos import HaloPopulation
from .observations import Observations
from .solve import SolverSettings
from .summaries import summary_statistics

__all__ = [
    "Summaries",
    "LikelihoodResult",
    "summary_names",
    "log_likelihood",
    "log_likelihood_and_grad",
    "gaussian_log_likelihood",
    "summary_function",
    "latin_hypercube",
    "predictive_coverage",
]

ON_FAILURE = ("exclude", "reject")


class Summaries(NamedTuple):
    """What ``Model.summaries`` returns.

    Attributes:
        mean: (n_summary,) kernel-regression means [dex, or 12 + log(O/H)], in the order of
            ``names`` (module docstring).
        stderr: (n_summary,) their standard errors (local scatter / sqrt(n_eff)).
        n_failed: number of halos whose solve failed (excluded from the regressions).
        names: (n_summary,) ``"<relation>@<x>"``, e.g. ``"smhm@10.25"``, ``"mzr@8.5"``.
        success: (n_halo,) bool, per halo.
    """

    mean: jax.Array
    stderr: jax.Array
    n_failed: int
    names: tuple[str, ...]
    success: jax.Array


class LikelihoodResult(NamedTuple):
    """What :func:`log_likelihood_and_grad` returns: ``value`` (scalar), ``grad`` (8,), and
    ``n_failed`` (halos that failed in the sensitivity solve, excluded or rejected according
    to ``on_failure``)."""

    value: jax.Array
    grad: jax.Array
    n_failed: int


def summary_names(obs: Observations) -> tuple[str, ...]:
    """``"<relation>@<x>"`` for every entry of the stacked summary vector of ``obs``."""
    return tuple(f"{rel.name}@{x:g}" for rel in obs.relations for x in rel.x)


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------
def _check_model(model):
    from .model import Model

    if not isinstance(model, Model):
        raise ValueError(f"model must be a sapphire.Model, got {type(model).__name__}")
    return model


def _check_obs(obs) -> Observations:
    if obs is None:
        return Observations.default()
    if not isinstance(obs, Observations):
        raise ValueError(f"obs must be a sapphire.Observations, got {type(obs).__name__}")
    return obs


def _check_sigma_scale(sigma_scale):
    if isinstance(sigma_scale, jax.core.Tracer):
        return sigma_scale
    try:
        value = float(sigma_scale)
    except (TypeError, ValueError):
        raise ValueError(f"sigma_scale must be a positive number, got {sigma_scale!r}") from None
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"sigma_scale must be finite and > 0, got {sigma_scale!r}")
    return value


def _relation_mask(obs: Observations, relations) -> np.ndarray:
    """Boolean mask over the summary vector of the relations that enter."""
    if relations is None:
        wanted = obs.names
    else:
        wanted = (relations,) if isinstance(relations, str) else tuple(relations)
        if not wanted:
            raise ValueError(f"relations: none given; choose from those present: {obs.names}")
        for name in wanted:
            if not isinstance(name, str) or name not in obs.names:
                raise ValueError(f"relations: {name!r} is not a relation of obs; present: {obs.names}")
        if len(set(wanted)) != len(wanted):
            raise ValueError(f"relations: duplicate names in {wanted}")
    mask = np.zeros(obs.n_summary, bool)
    for name, sl in obs.slices.items():
        mask[sl] = name in wanted
    return mask


def _check_on_failure(on_failure: str) -> str:
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
    return on_failure


# ----------------------------------------------------------------------------------------------
# Summaries from solved states (small jitted pieces; the solve is Model's own compiled _evolve)
# ----------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("observations", "config"))
def _summaries_from_states(log_mhalo, log_state, success, observations: Observations, config: ModelConfig):
    return summary_statistics(log_mhalo, log_state, success, observations, config)


@functools.partial(jax.jit, static_argnames=("observations", "config"))
def _summaries_and_jacobian_from_states(log_mhalo, log_state, success, state_jacobian, observations, config):
    """(mean, stderr, d mean/d theta, d stderr/d theta): the kernel regression's derivative in
    the log states, contracted with the state Jacobian (n_halo, 7, 8).  Failed halos' rows (NaN)
    are zeroed first: they have zero weight."""
    state_jacobian = jnp.where(success[:, None, None], state_jacobian, 0.0)
    (mean, stderr), linear = jax.linearize(
        lambda ls: summary_statistics(log_mhalo, ls, success, observations, config), log_state
    )
    jac_mean, jac_stderr = jax.vmap(linear, in_axes=2, out_axes=1)(state_jacobian)
    return mean, stderr, jac_mean, jac_stderr


def _solve(theta, forcings, settings: SolverSettings, config: ModelConfig, with_jacobian: bool):
    """z = 0 (log_mhalo (n,), log_state (n, 7), success (n,), jacobian (n, 7, 8) or None)."""
    from .model import _evolve

    return _at_z0(_evolve(theta, forcings, None, settings, config, with_jacobian))


def _solve_concrete(model, theta, halos: HaloPopulation, with_jacobian: bool):
    """:func:`_solve` for a concrete theta, placed on the devices by ``Model.evolve_placed``."""
    return _at_z0(model.evolve_placed(theta, halos, None, with_jacobian))


def _at_z0(evolved):
    log_state, log_mhalo, solution, _, jacobian = evolved
    return (
        log_mhalo[:, 0],
        log_state[:, 0],
        solution.success,
        None if jacobian is None else jacobian[:, 0],
    )


def _summaries_with_jacobian(theta, forcings, settings, config, observations):
    solved = _solve(theta, forcings, settings, config, True)
    return _summaries_and_jacobian_from_solve(solved, observations, config)


def _summaries_and_jacobian_from_solve(solved, observations, config):
    log_mhalo, log_state, success, jacobian = solved
    mean, stderr, jac_mean, jac_stderr = _summaries_and_jacobian_from_states(
        log_mhalo, log_state, success, jacobian, observations, config
    )
    return mean, stderr, success, jac_mean, jac_stderr


def _concrete_summaries(model, theta, halos, observations):
    """(mean, stderr, success) for a concrete theta (no derivative)."""
    log_mhalo, log_state, success, _ = _solve_concrete(model, theta, halos, False)
    mean, stderr = _summaries_from_states(log_mhalo, log_state, success, observations, model.config)
    return mean, stderr, success


def _concrete_summaries_with_jacobian(model, theta, halos, observations):
    solved = _solve_concrete(model, theta, halos, True)
    return _summaries_and_jacobian_from_solve(solved, observations, model.config)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _summary_function(settings, config, observations, theta, forcings):
    """(mean, stderr, success) of the population at theta; differentiable in theta."""
    log_mhalo, log_state, success, _ = _solve(theta, forcings, settings, config, False)
    mean, stderr = _summaries_from_states(log_mhalo, log_state, success, observations, config)
    return mean, stderr, success


@_summary_function.defjvp
def _summary_function_jvp(settings, config, observations, primals, tangents):
    theta, forcings = primals
    theta_dot = tangents[0]  # the halo forcing is not differentiated
    mean, stderr, success, jac_mean, jac_stderr = _summaries_with_jacobian(theta, forcings, settings, config, observations)
    # A summary that is not finite (< 2 valid halos) has no derivative: zero rows, so that a
    # reverse-mode cotangent of 0 there gives 0 rather than 0 * NaN.
    jac_mean = jnp.where(jnp.isfinite(mean)[:, None], jac_mean, 0.0)
    jac_stderr = jnp.where(jnp.isfinite(stderr)[:, None], jac_stderr, 0.0)
    no_tangent = np.zeros(success.shape, dtype=jax.dtypes.float0)
    return (mean, stderr, success), (jac_mean @ theta_dot, jac_stderr @ theta_dot, no_tangent)


@dataclasses.dataclass(frozen=True)
class _SummaryKernel:
    """The static part of :func:`summary_function` (hashable: equal settings, config and
    relation geometry give equal kernels, hence shared jit compilations)."""

    settings: SolverSettings
    config: ModelConfig
    observations: Observations

    def __call__(self, forcings, theta):
        return _summary_function(self.settings, self.config, self.observations, jnp.asarray(theta, jnp.float64), forcings)


def summary_function(model, halos: HaloPopulation, obs: Observations | None = None) -> jax.tree_util.Partial:
    """A traceable ``theta (8,) -> (mean, stderr, success)`` of ``model`` on ``halos``.

    ``model``, ``halos`` and ``obs`` are validated once, here (``ValueError`` naming the bad
    input); the returned callable does no eager checks, so ``jax.jit``, ``jax.grad`` /
    ``jax.jacfwd`` (first derivatives: one sensitivity solve each, the same ``custom_jvp`` as
    :func:`log_likelihood`), ``jax.vmap`` and numpyro can trace it.  It does not check that
    theta lies in the prior box (callers taking user input do).  ``mean``/``stderr``:
    (obs.n_summary,), in ``obs`` order (module docstring); ``success``: (n_halo,); failed halos
    are excluded from the summaries (``on_failure="exclude"``), and a relation left with fewer
    than 2 valid halos has NaN summaries.

    The summaries depend on ``obs`` only through its relation names, x and detection limits, so the result is a
    ``jax.tree_util.Partial`` pytree whose leaves are the halo forcing (``Model.device_forcing``
    without a theta) and whose static part holds the solver settings, the config and that
    geometry: passed as an argument to a jitted function, it reuses one compilation for every
    data set (y, sigma) and every population of the same size.
    """
    model = _check_model(model)
    obs = _check_obs(obs)
    halos = model.check_halos(halos)
    geometry = Observations(tuple(
        type(rel)(name=rel.name, x=rel.x, y=np.zeros(rel.size), sigma=np.ones(rel.size), detection_limit=rel.detection_limit)
        for rel in obs.relations
    ))
    return jax.tree_util.Partial(_SummaryKernel(model.settings, model.config, geometry), model.device_forcing(halos))


def model_summaries(model, theta, halos, obs) -> Summaries:
    """Implementation of ``Model.summaries`` (primal solve; no derivatives)."""
    obs = _check_obs(obs)
    theta = model.check_theta(theta)
    halos = model.check_halos(halos)
    mean, stderr, success = _concrete_summaries(model, theta, halos, obs)
    return Summaries(
        mean=mean,
        stderr=stderr,
        n_failed=int(np.sum(~np.asarray(success))),
        names=summary_names(obs),
        success=success,
    )


def model_summaries_with_jacobian(model, theta, halos, obs) -> tuple[Summaries, jax.Array]:
    """Implementation of ``Model.summaries_with_jacobian``."""
    obs = _check_obs(obs)
    theta = model.check_theta(theta)
    halos = model.check_halos(halos)
    mean, stderr, success, jac_mean, _ = _concrete_summaries_with_jacobian(model, theta, halos, obs)
    summaries = Summaries(
        mean=mean, stderr=stderr, n_failed=int(np.sum(~np.asarray(success))), names=summary_names(obs), success=success
    )
    return summaries, jac_mean


def model_summary_jacobian(model, theta, halos, obs, with_stderr: bool = False):
    """Implementation of ``Model.summary_jacobian``."""
    obs = _check_obs(obs)
    theta = model.check_theta(theta)
    halos = model.check_halos(halos)
    _, _, _, jac_mean, jac_stderr = _concrete_summaries_with_jacobian(model, theta, halos, obs)
    return (jac_mean, jac_stderr) if with_stderr else jac_mean


# ----------------------------------------------------------------------------------------------
# Likelihood
# ----------------------------------------------------------------------------------------------
@jax.jit
def gaussian_log_likelihood(mean, stderr, y, sigma, mask, sigma_scale=1.0):
    """sum over mask of log N(y_i | mean_i, stderr_i^2 + (sigma_scale sigma_i)^2).

    Independent Gaussians, normalisation included (the variance depends on theta through the
    model's standard error).  ``-inf`` if a selected mean or stderr is not finite; its gradient
    is then 0 (never NaN: non-finite entries are replaced before any arithmetic).
    """
    finite = jnp.isfinite(mean) & jnp.isfinite(stderr)
    mean = jnp.where(finite, mean, y)
    stderr = jnp.where(finite, stderr, 0.0)
    var = stderr**2 + (sigma_scale * sigma) ** 2
    terms = -0.5 * ((mean - y) ** 2 / var + jnp.log(2.0 * jnp.pi * var))
    total = jnp.sum(jnp.where(mask, terms, 0.0))
    return jnp.where(jnp.any(mask & ~finite), -jnp.inf, total)


_gaussian_value_and_grad = jax.jit(jax.value_and_grad(gaussian_log_likelihood, argnums=(0, 1)))


class _Checked(NamedTuple):
    model: object
    obs: Observations
    theta: jax.Array
    halos: HaloPopulation
    sigma_scale: float
    mask: np.ndarray
    on_failure: str


def _check_all(theta, model, halos, obs, sigma_scale, relations, on_failure) -> _Checked:
    model = _check_model(model)
    obs = _check_obs(obs)
    return _Checked(
        model=model,
        obs=obs,
        theta=model.check_theta(theta),
        halos=model.check_halos(halos),
        sigma_scale=_check_sigma_scale(sigma_scale),
        mask=_relation_mask(obs, relations),
        on_failure=_check_on_failure(on_failure),
    )


def log_likelihood(
    theta,
    model,
    halos: HaloPopulation,
    obs: Observations | None = None,
    sigma_scale: float = 1.0,
    relations: str | Sequence[str] | None = None,
    on_failure: str = "exclude",
) -> jax.Array:
    """Gaussian log-likelihood of the observed relations given the model at ``theta``.

    ln L = sum_i -1/2 [ (mu_i - y_i)^2 / v_i + ln(2 pi v_i) ],  v_i = s_i^2 + (sigma_scale sigma_i)^2,

    over the summary entries i of the selected ``relations`` (a name or a list of names of
    ``obs``; default: all), with mu_i, s_i the model's kernel-regression mean and standard error
    (``Model.summaries``) and y_i, sigma_i the observations.  ``sigma_scale`` (> 0) multiplies
    the observational errors (forecasts of smaller errors).  Failed halos: ``on_failure``
    (``"exclude"``, default, or ``"reject"``; module docstring).  ``obs=None`` means
    ``Observations.default()``.

    Returns a float64 scalar.  Differentiable in ``theta`` (``jax.grad``, ``jax.jacfwd``:
    exact derivatives of the error-controlled sensitivity solve).  Eagerly it reuses the
    compiled solve of ``Model.evolve``; under ``jax.grad``/``jax.jit`` JAX compiles its own copy
    of the solver once per shape.  For value and gradient together prefer
    :func:`log_likelihood_and_grad`.  Bad input raises ``ValueError`` naming it.
    """
    c = _check_all(theta, model, halos, obs, sigma_scale, relations, on_failure)
    if isinstance(c.theta, jax.core.Tracer):  # traced (jax.grad etc.): the differentiable kernel
        mean, stderr, success = _summary_function(c.model.settings, c.model.config, c.obs, c.theta, c.model.device_forcing(c.halos))
    else:
        mean, stderr, success = _concrete_summaries(c.model, c.theta, c.halos, c.obs)
    value = gaussian_log_likelihood(
        mean, stderr, jnp.asarray(c.obs.y), jnp.asarray(c.obs.sigma), jnp.asarray(c.mask), c.sigma_scale
    )
    if c.on_failure == "reject":
        value = jnp.where(jnp.any(~success), -jnp.inf, value)
    return value


def log_likelihood_and_grad(
    theta,
    model,
    halos: HaloPopulation,
    obs: Observations | None = None,
    sigma_scale: float = 1.0,
    relations: str | Sequence[str] | None = None,
    on_failure: str = "exclude",
) -> LikelihoodResult:
    """:func:`log_likelihood` and its gradient (8,) in one pass: ONE sensitivity solve (the
    compiled function of ``Model.jacobian``), the exact summary Jacobian, and
    ``jax.value_and_grad`` of the Gaussian in the summaries, chained.  Same value and gradient
    as ``jax.value_and_grad(log_likelihood)``, without compiling another copy of the solver.

    Returns ``LikelihoodResult(value, grad, n_failed)``.  The value comes from the sensitivity
    solve (equal to ``log_likelihood``'s to the solver tolerance).  ``value = -inf`` comes with
    ``grad = 0``.
    """
    c = _check_all(theta, model, halos, obs, sigma_scale, relations, on_failure)
    mean, stderr, success, jac_mean, jac_stderr = _concrete_summaries_with_jacobian(c.model, c.theta, c.halos, c.obs)
    value, (grad_mean, grad_stderr) = _gaussian_value_and_grad(
        mean, stderr, jnp.asarray(c.obs.y), jnp.asarray(c.obs.sigma), jnp.asarray(c.mask), c.sigma_scale
    )
    grad = _chain(grad_mean, grad_stderr, jac_mean, jac_stderr)
    n_failed = int(np.sum(~np.asarray(success)))
    if c.on_failure == "reject" and n_failed:
        value, grad = jnp.full((), -jnp.inf, dtype=value.dtype), jnp.zeros_like(grad)
    return LikelihoodResult(value=value, grad=grad, n_failed=n_failed)


@jax.jit
def _chain(grad_mean, grad_stderr, jac_mean, jac_stderr):
    """dL/dtheta = dL/dmean . dmean/dtheta + dL/dstderr . dstderr/dtheta.  Entries with a zero
    gradient (relations not selected, non-finite summaries) are skipped, so their NaN Jacobian
    rows, if any, do not leak in as 0 * NaN."""
    safe = lambda g, j: jnp.where(g[:, None] != 0.0, g[:, None] * j, 0.0).sum(axis=0)
    return safe(grad_mean, jac_mean) + safe(grad_stderr, jac_stderr)


# ----------------------------------------------------------------------------------------------
# Prior predictive checks
# ----------------------------------------------------------------------------------------------
def latin_hypercube(prior, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points of a seeded Latin hypercube (``scipy.stats.qmc``) in the prior box, (n, d)."""
    from scipy.stats import qmc

    if n < 0:
        raise ValueError(f"number of Latin-hypercube draws must be >= 0, got {n}")
    if n == 0:
        return np.zeros((0, prior.ndim))
    unit = qmc.LatinHypercube(d=prior.ndim, rng=np.random.default_rng(seed)).random(n)
    return prior.from_unit(unit)


def predictive_coverage(obs: Observations, draws, percentiles: tuple[float, float] = (2.5, 97.5)) -> dict:
    """Does the prior predictive bracket each data point?

    Args:
        obs: observations.
        draws: (n_draw, obs.n_summary) summary means over prior draws; NaN entries (too few
            valid halos) are ignored point by point.
        percentiles: the central band.

    Returns:
        JSON-ready dict: ``points`` (one per data point: relation, x, y, sigma, envelope
        [min, max], band [p_lo, p_hi], ``inside_envelope``, ``inside_band``, ``n_finite`` draws),
        and ``fractions`` (per relation and ``"all"``: fraction of points inside the envelope and
        inside the band).  A point with no finite draw is outside both.
    """
    import warnings

    means = np.atleast_2d(np.asarray(draws, dtype=np.float64))
    if means.shape[-1] != obs.n_summary:
        raise ValueError(f"draws must have shape (n_draw, {obs.n_summary}); got {means.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanmin(means, axis=0), np.nanmax(means, axis=0)
        p_lo, p_hi = np.nanpercentile(means, percentiles, axis=0)
    y = obs.y
    in_env = (y >= lo) & (y <= hi)  # False where NaN
    in_band = (y >= p_lo) & (y <= p_hi)
    n_finite = np.sum(np.isfinite(means), axis=0)
    names = [rel.name for rel in obs.relations for _ in rel.x]
    fin = lambda v: float(v) if np.isfinite(v) else None
    points = [
        {
            "relation": names[i], "x": float(obs.x[i]), "y": float(y[i]), "sigma": float(obs.sigma[i]),
            "envelope": [fin(lo[i]), fin(hi[i])], "band": [fin(p_lo[i]), fin(p_hi[i])],
            "inside_envelope": bool(in_env[i]), "inside_band": bool(in_band[i]), "n_finite": int(n_finite[i]),
        }
        for i in range(obs.n_summary)
    ]
    fractions = {
        name: {"inside_envelope": float(np.mean(in_env[sl])), "inside_band": float(np.mean(in_band[sl])), "n_points": sl.stop - sl.start}
        for name, sl in obs.slices.items()
    }
    fractions["all"] = {"inside_envelope": float(np.mean(in_env)), "inside_band": float(np.mean(in_band)), "n_points": obs.n_summary}
    return {"percentiles": list(percentiles), "n_draws": int(means.shape[0]), "points": points, "fractions": fractions}
