"""The observed z = 0 scaling relations the model is compared with.

Three relations (MODEL.md section 8; data choices in ``sapphire/data/PROVENANCE.md``):

``smhm``
    stellar-mass--halo-mass ratio, x = log10 M_h [Msun] (z = 0 halo mass), y = log10(M_* / M_h).
``gas_ratio``
    ISM gas-to-stellar ratio, x = log10 M_* [Msun], y = log10(M_ISM / M_*).
``mzr``
    ISM mass--metallicity relation, x = log10 M_* [Msun], y = 12 + log10(O/H).

Each relation is a :class:`Relation` of points (x, y, sigma): y is the observed mean relation at x
and sigma [dex] the 1-sigma uncertainty of that mean.  An :class:`Observations` holds any subset of
the three, always in the canonical order ``smhm, gas_ratio, mzr``; that order (and the point order
within each relation) defines the stacked summary vector of :mod:`sapphire.summaries`.

``Observations.default()`` builds the package's default constraints from the shipped data
exactly as the data README prescribes; ``Observations.from_csv`` reads a user's own tables of
(x, y, sigma), and the rest of the pipeline treats both the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "RELATION_NAMES",
    "DetectionLimit",
    "XGASS_DETECTION_LIMIT",
    "Relation",
    "Observations",
    "smhm_behroozi2019_samples",
    "mzr_andrews_martini2013",
]

#: Canonical order of the relations (also the order of the stacked summary vector).
RELATION_NAMES: tuple[str, ...] = ("smhm", "gas_ratio", "mzr")

#: Default axis labels of each relation (units in brackets).
DEFAULT_LABELS: dict[str, tuple[str, str]] = {
    "smhm": ("log10 M_h [Msun] (halo mass at z = 0)", "log10(M_* / M_h)"),
    "gas_ratio": ("log10 M_* [Msun]", "log10(M_ISM / M_*)"),
    "mzr": ("log10 M_* [Msun]", "12 + log10(O/H) (ISM)"),
}

PathLike = Union[str, "os.PathLike[str]"]

_DATA_PACKAGE = "sapphire"
_SMHM_FILE = "data/smhm_behroozi2019_cen_params.txt"
_GAS_FILE = "data/cold_gas_fraction_catinella2018.csv"

#: Default x grids and uncertainties (our choices, data README).
SMHM_LOG_MHALO = np.linspace(10.0, 12.5, 11)
SMHM_SYSTEMATIC_DEX = 0.1
GAS_RATIO_SIGMA_DEX = 0.1
HELIUM_CORRECTION = 1.33
MZR_LOG_MSTAR = np.linspace(8.0, 10.5, 11)
MZR_SIGMA_DEX = 0.2


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


#: xGASS (Catinella et al. 2018): HI detected down to M_HI/M_* = 2% for M_* > 10^9.7 Msun and
#: to M_HI = 10^8 Msun below (the two limits meet at 10^9.7); in the model's units (total ISM
#: including helium) x 1.33.  H2 is ignored in the limit.  Smoothed over 0.1 dex.
XGASS_DETECTION_LIMIT = DetectionLimit(
    log_mass_limit=8.0, log_ratio_limit=math.log10(0.02), offset=math.log10(HELIUM_CORRECTION), width=0.1
)


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

    def __post_init__(self) -> None:
        if isinstance(self.detection_limit, Mapping):
            object.__setattr__(self, "detection_limit", DetectionLimit(**self.detection_limit))
        if self.detection_limit is not None and not isinstance(self.detection_limit, DetectionLimit):
            raise ValueError(
                f"Relation {self.name!r}: detection_limit must be a DetectionLimit or None, "
                f"got {self.detection_limit!r}"
            )
        if self.name not in RELATION_NAMES:
            raise ValueError(
                f"Relation: unknown name {self.name!r}; expected one of {RELATION_NAMES}"
            )
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
            raise ValueError(
                f"Relation {self.name!r}: sigma[{i}] = {arrays['sigma'][i]} is not > 0"
            )
        bad = np.flatnonzero(np.diff(arrays["x"]) <= 0.0)
        if bad.size:
            i = int(bad[0]) + 1
            raise ValueError(
                f"Relation {self.name!r}: x is not strictly increasing: "
                f"x[{i}] = {arrays['x'][i]} <= x[{i - 1}] = {arrays['x'][i - 1]}"
            )
        for field in ("x_label", "y_label", "source", "note"):
            if not isinstance(getattr(self, field), str):
                raise ValueError(f"Relation {self.name!r}: {field} must be a string")
        for field, arr in arrays.items():
            object.__setattr__(self, field, arr)

    @property
    def size(self) -> int:
        """Number of points."""
        return int(self.x.size)

    def scaled(self, sigma_scale: float) -> "Relation":
        """Copy with ``sigma`` multiplied by ``sigma_scale`` (> 0)."""
        scale = _check_scale(sigma_scale, self.name)
        return dataclasses.replace(self, sigma=self.sigma * scale)

    def fingerprint(self) -> str:
        """Short sha256 hex digest of the name and the numbers (x, y, sigma)."""
        return _digest([self])

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
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Relation":
        """Inverse of :meth:`to_dict`."""
        return cls(**dict(values))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Relation):
            return NotImplemented
        return (
            self.name == other.name
            and all(
                np.array_equal(getattr(self, f), getattr(other, f)) for f in ("x", "y", "sigma")
            )
            and (self.x_label, self.y_label, self.source, self.note, self.detection_limit)
            == (other.x_label, other.y_label, other.source, other.note, other.detection_limit)
        )

    def __hash__(self) -> int:
        return hash((self.name, self.fingerprint()))

    def __repr__(self) -> str:
        return (
            f"Relation(name={self.name!r}, n={self.size}, "
            f"x=[{self.x[0]:.3g}..{self.x[-1]:.3g}], fingerprint={self.fingerprint()!r})"
        )


def _check_scale(sigma_scale: Any, name: str) -> float:
    try:
        scale = float(sigma_scale)
    except (TypeError, ValueError):
        raise ValueError(
            f"sigma_scale for {name!r} must be a number, got {sigma_scale!r}"
        ) from None
    if not (math.isfinite(scale) and scale > 0.0):
        raise ValueError(f"sigma_scale for {name!r} must be finite and > 0, got {sigma_scale!r}")
    return scale


def _digest(relations: Iterable[Relation]) -> str:
    h = hashlib.sha256()
    for rel in relations:
        h.update(rel.name.encode())
        h.update(np.int64(rel.size).tobytes())
        for field in ("x", "y", "sigma"):
            h.update(np.ascontiguousarray(getattr(rel, field), dtype="<f8").tobytes())
        if rel.detection_limit is not None:  # (absent: the digest of earlier versions)
            h.update(json.dumps(rel.detection_limit.to_dict(), sort_keys=True).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Observations
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Observations:
    """A set of observed relations, in the canonical order ``smhm, gas_ratio, mzr``.

    Build with ``Observations.default()``, ``Observations.from_csv(...)`` or
    ``Observations(relations)`` (any order in, canonical order out; each name at most once).

    The stacked summary vector (see :func:`sapphire.summaries.summary_statistics`) is the
    concatenation of the relations' points in ``relations`` order; ``slices[name]`` picks one
    relation out of it, and ``y``/``sigma`` give the observed vector and its uncertainties.
    Hashable (by ``fingerprint``), so it can be a static ``jax.jit`` argument.
    """

    relations: tuple[Relation, ...]

    def __post_init__(self) -> None:
        rels = tuple(self.relations)
        if not rels:
            raise ValueError("Observations: at least one relation is required")
        seen: set[str] = set()
        for rel in rels:
            if not isinstance(rel, Relation):
                raise ValueError(
                    f"Observations: expected Relation objects, got {type(rel).__name__}"
                )
            if rel.name in seen:
                raise ValueError(f"Observations: relation {rel.name!r} given more than once")
            seen.add(rel.name)
        order = {name: i for i, name in enumerate(RELATION_NAMES)}
        object.__setattr__(self, "relations", tuple(sorted(rels, key=lambda r: order[r.name])))

    # --- views ------------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        """Names of the relations present, in canonical order."""
        return tuple(rel.name for rel in self.relations)

    @property
    def n_summary(self) -> int:
        """Total number of points (length of the stacked summary vector)."""
        return sum(rel.size for rel in self.relations)

    @property
    def slices(self) -> dict[str, slice]:
        """Relation name -> slice of the stacked summary vector."""
        out: dict[str, slice] = {}
        start = 0
        for rel in self.relations:
            out[rel.name] = slice(start, start + rel.size)
            start += rel.size
        return out

    @property
    def x(self) -> np.ndarray:
        """Stacked abscissae (kernel centres), shape (n_summary,)."""
        return np.concatenate([rel.x for rel in self.relations])

    @property
    def y(self) -> np.ndarray:
        """Stacked observed values, shape (n_summary,)."""
        return np.concatenate([rel.y for rel in self.relations])

    @property
    def sigma(self) -> np.ndarray:
        """Stacked 1-sigma uncertainties [dex], shape (n_summary,)."""
        return np.concatenate([rel.sigma for rel in self.relations])

    def __getitem__(self, name: str) -> Relation:
        for rel in self.relations:
            if rel.name == name:
                return rel
        raise KeyError(f"Observations: no relation {name!r}; present: {self.names}")

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __len__(self) -> int:
        return len(self.relations)

    # --- derived sets -----------------------------------------------------------------------
    def select(self, names: str | Iterable[str]) -> "Observations":
        """The subset with the given relation names (order of ``names`` is irrelevant)."""
        wanted = (names,) if isinstance(names, str) else tuple(names)
        if not wanted:
            raise ValueError("Observations.select: no names given")
        for name in wanted:
            if name not in RELATION_NAMES:
                raise ValueError(
                    f"Observations.select: unknown relation {name!r}; expected one of "
                    f"{RELATION_NAMES}"
                )
            if name not in self.names:
                raise ValueError(
                    f"Observations.select: relation {name!r} is not present; present: {self.names}"
                )
        return Observations(tuple(rel for rel in self.relations if rel.name in wanted))

    def scaled(self, sigma_scale: float | Mapping[str, float]) -> "Observations":
        """Copy with every ``sigma`` multiplied by ``sigma_scale`` (forecasts of smaller errors).

        ``sigma_scale`` is one positive number, or a mapping relation name -> factor (relations not
        named keep their sigma).
        """
        if isinstance(sigma_scale, Mapping):
            for name in sigma_scale:
                if name not in self.names:
                    raise ValueError(
                        f"Observations.scaled: relation {name!r} is not present; present: "
                        f"{self.names}"
                    )
            return Observations(
                tuple(
                    rel.scaled(sigma_scale[rel.name]) if rel.name in sigma_scale else rel
                    for rel in self.relations
                )
            )
        return Observations(tuple(rel.scaled(sigma_scale) for rel in self.relations))

    # --- identity and serialisation ---------------------------------------------------------
    def fingerprint(self) -> str:
        """Short (16 hex digits) sha256 of the relation names and numbers (x, y, sigma)."""
        return _digest(self.relations)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view, with the fingerprint, for artifact metadata."""
        return {
            "relations": [rel.to_dict() for rel in self.relations],
            "fingerprint": self.fingerprint(),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Observations":
        """Inverse of :meth:`to_dict`; checks the stored fingerprint when there is one."""
        obs = cls(tuple(Relation.from_dict(r) for r in values["relations"]))
        stored = values.get("fingerprint")
        if stored is not None and stored != obs.fingerprint():
            raise ValueError(
                f"Observations.from_dict: stored fingerprint {stored!r} does not match the "
                f"numbers ({obs.fingerprint()!r})"
            )
        return obs

    def to_json(self) -> str:
        """``json.dumps(self.to_dict())``."""
        return json.dumps(self.to_dict())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Observations):
            return NotImplemented
        return self.relations == other.relations

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        parts = ", ".join(f"{rel.name}[{rel.size}]" for rel in self.relations)
        return f"Observations({parts}, fingerprint={self.fingerprint()!r})"

    # --- constructors -----------------------------------------------------------------------
    @classmethod
    def default(cls) -> "Observations":
        """The package's default z = 0 constraints (data README, "The default z = 0 constraints").

        - smhm: Behroozi et al. (2019) centrals, 248 posterior samples of their Appendix J fit at
          z = 0, at log10 M_h = 10.0, 10.25, ..., 12.5; y = median over samples of log10(M_*/M_h);
          sigma = half the 16-84 percentile spread, plus 0.1 dex in quadrature.
        - gas_ratio: Catinella et al. (2018) xGASS/xCOLDGASS means at their 8 stellar masses,
          + log10(1.33) for helium; sigma = 0.1 dex.
        - mzr: Andrews & Martini (2013) fit at log10 M_* = 8.0, 8.25, ..., 10.5; sigma = 0.2 dex.
        """
        return cls((_default_smhm(), _default_gas_ratio(), _default_mzr()))

    @classmethod
    def from_csv(
        cls,
        smhm: PathLike | None = None,
        gas_ratio: PathLike | None = None,
        mzr: PathLike | None = None,
        detection_limits: Mapping[str, DetectionLimit] | None = None,
    ) -> "Observations":
        """A user's own tables, any subset of the three relations (at least one).

        ``detection_limits`` maps a relation name to its survey's :class:`DetectionLimit`
        (e.g. ``{"gas_ratio": XGASS_DETECTION_LIMIT}`` for xGASS-like means); by default a
        user's table has none.

        Each file: any number of ``#`` comment lines (and blank lines), then the header
        ``x,y,sigma``, then one point per line.  x must be strictly increasing, every value finite
        and sigma > 0.  The comment lines are kept in ``source``.

        Raises:
            FileNotFoundError: a named file does not exist.
            ValueError: bad header, row or value (the message names file, line and column).
        """
        given = {"smhm": smhm, "gas_ratio": gas_ratio, "mzr": mzr}
        if all(path is None for path in given.values()):
            raise ValueError("Observations.from_csv: give at least one of smhm, gas_ratio, mzr")
        limits = dict(detection_limits or {})
        unknown = sorted(set(limits) - {name for name, path in given.items() if path is not None})
        if unknown:
            raise ValueError(f"Observations.from_csv: detection_limits for {unknown}, which have no table")
        return cls(
            tuple(
                dataclasses.replace(_read_relation_csv(name, path), detection_limit=limits.get(name))
                for name, path in given.items()
                if path is not None
            )
        )


