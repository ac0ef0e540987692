"""Calibration of the ensemble spread on held-out points (the validation split)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np

from .artifact import SobolevEmulator

#: Coverage of +-2 sigma for a Gaussian: the target of the spread calibration.
TWO_SIGMA_COVERAGE = math.erf(2.0 / math.sqrt(2.0))


def calibrate_spread(emu: SobolevEmulator, rows: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Factor c on the ensemble spread such that a fraction ``TWO_SIGMA_COVERAGE`` (95.45%)
    of the errors |mean - exact| on ``rows`` (the validation split) lies inside +-2 c spread,
    over all points and summaries.  Returns the factor and the raw / calibrated coverage."""
    mean, spread = (np.asarray(a) for a in emu.predict(rows["theta"], calibrated=False))
    err = np.abs(mean - rows["summaries"])
    if emu.ensemble_size < 2 or not np.all(spread > 0):
        reason = (
            f"an ensemble of {emu.ensemble_size} has no spread"
            if emu.ensemble_size < 2
            else f"the ensemble spread is 0 in {int(np.sum(~(spread > 0)))} of {spread.size} validation predictions"
        )
        warnings.warn(
            f"calibrate_spread: {reason}; the spread is left uncalibrated (factor 1.0), so the emulator error "
            "added to the likelihood is the raw spread",
            RuntimeWarning,
            stacklevel=2,
        )
        return {
            "factor": 1.0,
            "raw_coverage": float(np.mean(err <= 2 * spread)),
            "calibrated_coverage": float("nan"),
            "n_points": int(err.shape[0]),
        }
    ratio = err / (2.0 * spread)
    factor = float(np.quantile(ratio, TWO_SIGMA_COVERAGE))
    factor = max(factor, 1e-3)
    return {
        "factor": factor,
        "raw_coverage": float(np.mean(ratio <= 1.0)),
        "calibrated_coverage": float(np.mean(ratio <= factor)),
        "n_points": int(err.shape[0]),
    }
