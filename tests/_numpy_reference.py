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
