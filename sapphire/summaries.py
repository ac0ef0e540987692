"""Summary statistics of a simulated halo population: kernel regression at fixed centres.

The model predicts, for each halo, its z = 0 state; the data are mean relations y(x) at a few x.
The summary of a population is the local-linear Gaussian-kernel regression of the halos' y on
their x, with a bandwidth fixed per relation (``Relation.bandwidth``, not a function of the
model's x), evaluated at the observed x of each relation, together with the local scatter, the
support (effective number of halos at the centre) and a standard error that grows smoothly as
that support vanishes (summary definition 2, issue 16; docs/design.md).  Everything here is pure ``jax.numpy``: differentiable in
the halo values, ``jit``- and ``vmap``-friendly, and safe for failed halos (``valid = False``) whose
values may be NaN.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .config import DEFAULT_CONFIG, ModelConfig
from .observations import RELATION_NAMES, Observations
from .physics import STATE_NAMES

__all__ = [
    "RELATION_NAMES",
    "KernelRegression",
    "kernel_regression",
    "SUMMARY_DEFINITION",
    "SUMMARY_DEFINITION_TEXT",
    "SLOPE_RIDGE",
    "MIN_SUPPORT",
    "SUPPORT_ERROR",
    "SUPPORT_FLOOR",
    "summary_support",
    "count_poorly_supported",
    "relation_coordinates",
    "summary_statistics",
]

# Columns of the (n_halo, 7) log-state (MODEL.md section 3) that the summaries read.
_I_STAR, _I_ISM, _I_Z_ISM = (STATE_NAMES.index(name) for name in ("M_star", "M_ISM", "M_Z_ISM"))


#: Version of the summary definition (recorded in training stores and emulators, which refuse
#: artefacts of another): 2 = local-linear Gaussian-kernel regression with a fixed bandwidth per
#: relation and a support-inflated standard error (issue 16); 1 (absent) = Nadaraya-Watson with
#: Scott's bandwidth of the model's own x.
SUMMARY_DEFINITION: int = 2

#: What :data:`SUMMARY_DEFINITION` means, for the messages that refuse old artefacts.
SUMMARY_DEFINITION_TEXT: str = (
    "summary definition 2: local-linear kernel regression with a fixed bandwidth per relation "
    "(Relation.bandwidth) and a standard error inflated where the support (effective number of "
    "halos) vanishes; definition 1 used Scott's bandwidth of the model's own x (issue 16)"
)

#: Ridge on the local slope, in units of h^2: b = cov(x, y) / (var(x) + SLOPE_RIDGE h^2).  Keeps
#: the slope finite where the kernel sees one halo; biases the value at the edge of a dense
#: population by < 0.6% of slope x h.
SLOPE_RIDGE: float = 0.01

#: Support (effective number of halos) below which a summary counts as poorly supported.
MIN_SUPPORT: float = 3.0

#: Error scale [units of y, dex] of an unsupported summary: the support term of the variance is
#: (SUPPORT_ERROR * MIN_SUPPORT / support)^2, i.e. SUPPORT_ERROR at support = MIN_SUPPORT.
SUPPORT_ERROR: float = 0.3

#: The support enters as support + SUPPORT_FLOOR * MIN_SUPPORT, which caps the support term at
#: SUPPORT_ERROR / SUPPORT_FLOOR (300 dex: uninformative, yet finite: no jump to -inf).
SUPPORT_FLOOR: float = 1e-3


class KernelRegression(NamedTuple):
    """Result of :func:`kernel_regression`; every field has shape (n_centres,).

    Attributes:
        mean: the local-linear fit's value at each centre, sum_j l_j y_j [units of y].
        scatter: kernel-weighted RMS residual about the local line [units of y].
        n_eff: effective number of points of the linear smoother, 1 / sum_j l_j^2.
        stderr: standard error [units of y]: sqrt(scatter^2 sum_j l_j^2 + support term), the
            support term (SUPPORT_ERROR * MIN_SUPPORT / (support + floor))^2 growing smoothly as the
            support vanishes.
        support: effective number of halos at the centre, sum_j exp(-(c - x_j)^2 / (2 h^2))
            (the unnormalised kernel weights: ~0 far from every halo).
    """

    mean: jax.Array
    scatter: jax.Array
    n_eff: jax.Array
    stderr: jax.Array
    support: jax.Array


def _safe_sqrt(v: jax.Array) -> jax.Array:
    """sqrt with a zero (not infinite) gradient at v = 0 (double-where)."""
    positive = v > 0.0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, v, 1.0)), 0.0)


@jax.jit
def kernel_regression(
    x: ArrayLike,
    y: ArrayLike,
    centres: ArrayLike,
    valid: ArrayLike | None = None,
    *,
    bandwidth: ArrayLike,
) -> KernelRegression:
    """Local-linear regression of y on x with a Gaussian kernel of fixed bandwidth, at fixed centres.

    At centre c, with d_j = x_j - c, kernel K_j = exp(-d_j^2 / (2 h^2)) over valid j, support
    S = sum_j K_j and normalised weights w_j = K_j / S: the weighted line y ~ a + b d (moments
    m1 = sum w d, V = sum w (d - m1)^2 + SLOPE_RIDGE h^2, b = sum w (d - m1) y / V) gives

        mean = a = sum_j l_j y_j,   l_j = w_j (1 - m1 (d_j - m1) / V),   sum_j l_j = 1,

    exact for data on a line (up to the ridge, which matters only where the kernel sees ~1 halo),
    and a linear extrapolation, not a nearest neighbour, for a centre near or beyond the edge
    of the x range.  The weights are normalised log-sum-exp style, so a centre far from every
    point still gets finite weights.  Errors: scatter^2 = sum_j w_j (y_j - a - b d_j)^2 and

        stderr^2 = scatter^2 sum_j l_j^2 + (SUPPORT_ERROR MIN_SUPPORT / (S + SUPPORT_FLOOR MIN_SUPPORT))^2,

    so a summary's error grows smoothly (no mask, no jump) as its support S vanishes.

    Args:
        x: abscissae, shape (n,) (e.g. log10 of a mass in Msun).
        y: ordinates, shape (n,) (e.g. a log ratio in dex).
        centres: where to evaluate, shape (n_centres,), units of x.
        valid: boolean mask, shape (n,); False points (failed halos) get zero weight, and their
            x / y, NaN or not, reach neither values nor gradients.  None means all valid.
        bandwidth: h > 0 [units of x], a scalar or one per centre (n_centres,); fixed, i.e. not
            a function of x (``Relation.bandwidth`` for the summaries).

    Jitted (one compilation per input shape); also traceable inside an outer jit/vmap/grad.

    Returns:
        :class:`KernelRegression` (mean, scatter, n_eff, stderr, support), each (n_centres,).
        The scatter has a zero (finite) gradient where it vanishes.  All NaN (support 0) if fewer
        than 2 points are valid.
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    centres = jnp.asarray(centres)
    h = jnp.broadcast_to(jnp.asarray(bandwidth, dtype=x.dtype), centres.shape)[:, None]
    valid = jnp.ones(x.shape, bool) if valid is None else jnp.asarray(valid, bool)
    # Double where: masked entries are replaced before any arithmetic touches them.
    xs = jnp.where(valid, x, 0.0)
    ys = jnp.where(valid, y, 0.0)

    d = xs[None, :] - centres[:, None]  # (n_centres, n)
    log_k = jnp.where(valid[None, :], -0.5 * (d / h) ** 2, -jnp.inf)
    log_k_max = jax.lax.stop_gradient(jnp.max(log_k, axis=1, keepdims=True))
    log_k_max = jnp.where(jnp.isfinite(log_k_max), log_k_max, 0.0)
    unnorm = jnp.exp(log_k - log_k_max)  # the nearest valid point has weight 1: no 0/0
    total = jnp.sum(unnorm, axis=1, keepdims=True)
    w = unnorm / total
    support = (total * jnp.exp(log_k_max))[:, 0]

    m1 = jnp.sum(w * d, axis=1, keepdims=True)
    dc = jnp.where(valid[None, :], d - m1, 0.0)
    var = jnp.sum(w * dc**2, axis=1, keepdims=True) + SLOPE_RIDGE * h**2
    ybar = jnp.sum(w * ys[None, :], axis=1, keepdims=True)
    slope = jnp.sum(w * dc * ys[None, :], axis=1, keepdims=True) / var
    mean = ybar - slope * m1
    weights = w * (1.0 - m1 * dc / var)  # l_j: mean = sum_j l_j y_j
    resid = jnp.where(valid[None, :], ys[None, :] - mean - slope * d, 0.0)
    scatter = _safe_sqrt(jnp.sum(w * resid**2, axis=1))
    sum_l2 = jnp.sum(weights**2, axis=1)
    support_term = SUPPORT_ERROR * MIN_SUPPORT / (support + SUPPORT_FLOOR * MIN_SUPPORT)
    stderr = jnp.sqrt(scatter**2 * sum_l2 + support_term**2)
    any_valid = jnp.sum(valid) >= 2
    nan_if_empty = lambda a: jnp.where(any_valid, a, jnp.nan)
    return KernelRegression(
        mean=nan_if_empty(mean[:, 0]),
        scatter=nan_if_empty(scatter),
        n_eff=nan_if_empty(1.0 / sum_l2),
        stderr=nan_if_empty(stderr),
        support=jnp.where(any_valid, support, 0.0),
    )