# ----------------------------------------------------------------------------------------------
# CSV reader
# ----------------------------------------------------------------------------------------------
_CSV_COLUMNS = ("x", "y", "sigma")


def _read_relation_csv(name: str, path: PathLike) -> Relation:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Observations.from_csv: {name} file {path!r} not found")
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    comments: list[str] = []
    header_line = None
    rows: list[tuple[int, list[str]]] = []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if header_line is None:
                comments.append(line.lstrip("#").strip())
            continue
        if header_line is None:
            header_line = lineno
            columns = tuple(c.strip().lower() for c in line.split(","))
            if columns != _CSV_COLUMNS:
                raise ValueError(
                    f"{path}: line {lineno}: header must be 'x,y,sigma', got {line!r}"
                )
            continue
        rows.append((lineno, [c.strip() for c in line.split(",")]))
    if header_line is None:
        raise ValueError(f"{path}: no header line 'x,y,sigma' found")
    if not rows:
        raise ValueError(f"{path}: no data rows after the header (line {header_line})")
    values = np.empty((len(rows), 3))
    for i, (lineno, cells) in enumerate(rows):
        where = f"{path}: line {lineno} (data row {i + 1})"
        if len(cells) != 3:
            raise ValueError(f"{where}: expected 3 columns x,y,sigma, got {len(cells)}")
        for j, (column, cell) in enumerate(zip(_CSV_COLUMNS, cells)):
            try:
                value = float(cell)
            except ValueError:
                raise ValueError(f"{where}, column {column!r}: {cell!r} is not a number") from None
            if not math.isfinite(value):
                raise ValueError(f"{where}, column {column!r}: {cell!r} is not finite")
            if column == "sigma" and value <= 0.0:
                raise ValueError(f"{where}, column 'sigma': {cell!r} is not > 0")
            values[i, j] = value
        if i > 0 and values[i, 0] <= values[i - 1, 0]:
            raise ValueError(
                f"{where}, column 'x': {cells[0]!r} is not greater than the previous x "
                f"({values[i - 1, 0]!r}); x must be strictly increasing"
            )
    x_label, y_label = DEFAULT_LABELS[name]
    source = f"user CSV {path}"
    if comments:
        source += ": " + " ".join(c for c in comments if c)
    return Relation(
        name=name,
        x=values[:, 0],
        y=values[:, 1],
        sigma=values[:, 2],
        x_label=x_label,
        y_label=y_label,
        source=source,
        note="",
    )


