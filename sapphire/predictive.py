"""Prior (and posterior) predictive checks: does a set of model draws bracket each data point?"""

from __future__ import annotations

import warnings

import numpy as np

from .observations import Observations

__all__ = ["predictive_coverage"]


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
            "relation": names[i],
            "x": float(obs.x[i]),
            "y": float(y[i]),
            "sigma": float(obs.sigma[i]),
            "envelope": [fin(lo[i]), fin(hi[i])],
            "band": [fin(p_lo[i]), fin(p_hi[i])],
            "inside_envelope": bool(in_env[i]),
            "inside_band": bool(in_band[i]),
            "n_finite": int(n_finite[i]),
        }
        for i in range(obs.n_summary)
    ]
    fractions = {
        name: {
            "inside_envelope": float(np.mean(in_env[sl])),
            "inside_band": float(np.mean(in_band[sl])),
            "n_points": sl.stop - sl.start,
        }
        for name, sl in obs.slices.items()
    }
    fractions["all"] = {
        "inside_envelope": float(np.mean(in_env)),
        "inside_band": float(np.mean(in_band)),
        "n_points": obs.n_summary,
    }
    return {"percentiles": list(percentiles), "n_draws": int(means.shape[0]), "points": points, "fractions": fractions}
