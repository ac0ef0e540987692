"""Plain-NumPy references shared by the tests (independent of the JAX code they check)."""

from __future__ import annotations

import numpy as np


def numpy_observed_y(relation, x, y):
    """y as the relation's survey reports it: raised smoothly to its detection limit
    (sapphire.observations.DetectionLimit, written out again in NumPy), or y unchanged."""
    limit = relation.detection_limit
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if limit is None:
        return y
    w = limit.width
    with np.errstate(invalid="ignore"):  # failed halos carry NaN; the regression masks them
        floor = w * np.logaddexp((limit.log_mass_limit - x) / w, limit.log_ratio_limit / w) + limit.offset
        return floor + w * np.logaddexp(0.0, (y - floor) / w)


# Constants of summary definition 2 (sapphire.summaries), written out again.
SLOPE_RIDGE, MIN_SUPPORT, SUPPORT_ERROR, SUPPORT_FLOOR = 0.01, 3.0, 0.3, 1e-3


def numpy_kernel_regression(x, y, centres, bandwidth, valid=None):
    """Local-linear Gaussian-kernel regression (sapphire.summaries.kernel_regression) as a
    weighted least-squares problem, solved centre by centre with the normal equations:
    minimise sum_j w_j (y_j - a - b d_j)^2 + SLOPE_RIDGE h^2 b^2, w_j = K_j / sum K, d_j = x_j - c;
    mean = a, l = first row of (X^T W X + R)^-1 X^T W, scatter^2 = sum w r^2,
    stderr^2 = scatter^2 |l|^2 + (SUPPORT_ERROR MIN_SUPPORT / (sum K + SUPPORT_FLOOR MIN_SUPPORT))^2.
    Invalid points are dropped.  Returns a dict of arrays (n_centres,)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if valid is not None:
        x, y = x[np.asarray(valid)], y[np.asarray(valid)]
    centres = np.asarray(centres, float)
    h = np.broadcast_to(np.asarray(bandwidth, float), centres.shape)
    out = {k: [] for k in ("mean", "scatter", "n_eff", "stderr", "support")}
    for c, hc in zip(centres, h):
        d = x - c
        k = np.exp(-0.5 * (d / hc) ** 2)
        w = k / k.sum()
        design = np.stack([np.ones_like(d), d], axis=1)
        normal = design.T @ (w[:, None] * design) + np.diag([0.0, SLOPE_RIDGE * hc**2])
        smoother = np.linalg.solve(normal, design.T * w)  # (2, n): coefficients = smoother @ y
        a, b = smoother @ y
        resid = y - a - b * d
        scatter = np.sqrt(np.sum(w * resid**2))
        l2 = np.sum(smoother[0] ** 2)
        support = k.sum()
        extra = SUPPORT_ERROR * MIN_SUPPORT / (support + SUPPORT_FLOOR * MIN_SUPPORT)
        out["mean"].append(a)
        out["scatter"].append(scatter)
        out["n_eff"].append(1.0 / l2)
        out["stderr"].append(np.sqrt(scatter**2 * l2 + extra**2))
        out["support"].append(support)
    return {k: np.array(v) for k, v in out.items()}