# ----------------------------------------------------------------------------------------------
# Default data
# ----------------------------------------------------------------------------------------------
def _read_package_text(relative: str) -> str:
    return resources.files(_DATA_PACKAGE).joinpath(relative).read_text(encoding="utf-8")


def _load_smhm_samples() -> dict[str, np.ndarray]:
    """Behroozi+2019 parameter samples as column name -> (n_samples,) array (row 0 = best fit)."""
    text = _read_package_text(_SMHM_FILE)
    names = None
    for line in text.splitlines():
        if line.startswith("#") and "Columns:" in line:
            names = line.split("Columns:", 1)[1].split()
            break
    if names is None:
        raise ValueError(f"{_SMHM_FILE}: no '# Columns:' header line")
    rows = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    table = np.array(rows, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != len(names):
        raise ValueError(f"{_SMHM_FILE}: expected {len(names)} columns, got shape {table.shape}")
    return {name: table[:, i] for i, name in enumerate(names)}


def smhm_behroozi2019_samples(log_mhalo: Any, redshift: float = 0.0) -> np.ndarray:
    """log10(M_*/M_h) of every Behroozi et al. (2019) central-galaxy posterior sample.

    Their Appendix J median fit (form in the data file header), true stellar mass, halo mass =
    peak virial mass [Msun].

    Args:
        log_mhalo: log10 M_h [Msun], shape (n_x,).
        redshift: z >= 0.

    Returns:
        array (n_samples, n_x); row 0 is the best fit.  Samples with unphysical DELTA/GAMMA give
        odd (but finite) curves: use medians and percentiles across samples.  Non-finite entries
        (none occur at z = 0 or 2) are returned as NaN.
    """
    p = _load_smhm_samples()
    z = float(redshift)
    a = 1.0 / (1.0 + z)
    lm = np.atleast_1d(np.asarray(log_mhalo, dtype=np.float64))[None, :]

    def evolve(key: str) -> np.ndarray:
        return p[key] + p[key + "_A"] * (a - 1.0) - p[key + "_A2"] * np.log(a) + p[key + "_Z"] * z

    with np.errstate(all="ignore"):
        log_m1 = evolve("M_1")[:, None]
        eps = evolve("EFF_0")[:, None]
        alpha = evolve("ALPHA")[:, None]
        beta = (p["BETA"] + p["BETA_A"] * (a - 1.0) + p["BETA_Z"] * z)[:, None]
        delta = p["DELTA"][:, None]
        gamma = (10.0 ** (p["GAMMA"] + p["GAMMA_A"] * (a - 1.0) + p["GAMMA_Z"] * z))[:, None]
        x = lm - log_m1
        log_mstar = (
            log_m1
            + eps
            - np.log10(10.0 ** (-alpha * x) + 10.0 ** (-beta * x))
            + gamma * np.exp(-0.5 * (x / delta) ** 2)
        )
        ratio = log_mstar - lm
    return np.where(np.isfinite(ratio), ratio, np.nan)


def mzr_andrews_martini2013(log_mstar: Any) -> np.ndarray:
    """Andrews & Martini (2013, eq. 5, Table 4) direct-method MZR: 12 + log10(O/H).

    12 + log(O/H) = 8.798 - log10(1 + (10^8.901 / M_*)^0.640), log10 M_* [Msun, Kroupa IMF],
    valid for log10 M_* = 7.4 .. 10.5.
    """
    log_mstar = np.asarray(log_mstar, dtype=np.float64)
    return 8.798 - np.log10(1.0 + 10.0 ** (0.640 * (8.901 - log_mstar)))


def _default_smhm() -> Relation:
    x = SMHM_LOG_MHALO.copy()
    samples = smhm_behroozi2019_samples(x, 0.0)
    y = np.nanmedian(samples, axis=0)
    p16, p84 = np.nanpercentile(samples, [16.0, 84.0], axis=0)
    sigma = np.hypot(0.5 * (p84 - p16), SMHM_SYSTEMATIC_DEX)
    x_label, y_label = DEFAULT_LABELS["smhm"]
    return Relation(
        name="smhm",
        x=x,
        y=y,
        sigma=sigma,
        x_label=x_label,
        y_label=y_label,
        source=(
            "Behroozi et al. (2019, MNRAS 488, 3143) UniverseMachine DR1, centrals, true stellar "
            f"mass: median over the {samples.shape[0]} posterior samples of the Appendix J fit at "
            "z = 0; sigma = half the 16-84 percentile spread (+) 0.1 dex systematic in "
            f"quadrature (package data {_SMHM_FILE})"
        ),
        note=(
            "Observed halo mass is the peak virial mass (Bryan & Norman 1998); the model's x is "
            "the z = 0 halo mass (same for centrals whose halos still grow)."
        ),
    )


def _default_gas_ratio() -> Relation:
    text = _read_package_text(_GAS_FILE)
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    header = [c.strip() for c in lines[0].split(",")]
    if header != ["log10_mstar", "log10_mcold_over_mstar"]:
        raise ValueError(f"{_GAS_FILE}: unexpected header {header}")
    table = np.array([[float(c) for c in line.split(",")] for line in lines[1:]])
    x = table[:, 0]
    y = table[:, 1] + math.log10(HELIUM_CORRECTION)
    x_label, y_label = DEFAULT_LABELS["gas_ratio"]
    return Relation(
        name="gas_ratio",
        x=x,
        y=y,
        sigma=np.full(x.shape, GAS_RATIO_SIGMA_DEX),
        x_label=x_label,
        y_label=y_label,
        source=(
            "Catinella et al. (2018, MNRAS 476, 875) xGASS + xCOLDGASS mean "
            "log10((M_HI + M_H2)/M_*) in stellar-mass bins (Chabrier IMF), + log10(1.33) for "
            f"helium; sigma = 0.1 dex (package data {_GAS_FILE})"
        ),
        note=(
            "The means include non-detections (at their upper limits), so they sit low for a "
            "star-forming-only model; model halos below the xGASS detection limit (max(10^8 Msun, "
            "2% of M_*) x 1.33, smoothed over 0.1 dex) enter at it: say so on every plot."
        ),
        detection_limit=XGASS_DETECTION_LIMIT,
    )


def _default_mzr() -> Relation:
    x = MZR_LOG_MSTAR.copy()
    x_label, y_label = DEFAULT_LABELS["mzr"]
    return Relation(
        name="mzr",
        x=x,
        y=mzr_andrews_martini2013(x),
        sigma=np.full(x.shape, MZR_SIGMA_DEX),
        x_label=x_label,
        y_label=y_label,
        source=(
            "Andrews & Martini (2013, ApJ 765, 140) eq. 5 / Table 4 direct-method fit, "
            "12 + log(O/H) = 8.798 - log10(1 + (10^8.901 / M_*)^0.640); sigma = 0.2 dex "
            "(systematic between metallicity calibrations)"
        ),
        note=(
            "Stellar masses are Kroupa IMF (Chabrier masses are about 0.03 dex lower; not "
            "shifted). Direct-method metallicities of SDSS star-forming stacks."
        ),
    )
