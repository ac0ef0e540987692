"""The uniform prior box over the 8 free parameters (MODEL.md section 4)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

PARAMETER_NAMES: tuple[str, ...] = (
    "A_etaM",
    "B_etaM",
    "A_etaE",
    "B_etaE",
    "A_etaZ",
    "B_etaZ",
    "A_tdep",
    "B_tdep",
)


@dataclasses.dataclass(frozen=True)
class Prior:
    """Axis-aligned uniform box: ``names``, ``low``, ``high`` (tuples, one entry a parameter)."""

    names: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.low) == len(self.high)):
            raise ValueError("Prior: names, low and high must have the same length")
        for name, lo, hi in zip(self.names, self.low, self.high):
            if not lo < hi:
                raise ValueError(f"Prior: {name} has low={lo} >= high={hi}")

    @property
    def ndim(self) -> int:
        return len(self.names)

    @property
    def centre(self) -> np.ndarray:
        return 0.5 * (np.asarray(self.low) + np.asarray(self.high))

    @property
    def width(self) -> np.ndarray:
        return np.asarray(self.high) - np.asarray(self.low)

    def to_unit(self, theta: np.ndarray) -> np.ndarray:
        """Map parameters to the unit cube [0, 1]^d."""
        return (np.asarray(theta) - np.asarray(self.low)) / self.width

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        """Map points of the unit cube to parameters."""
        return np.asarray(self.low) + np.asarray(u) * self.width

    def corners(self) -> np.ndarray:
        """All 2^d corners of the box, shape (2^d, d)."""
        bits = (np.arange(2**self.ndim)[:, None] >> np.arange(self.ndim)[None, :]) & 1
        return self.from_unit(bits.astype(float))

    def validate(self, theta: Any, *, atol: float = 1e-12) -> np.ndarray:
        """Return ``theta`` as a float64 array of shape (d,) or (n, d); raise ``ValueError``
        naming the offending entry if it has the wrong shape, is not finite, or lies outside
        the box."""
        arr = np.asarray(theta, dtype=np.float64)
        if arr.ndim not in (1, 2) or arr.shape[-1] != self.ndim:
            raise ValueError(
                f"theta must have shape ({self.ndim},) or (n, {self.ndim}) in the order "
                f"{self.names}; got shape {arr.shape}"
            )
        rows = np.atleast_2d(arr)
        bad = ~np.isfinite(rows)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise ValueError(f"theta[{i}] has a non-finite {self.names[j]} = {rows[i, j]}")
        low, high = np.asarray(self.low), np.asarray(self.high)
        outside = (rows < low - atol) | (rows > high + atol)
        if outside.any():
            i, j = np.argwhere(outside)[0]
            raise ValueError(
                f"theta[{i}]: {self.names[j]} = {rows[i, j]} lies outside the prior box [{low[j]}, {high[j]}]"
            )
        return arr

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "low": list(self.low), "high": list(self.high)}


def latin_hypercube(prior: Prior, n: int, seed: int = 0, *, optimization: str | None = None) -> np.ndarray:
    """``n`` points of a seeded Latin hypercube (``scipy.stats.qmc``) in the prior box, (n, d).

    ``optimization``: None (plain) or scipy's ``"random-cd"`` (coordinate swaps lowering the
    centred discrepancy, which keeps the Latin property: the space-filling training designs).
    Same seed, same points.  The one Latin-hypercube helper of the package.
    """
    from scipy.stats import qmc

    if n < 0:
        raise ValueError(f"number of Latin-hypercube draws must be >= 0, got {n}")
    if n == 0:
        return np.zeros((0, prior.ndim))
    unit = qmc.LatinHypercube(d=prior.ndim, optimization=optimization, rng=np.random.default_rng(seed)).random(n)
    return prior.from_unit(unit)


DEFAULT_PRIOR = Prior(
    names=PARAMETER_NAMES,
    low=(-1.0, -3.0, -2.0, -3.0, -2.0, -3.0, -0.5, -3.0),
    high=(2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.5, 0.0),
)