def relation_coordinates(
    log_mhalo: ArrayLike,
    log_state: ArrayLike,
    config: ModelConfig = DEFAULT_CONFIG,
) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Per-halo (x, y) of each relation at z = 0.

    Args:
        log_mhalo: log10 M_h [Msun] at z = 0, shape (n_halo,).
        log_state: log10 of [M_*, M_Z*, M_ISM, M_Z,ISM, M_CGM, M_Z,CGM (Msun), E_th
            (Msun (km/s)^2)] at z = 0, shape (n_halo, 7) (MODEL.md section 3).
        config: supplies ``solar_metallicity`` (Z_sun) and ``solar_oxygen_abundance``.

    Returns:
        dict with keys ``RELATION_NAMES``:

        - ``"smhm"``: x = log10 M_h, y = log10 M_* - log10 M_h;
        - ``"gas_ratio"``: x = log10 M_*, y = log10 M_ISM - log10 M_*;
        - ``"mzr"``: x = log10 M_*, y = 12 + log(O/H) = log(O/H)_sun + log10(Z_ISM / Z_sun),
          Z_ISM = M_Z,ISM / M_ISM (MODEL.md section 8).
    """
    log_mhalo = jnp.asarray(log_mhalo)
    log_state = jnp.asarray(log_state)
    log_mstar = log_state[..., _I_STAR]
    log_mism = log_state[..., _I_ISM]
    log_mzism = log_state[..., _I_Z_ISM]
    log_z_solar = jnp.log10(config.solar_metallicity)
    oxygen = config.solar_oxygen_abundance + (log_mzism - log_mism) - log_z_solar
    return {
        "smhm": (log_mhalo, log_mstar - log_mhalo),
        "gas_ratio": (log_mstar, log_mism - log_mstar),
        "mzr": (log_mstar, oxygen),
    }


def _regressions(
    log_mhalo, log_state, valid, observations: Observations, config: ModelConfig
) -> list[KernelRegression]:
    """One :class:`KernelRegression` per relation of ``observations``, in its order."""
    coords = relation_coordinates(log_mhalo, log_state, config)
    results = []
    for rel in observations.relations:
        x, y = coords[rel.name]
        if rel.detection_limit is not None:  # the survey's view of each halo
            # Failed halos carry NaN: keep them out of the limit's derivative (double where).
            seen = rel.detection_limit.apply(jnp.where(valid, x, 0.0), jnp.where(valid, y, 0.0))
            y = jnp.where(valid, seen, y)
        results.append(kernel_regression(x, y, jnp.asarray(rel.x), valid, bandwidth=rel.bandwidth))
    return results


@functools.partial(jax.jit, static_argnames=("observations", "config"))
def summary_statistics(
    log_mhalo: ArrayLike,
    log_state: ArrayLike,
    valid: ArrayLike,
    observations: Observations,
    config: ModelConfig = DEFAULT_CONFIG,
) -> tuple[jax.Array, jax.Array]:
    """Model summary vector and its standard error, matched point by point to ``observations``.

    For each relation in ``observations.relations`` (canonical order ``smhm``, ``gas_ratio``,
    ``mzr``, restricted to those present) the halos' (x, y) from :func:`relation_coordinates`
    (raised to the relation's ``detection_limit``, if it has one) are kernel-regressed
    (:func:`kernel_regression`, bandwidth ``Relation.bandwidth``) at that relation's observed x;
    the results are concatenated in that order, so entry ``observations.slices[name]`` of the
    output belongs to relation ``name`` and lines up with ``observations.y`` / ``observations.sigma``.

    Args:
        log_mhalo: log10 M_h [Msun] at z = 0, shape (n_halo,).
        log_state: log10 state at z = 0, shape (n_halo, 7) (see :func:`relation_coordinates`).
        valid: boolean mask of successfully solved halos, shape (n_halo,).
        observations: the relations to summarise (a static jit argument: hashable, compiled once
            per distinct set of observations).
        config: model constants (solar metallicity and oxygen abundance); static, like
            ``observations``.

    Returns:
        (mean, stderr), each shape (observations.n_summary,), in dex: the local-linear kernel
        regression of each relation at each observed x, and its standard error (statistical,
        plus the support term that grows as the effective number of halos vanishes).
    """
    results = _regressions(log_mhalo, log_state, valid, observations, config)
    return jnp.concatenate([r.mean for r in results]), jnp.concatenate([r.stderr for r in results])


@functools.partial(jax.jit, static_argnames=("observations", "config"))
def summary_support(
    log_mhalo: ArrayLike,
    log_state: ArrayLike,
    valid: ArrayLike,
    observations: Observations,
    config: ModelConfig = DEFAULT_CONFIG,
) -> jax.Array:
    """Support of each summary (effective number of halos within ~one bandwidth of its centre,
    :attr:`KernelRegression.support`), shape (observations.n_summary,), in the order of
    :func:`summary_statistics` (same arguments)."""
    results = _regressions(log_mhalo, log_state, valid, observations, config)
    return jnp.concatenate([r.support for r in results])


def count_poorly_supported(support: ArrayLike, min_support: float = MIN_SUPPORT) -> np.ndarray:
    """Number of summaries with support < ``min_support`` (default :data:`MIN_SUPPORT`) along the
    last axis: support (..., S) -> (...,) int.  NaN support counts as poorly supported."""
    support = np.asarray(support, dtype=np.float64)
    return np.sum(~(support >= min_support), axis=-1)
