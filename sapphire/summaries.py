"""Summary statistics of a simulated halo population: kernel regression at fixed centres.

The model predicts, for each halo, its z = 0 state; the data are mean relations y(x) at a few x.
The summary of a population is the Nadaraya-Watson (Gaussian kernel) regression of the halos'
y on their x, evaluated at the observed x of each relation, together with the local scatter and
the standard error of that local mean.  Everything here is pure ``jax.numpy``: differentiable in
the halo values, ``jit``- and ``vmap``-friendly, and safe for failed halos (``valid = False``) whose
values may be NaN.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from .config import DEFAULT_CONFIG, ModelConfig
from .observations import RELATION_NAMES, Observations
from .physics import STATE_NAMES

__all__ = [
    "RELATION_NAMES",
    "KernelRegression",
    "kernel_regression",
    "scott_bandwidth",
    "relation_coordinates",
    "summary_statistics",
]

# Columns of the (n_halo, 7) log-state (MODEL.md section 3) that the summaries read.
_I_STAR, _I_ISM, _I_Z_ISM = (STATE_NAMES.index(name) for name in ("M_star", "M_ISM", "M_Z_ISM"))


class KernelRegression(NamedTuple):
    """Result of :func:`kernel_regression`; every field has shape (n_centres,), units of y.

    Attributes:
        mean: kernel-weighted mean of y at each centre, sum_j w_j y_j.
        scatter: local weighted standard deviation, sqrt(sum_j w_j (y_j - mean)^2).
        n_eff: effective number of points (Kish), 1 / sum_j w_j^2 (dimensionless).
        stderr: standard error of the local mean, scatter / sqrt(n_eff).
    """

    mean: jax.Array
    scatter: jax.Array
    n_eff: jax.Array
    stderr: jax.Array


def _safe_sqrt(v: jax.Array) -> jax.Array:
    """sqrt with a zero (not infinite) gradient at v = 0 (double-where)."""
    positive = v > 0.0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, v, 1.0)), 0.0)


@jax.jit
def scott_bandwidth(x: ArrayLike, valid: ArrayLike | None = None) -> jax.Array:
    """Scott's rule bandwidth h = sigma_x n^(-1/5) over the valid points.

    sigma_x is the sample standard deviation (ddof = 1, as in ``scipy.stats.gaussian_kde``) of
    the valid x and n their number.  Invalid entries (possibly NaN) are ignored in values and
    gradients.  Units of x.  NaN if fewer than 2 valid points.
    """
    x = jnp.asarray(x)
    valid = jnp.ones(x.shape, bool) if valid is None else jnp.asarray(valid, bool)
    xs = jnp.where(valid, x, 0.0)
    n = jnp.sum(valid)
    n_f = n.astype(xs.dtype)
    n_safe = jnp.maximum(n_f, 2.0)
    mean_x = jnp.sum(xs) / n_safe
    dev = jnp.where(valid, xs - mean_x, 0.0)
    var_x = jnp.sum(dev**2) / (n_safe - 1.0)
    h = _safe_sqrt(var_x) * n_safe ** (-0.2)
    return jnp.where(n >= 2, h, jnp.nan)


@jax.jit
def kernel_regression(
    x: ArrayLike,
    y: ArrayLike,
    centres: ArrayLike,
    valid: ArrayLike | None = None,
) -> KernelRegression:
    """Nadaraya-Watson regression of y on x with a Gaussian kernel, at fixed centres.

    Weights at centre c_i: w_ij = exp(-(c_i - x_j)^2 / (2 h^2)) / sum_k exp(...), over valid j only,
    with Scott's bandwidth h = sigma_x n^(-1/5) (:func:`scott_bandwidth`; sigma_x and n from the
    valid points).  The normalisation is done log-sum-exp style (largest log-weight subtracted
    first), so a centre far from every point still gets finite weights (it regresses to its
    nearest points) rather than 0/0.

    Args:
        x: abscissae, shape (n,) (e.g. log10 of a mass in Msun).
        y: ordinates, shape (n,) (e.g. a log ratio in dex).
        centres: where to evaluate, shape (n_centres,), units of x.
        valid: boolean mask, shape (n,); False points (failed halos) get zero weight, are excluded
            from sigma_x and n, and their x / y, NaN or not, reach neither values nor gradients.
            None means all valid.

    Jitted (one compilation per input shape); also traceable inside an outer jit/vmap/grad.

    Returns:
        :class:`KernelRegression` (mean, scatter, n_eff, stderr), each (n_centres,).  The scatter
        has a zero (finite) gradient where it vanishes.  All NaN if fewer than 2 points are valid
        (or all valid x coincide).
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    centres = jnp.asarray(centres)
    valid = jnp.ones(x.shape, bool) if valid is None else jnp.asarray(valid, bool)
    # Double where: masked entries are replaced before any arithmetic touches them.
    xs = jnp.where(valid, x, 0.0)
    ys = jnp.where(valid, y, 0.0)
    h = scott_bandwidth(xs, valid)

    u = (centres[:, None] - xs[None, :]) / h
    log_w = jnp.where(valid[None, :], -0.5 * u**2, -jnp.inf)
    log_w_max = jax.lax.stop_gradient(jnp.max(log_w, axis=1, keepdims=True))
    unnorm = jnp.exp(log_w - log_w_max)  # the nearest valid point has weight 1: no 0/0
    w = unnorm / jnp.sum(unnorm, axis=1, keepdims=True)

    mean = w @ ys
    resid = jnp.where(valid[None, :], ys[None, :] - mean[:, None], 0.0)
    var = jnp.sum(w * resid**2, axis=1)
    scatter = _safe_sqrt(var)
    sum_w2 = jnp.sum(w**2, axis=1)
    n_eff = 1.0 / sum_w2
    stderr = scatter * jnp.sqrt(sum_w2)
    return KernelRegression(mean=mean, scatter=scatter, n_eff=n_eff, stderr=stderr)


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
    (:func:`kernel_regression`) at that relation's observed x; the results are
    concatenated in that order, so entry ``observations.slices[name]`` of the output belongs to
    relation ``name`` and lines up with ``observations.y`` / ``observations.sigma``.

    Args:
        log_mhalo: log10 M_h [Msun] at z = 0, shape (n_halo,).
        log_state: log10 state at z = 0, shape (n_halo, 7) (see :func:`relation_coordinates`).
        valid: boolean mask of successfully solved halos, shape (n_halo,).
        observations: the relations to summarise (a static jit argument: hashable, compiled once
            per distinct set of observations).
        config: model constants (solar metallicity and oxygen abundance); static, like
            ``observations``.

    Returns:
        (mean, stderr), each shape (observations.n_summary,), in dex: the kernel-regression mean
        of each relation at each observed x, and its standard error scatter / sqrt(n_eff).
    """
    coords = relation_coordinates(log_mhalo, log_state, config)
    means, errors = [], []
    for rel in observations.relations:
        x, y = coords[rel.name]
        if rel.detection_limit is not None:  # the survey's view of each halo
            # Failed halos carry NaN: keep them out of the limit's derivative (double where).
            seen = rel.detection_limit.apply(jnp.where(valid, x, 0.0), jnp.where(valid, y, 0.0))
            y = jnp.where(valid, seen, y)
        result = kernel_regression(x, y, jnp.asarray(rel.x), valid)
        means.append(result.mean)
        errors.append(result.stderr)
    return jnp.concatenate(means), jnp.concatenate(errors)
