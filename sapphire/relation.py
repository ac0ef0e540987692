"""One observed relation (:class:`Relation`) and a survey's detection limit (:class:`DetectionLimit`).

The containers only; the package's literature data live in :mod:`sapphire.literature`, a user's
CSV tables are read by :mod:`sapphire.observation_files`, and a set of relations is an
:class:`sapphire.observations.Observations`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "RELATION_NAMES",
    "DEFAULT_LABELS",
    "X_RANGES",
    "DetectionLimit",
    "Relation",
    "check_scale",
    "default_bandwidth",
    "BANDWIDTH_PER_SPACING",
    "relations_digest",
]

#: Canonical order of the relations (also the order of the stacked summary vector).
RELATION_NAMES: tuple[str, ...] = ("smhm", "gas_ratio", "mzr")

#: Default axis labels of each relation (units in brackets).
DEFAULT_LABELS: dict[str, tuple[str, str]] = {
    "smhm": ("log10 M_h [Msun] (halo mass at z = 0)", "log10(M_* / M_h)"),
    "gas_ratio": ("log10 M_* [Msun]", "log10(M_ISM / M_*)"),
    "mzr": ("log10 M_* [Msun]", "12 + log10(O/H) (ISM)"),
}

#: Declared range of each relation's x [log10 Msun]: where its summaries may be evaluated (halo
#: masses of the model's populations for ``smhm``, stellar masses of galaxies for the others).
X_RANGES: dict[str, tuple[float, float]] = {
    "smhm": (9.0, 15.0),
    "gas_ratio": (6.0, 12.5),
    "mzr": (6.0, 12.5),
}


#: Default bandwidth in units of the median spacing of a relation's observed centres.  1x (0.25
#: dex) was measured rougher than Scott's rule at 128 halos (docs/design.md s.16); 2x
#: (0.5 dex for SMHM and MZR, 0.6 for xGASS) is wider than Scott's bandwidth at >= 128 halos.
BANDWIDTH_PER_SPACING: float = 2.0


def default_bandwidth(x: np.ndarray) -> float:
    """The default kernel bandwidth of a relation [units of x]: ``BANDWIDTH_PER_SPACING`` x the
    median spacing of its observed centres (0.5 dex for the default SMHM and MZR, 0.6 dex for
    xGASS); it does not depend on the model (summary definition 2, docs/design.md).  Needs >= 2
    centres."""
    return BANDWIDTH_PER_SPACING * float(np.median(np.diff(np.asarray(x, dtype=np.float64))))


# ----------------------------------------------------------------------------------------------
# Detection limits (the observation model of a ratio relation)
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DetectionLimit:
    """A survey's lower limit on y = log10(M_X / M_*) of a ratio relation (x = log10 M_*).

    A galaxy is detected when M_X > 10^log_mass_limit Msun and M_X / M_* > 10^log_ratio_limit;
    a survey whose published means include non-detections at their upper limits (xGASS) never
    reports a y below

        limit(x) = max(log_mass_limit - x, log_ratio_limit) + offset     [dex],

    so the mock observable is the model's y raised to that limit.  Both the max and the floor
    are taken smoothly over ``width`` dex (softplus / logaddexp), which keeps the summaries
    differentiable, and -- the reason this exists -- keeps a nearly empty model ISM (whose
    log10 gas ratio can swing by several dex for a 0.01 change of a parameter) from dominating
    a mean that the data never let go below the limit.  ``offset`` converts the survey's
    quantity to the model's (helium: log10 1.33).
    """

    log_mass_limit: float
    log_ratio_limit: float
    offset: float = 0.0
    width: float = 0.1

    def __post_init__(self) -> None:
        for field in ("log_mass_limit", "log_ratio_limit", "offset", "width"):
            value = getattr(self, field)
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ValueError(f"DetectionLimit: {field} = {value!r} is not a finite number")
            object.__setattr__(self, field, float(value))
        if self.width <= 0.0:
            raise ValueError(f"DetectionLimit: width = {self.width} dex is not > 0")

    def limit(self, x):
        """The (smoothed) limit on y at log10 M_* = x [dex]; jax.numpy, differentiable."""
        w = self.width
        return w * jnp.logaddexp((self.log_mass_limit - x) / w, self.log_ratio_limit / w) + self.offset

    def apply(self, x, y):
        """y as the survey reports it: limit + width * softplus((y - limit) / width) [dex]."""
        floor = self.limit(x)
        return floor + self.width * jax.nn.softplus((y - floor) / self.width)

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# Relation
# ----------------------------------------------------------------------------------------------
def _frozen_array(values: Any, relation: str, field: str) -> np.ndarray:
    try:
        arr = np.array(values, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Relation {relation!r}: {field} is not numeric ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"Relation {relation!r}: {field} must be 1-D, got shape {arr.shape}")
    arr.setflags(write=False)
    return arr


@dataclasses.dataclass(frozen=True)
class Relation:
    """One observed relation: points (x, y) with 1-sigma uncertainties ``sigma`` of y.

    Attributes:
        name: one of ``RELATION_NAMES`` (``"smhm"``, ``"gas_ratio"``, ``"mzr"``).
        x: abscissae, strictly increasing (log10 of a mass in Msun; see ``x_label``).
        y: observed mean relation at ``x`` (dex; see ``y_label``).
        sigma: 1-sigma uncertainty of ``y`` [dex], > 0.
        x_label, y_label: axis labels with units.
        source: provenance text (reference, file, what was changed).
        note: caveats that a plot or report of this relation must show (may be empty).
        detection_limit: the survey's lower limit on y (:class:`DetectionLimit`), applied to
            every model halo before the regression; ``None`` (default for a user's CSV): the
            model's y as it is.
        bandwidth: the Gaussian kernel's bandwidth h of the summaries [units of x], > 0 and
            finite; None (default): :func:`default_bandwidth` (twice the median spacing of ``x``;
            a one-point relation must give it).  ``x`` must lie in the name's ``X_RANGES``.

    ``x``, ``y`` and ``sigma`` are stored as read-only float64 copies.  Equality compares every
    field; the hash uses the numbers and the name, so a ``Relation`` may be a static jit argument.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    sigma: np.ndarray
    x_label: str = ""
    y_label: str = ""
    source: str = ""
    note: str = ""
    detection_limit: DetectionLimit | None = None
    bandwidth: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.detection_limit, Mapping):
            object.__setattr__(self, "detection_limit", DetectionLimit(**self.detection_limit))
        if self.detection_limit is not None and not isinstance(self.detection_limit, DetectionLimit):
            raise ValueError(
                f"Relation {self.name!r}: detection_limit must be a DetectionLimit or None, "
                f"got {self.detection_limit!r}"
            )
        if self.name not in RELATION_NAMES:
            raise ValueError(f"Relation: unknown name {self.name!r}; expected one of {RELATION_NAMES}")
        arrays = {f: _frozen_array(getattr(self, f), self.name, f) for f in ("x", "y", "sigma")}
        lengths = {f: a.size for f, a in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"Relation {self.name!r}: x, y, sigma lengths differ: {lengths}")
        if lengths["x"] == 0:
            raise ValueError(f"Relation {self.name!r}: no points")
        for field, arr in arrays.items():
            bad = np.flatnonzero(~np.isfinite(arr))
            if bad.size:
                i = int(bad[0])
                raise ValueError(f"Relation {self.name!r}: {field}[{i}] = {arr[i]} is not finite")
        bad = np.flatnonzero(arrays["sigma"] <= 0.0)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"Relation {self.name!r}: sigma[{i}] = {arrays['sigma'][i]} is not > 0")
        bad = np.flatnonzero(np.diff(arrays["x"]) <= 0.0)
        if bad.size:
            i = int(bad[0]) + 1
            raise ValueError(
                f"Relation {self.name!r}: x is not strictly increasing: "
                f"x[{i}] = {arrays['x'][i]} <= x[{i - 1}] = {arrays['x'][i - 1]}"
            )
        low, high = X_RANGES[self.name]
        bad = np.flatnonzero((arrays["x"] < low) | (arrays["x"] > high))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"Relation {self.name!r}: centre x[{i}] = {arrays['x'][i]} is outside the relation's "
                f"declared range [{low}, {high}]"
            )
        self._check_bandwidth(arrays["x"])
        for field in ("x_label", "y_label", "source", "note"):
            if not isinstance(getattr(self, field), str):
                raise ValueError(f"Relation {self.name!r}: {field} must be a string")
        for field, arr in arrays.items():
            object.__setattr__(self, field, arr)

    def _check_bandwidth(self, x: np.ndarray) -> None:
        value = self.bandwidth
        if value is None:
            if x.size < 2:
                raise ValueError(f"Relation {self.name!r}: one centre; give its bandwidth (> 0, units of x)")
            value = default_bandwidth(x)
        try:
            h = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"Relation {self.name!r}: bandwidth = {value!r} is not a number") from None
        if not (math.isfinite(h) and h > 0.0):
            raise ValueError(f"Relation {self.name!r}: bandwidth = {value!r} must be finite and > 0 (units of x)")
        object.__setattr__(self, "bandwidth", h)

    @property
    def size(self) -> int:
        """Number of points."""
        return int(self.x.size)

    def scaled(self, sigma_scale: float) -> Relation:
        """Copy with ``sigma`` multiplied by ``sigma_scale`` (> 0)."""
        scale = check_scale(sigma_scale, self.name)
        return dataclasses.replace(self, sigma=self.sigma * scale)

    def fingerprint(self) -> str:
        """Short sha256 hex digest of the name and the numbers (x, y, sigma)."""
        return relations_digest([self])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view (numbers as lists of floats, which round-trip exactly)."""
        return {
            "name": self.name,
            "x": [float(v) for v in self.x],
            "y": [float(v) for v in self.y],
            "sigma": [float(v) for v in self.sigma],
            "x_label": self.x_label,
            "y_label": self.y_label,
            "source": self.source,
            "note": self.note,
            "detection_limit": None if self.detection_limit is None else self.detection_limit.to_dict(),
            "bandwidth": self.bandwidth,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Relation:
        """Inverse of :meth:`to_dict`."""
        return cls(**dict(values))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Relation):
            return NotImplemented
        return (
            self.name == other.name
            and all(np.array_equal(getattr(self, f), getattr(other, f)) for f in ("x", "y", "sigma"))
            and (self.x_label, self.y_label, self.source, self.note, self.detection_limit, self.bandwidth)
            == (other.x_label, other.y_label, other.source, other.note, other.detection_limit, other.bandwidth)
        )

    def __hash__(self) -> int:
        return hash((self.name, self.fingerprint()))

    def __repr__(self) -> str:
        return (
            f"Relation(name={self.name!r}, n={self.size}, "
            f"x=[{self.x[0]:.3g}..{self.x[-1]:.3g}], bandwidth={self.bandwidth:g}, "
            f"fingerprint={self.fingerprint()!r})"
        )


def check_scale(sigma_scale: Any, name: str) -> float:
    """``sigma_scale`` as a float, finite and > 0; ``ValueError`` naming relation ``name``."""
    try:
        scale = float(sigma_scale)
    except (TypeError, ValueError):
        raise ValueError(f"sigma_scale for {name!r} must be a number, got {sigma_scale!r}") from None
    if not (math.isfinite(scale) and scale > 0.0):
        raise ValueError(f"sigma_scale for {name!r} must be finite and > 0, got {sigma_scale!r}")
    return scale


def relations_digest(relations: Iterable[Relation]) -> str:
    """16-hex sha256 of the relations' names, numbers, detection limits and kernel bandwidths
    (fingerprints)."""
    h = hashlib.sha256()
    for rel in relations:
        h.update(rel.name.encode())
        h.update(np.int64(rel.size).tobytes())
        for field in ("x", "y", "sigma"):
            h.update(np.ascontiguousarray(getattr(rel, field), dtype="<f8").tobytes())
        if rel.detection_limit is not None:  # (absent: the digest of earlier versions)
            h.update(json.dumps(rel.detection_limit.to_dict(), sort_keys=True).encode())
        h.update(np.float64(rel.bandwidth).astype("<f8").tobytes())  # summary definition 2
    return h.hexdigest()[:16]
