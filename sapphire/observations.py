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
import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .literature import XGASS_DETECTION_LIMIT, default_relations, mzr_andrews_martini2013, smhm_behroozi2019_samples
from .observation_files import PathLike, read_relation_csv
from .relation import DEFAULT_LABELS, RELATION_NAMES, DetectionLimit, Relation, relations_digest

__all__ = [
    "RELATION_NAMES",
    "DEFAULT_LABELS",
    "DetectionLimit",
    "XGASS_DETECTION_LIMIT",
    "Relation",
    "Observations",
    "smhm_behroozi2019_samples",
    "mzr_andrews_martini2013",
]


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
                raise ValueError(f"Observations: expected Relation objects, got {type(rel).__name__}")
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
    def select(self, names: str | Iterable[str]) -> Observations:
        """The subset with the given relation names (order of ``names`` is irrelevant)."""
        wanted = (names,) if isinstance(names, str) else tuple(names)
        if not wanted:
            raise ValueError("Observations.select: no names given")
        for name in wanted:
            if name not in RELATION_NAMES:
                raise ValueError(f"Observations.select: unknown relation {name!r}; expected one of {RELATION_NAMES}")
            if name not in self.names:
                raise ValueError(f"Observations.select: relation {name!r} is not present; present: {self.names}")
        return Observations(tuple(rel for rel in self.relations if rel.name in wanted))

    def scaled(self, sigma_scale: float | Mapping[str, float]) -> Observations:
        """Copy with every ``sigma`` multiplied by ``sigma_scale`` (forecasts of smaller errors).

        ``sigma_scale`` is one positive number, or a mapping relation name -> factor (relations not
        named keep their sigma).
        """
        if isinstance(sigma_scale, Mapping):
            for name in sigma_scale:
                if name not in self.names:
                    raise ValueError(f"Observations.scaled: relation {name!r} is not present; present: {self.names}")
            return Observations(
                tuple(rel.scaled(sigma_scale[rel.name]) if rel.name in sigma_scale else rel for rel in self.relations)
            )
        return Observations(tuple(rel.scaled(sigma_scale) for rel in self.relations))

    # --- identity and serialisation ---------------------------------------------------------
    def fingerprint(self) -> str:
        """Short (16 hex digits) sha256 of the relation names and numbers (x, y, sigma)."""
        return relations_digest(self.relations)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view, with the fingerprint, for artifact metadata."""
        return {
            "relations": [rel.to_dict() for rel in self.relations],
            "fingerprint": self.fingerprint(),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Observations:
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
    def default(cls) -> Observations:
        """The package's default z = 0 constraints (data README, "The default z = 0 constraints").

        - smhm: Behroozi et al. (2019) centrals, 248 posterior samples of their Appendix J fit at
          z = 0, at log10 M_h = 10.0, 10.25, ..., 12.5; y = median over samples of log10(M_*/M_h);
          sigma = half the 16-84 percentile spread, plus 0.1 dex in quadrature.
        - gas_ratio: Catinella et al. (2018) xGASS/xCOLDGASS means at their 8 stellar masses,
          + log10(1.33) for helium; sigma = 0.1 dex.
        - mzr: Andrews & Martini (2013) fit at log10 M_* = 8.0, 8.25, ..., 10.5; sigma = 0.2 dex.
        """
        return cls(default_relations())

    @classmethod
    def from_csv(
        cls,
        smhm: PathLike | None = None,
        gas_ratio: PathLike | None = None,
        mzr: PathLike | None = None,
        detection_limits: Mapping[str, DetectionLimit] | None = None,
    ) -> Observations:
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
                dataclasses.replace(read_relation_csv(name, path), detection_limit=limits.get(name))
                for name, path in given.items()
                if path is not None
            )
        )
