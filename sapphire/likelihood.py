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
the local-linear Gaussian-kernel regression (fixed bandwidth per relation) of the halos' z = 0 y on x at x_i
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
trace and compile a copy of it once per shape and mode (compile times: docs/design.md s.11).
First derivatives only (``jax.grad``, ``jax.jacfwd``, ``jax.value_and_grad``, ``jax.jvp``), not
Hessians.

Note that a value taken together with its gradient comes from the sensitivity solve, which takes
its own steps: it equals the primal value to the solver tolerance (and, with ``max_steps`` set
tight, may count different failures).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .halos import HaloPopulation
from .model import Model
from .observations import Observations
from .population_summaries import (
    SummaryKernel,
    check_observations,
    differentiable_summaries,
    placed_summaries,
    placed_summaries_and_jacobian,
)

__all__ = [
    "LikelihoodResult",
    "log_likelihood",
    "log_likelihood_and_grad",
    "gaussian_log_likelihood",
    "safe_square",
    "summary_function",
    "gauss_newton_fisher_matrix",
]

ON_FAILURE = ("exclude", "reject")


class LikelihoodResult(NamedTuple):
    """What :func:`log_likelihood_and_grad` returns: ``value`` (scalar), ``grad`` (8,), and
    ``n_failed`` (halos that failed in the sensitivity solve, excluded or rejected according
    to ``on_failure``)."""

    value: jax.Array
    grad: jax.Array
    n_failed: int


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------
def _check_model(model):
    if not isinstance(model, Model):
        raise ValueError(f"model must be a sapphire.Model, got {type(model).__name__}")
    return model


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


def summary_function(model, halos: HaloPopulation, obs: Observations | None = None, free=None) -> jax.tree_util.Partial:
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

    ``free`` (parameter indices; default all 8): differentiate only these -- the others are
    held constant (zero derivative) and each derivative's sensitivity solve carries only
    len(free) tangents instead of 8 (exact HMC with k < 8 free parameters: docs/design.md s.6).
    """
    model = _check_model(model)
    if free is not None:
        free = tuple(sorted({int(i) for i in free}))
        if not free or free[0] < 0 or free[-1] >= model.prior.ndim:
            raise ValueError(f"free must be indices in [0, {model.prior.ndim}); got {free}")
        if len(free) == model.prior.ndim:
            free = None
    obs = check_observations(obs)
    halos = model.check_halos(halos)
    geometry = Observations(
        tuple(
            type(rel)(
                name=rel.name,
                x=rel.x,
                y=np.zeros(rel.size),
                sigma=np.ones(rel.size),
                detection_limit=rel.detection_limit,
                bandwidth=rel.bandwidth,
            )
            for rel in obs.relations
        )
    )
    kernel = SummaryKernel(model.settings, model.config, geometry, free)
    return jax.tree_util.Partial(kernel, model.device_forcing(halos))


# ----------------------------------------------------------------------------------------------
# Likelihood
# ----------------------------------------------------------------------------------------------
def safe_square(x):
    """x^2 where x is finite, NaN elsewhere, with a zero (never NaN) cotangent at non-finite x."""
    finite = jnp.isfinite(x)
    return jnp.where(finite, jnp.where(finite, x, 0.0) ** 2, jnp.nan)


def gaussian_log_likelihood(mean, model_variance, y, sigma, mask=None) -> jax.Array:
    """sum_i log N(y_i | mean_i, model_variance_i + sigma_i^2) over the entries selected by
    ``mask`` (bool, default all); arrays (S,).

    Independent Gaussians, normalisation included (the model variance may depend on theta).
    ``-inf`` if a selected mean or variance is not finite; its gradient is then 0, never NaN
    (non-finite entries are replaced before any arithmetic).  Written in variances so that a
    zero model variance has a finite derivative.  The one Gaussian likelihood of sapphire:
    :func:`log_likelihood` and every forecast forward model evaluate it.
    """
    finite = jnp.isfinite(mean) & jnp.isfinite(model_variance)
    mean = jnp.where(finite, mean, y)
    model_variance = jnp.where(finite, model_variance, 0.0)
    var = model_variance + sigma**2
    terms = -0.5 * ((mean - y) ** 2 / var + jnp.log(2.0 * jnp.pi * var))
    if mask is None:
        return jnp.where(jnp.all(finite), jnp.sum(terms), -jnp.inf)
    total = jnp.sum(jnp.where(mask, terms, 0.0))
    return jnp.where(jnp.any(mask & ~finite), -jnp.inf, total)


@jax.jit
def _summary_log_likelihood(mean, stderr, y, sigma, mask, sigma_scale):
    """:func:`gaussian_log_likelihood` of summaries with standard errors ``stderr``, observational
    errors scaled by ``sigma_scale``."""
    return gaussian_log_likelihood(mean, safe_square(stderr), y, sigma_scale * sigma, mask)


_summary_value_and_grad = jax.jit(jax.value_and_grad(_summary_log_likelihood, argnums=(0, 1)))


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
    obs = check_observations(obs)
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
        mean, stderr, success = differentiable_summaries(
            c.model.settings, c.model.config, c.obs, None, c.theta, c.model.device_forcing(c.halos)
        )
    else:
        mean, stderr, success = placed_summaries(c.model, c.theta, c.halos, c.obs)
    value = _summary_log_likelihood(
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
    mean, stderr, success, jac_mean, jac_stderr = placed_summaries_and_jacobian(c.model, c.theta, c.halos, c.obs)
    value, (grad_mean, grad_stderr) = _summary_value_and_grad(
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
# Fisher information of the Gaussian likelihood
# ----------------------------------------------------------------------------------------------
def gauss_newton_fisher_matrix(jacobian, variance, prior_width=None) -> np.ndarray:
    """The Gauss-Newton Fisher matrix of :func:`gaussian_log_likelihood`, the one convention of
    the package:

        F = J^T diag(1 / variance) J  [+ diag(12 / prior_width^2)],

    with J = d mean / d theta, shape (..., S, P), and ``variance`` (..., S) the total variance of
    each summary (model + observational).  The theta-dependence of the variance and second
    derivatives of the mean are neglected.  ``prior_width`` (P,), if given, adds the precision
    of the uniform prior box seen as a Gaussian of the same variance (width^2 / 12): it keeps
    directions the data do not constrain finite (the emulator report compares Fisher ellipses
    that way); forecasts leave it out (``forecasts.gauss_newton_fisher(..., prior_term=True)``
    adds it).  Returns (..., P, P).
    """
    jacobian = np.asarray(jacobian, dtype=np.float64)
    variance = np.asarray(variance, dtype=np.float64)
    fisher = np.swapaxes(jacobian, -1, -2) @ (jacobian / variance[..., None])
    if prior_width is not None:
        fisher = fisher + np.diag(12.0 / np.asarray(prior_width, dtype=np.float64) ** 2)
    return fisher
