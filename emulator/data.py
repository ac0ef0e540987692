"""Training data for the emulator: any training set with the store API of :mod:`training_sets`
(``valid_mask``, ``load``, ``batches``, ``prior``, ``observations``, ``summary_names``, ``fingerprint``) -- a Zarr store
(path or ``open_training_set`` view), or :class:`InMemoryTrainingSet` (numpy arrays, an .npz
file, or a dict).  Each epoch streams the training split through ``ts.batches`` in blocks of
``block_size`` points (for a store: chunk groups through its shuffle buffer, never the whole
store); inside a block every member draws its own minibatch order, and one compiled
``lax.scan`` runs the block's optimiser steps for all K members at once (``jax.vmap`` over the
stacked member parameters).

Design points that are not done, had a failed halo (``n_failed > 0``) or have a non-finite
entry are excluded before the split and COUNTED (``emu.training["excluded"]``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sapphire.observations import Observations
from sapphire.population_summaries import summary_names
from sapphire.prior import DEFAULT_PRIOR, Prior

from .network import Scalings

DATA_KEYS = ("theta", "summaries", "summary_stderr", "summary_jacobian")


# ----------------------------------------------------------------------------------------------
# Data layer: an in-memory training set with the store's API, and the adapter
# ----------------------------------------------------------------------------------------------
class InMemoryTrainingSet:
    """Numpy arrays with the API of ``training_sets.TrainingSet`` (for tests, development
    data and small experiments).

    Arrays: ``theta`` (N, 8) [physical units], ``summaries`` (N, S), ``summary_stderr`` (N, S),
    ``summary_jacobian`` (N, S, 8) [d summary / d theta], ``n_failed`` (N,) int (default 0),
    ``done`` (N,) bool (default True), ``has_jacobian`` (N,) bool (default True; False: a
    value-only point, whose Jacobian row is ignored, NaN allowed).  ``prior`` (default ``DEFAULT_PRIOR``),
    ``observations`` (default ``Observations.default()``), ``attrs`` (free metadata).
    ``fingerprint``: sha256 of the arrays (16 hex digits).
    """

    schema_version = 0

    def __init__(
        self,
        theta,
        summaries,
        summary_stderr,
        summary_jacobian,
        n_failed=None,
        done=None,
        has_jacobian=None,
        *,
        prior: Prior = DEFAULT_PRIOR,
        observations: Observations | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.theta = np.asarray(theta, np.float64)
        self.summaries = np.asarray(summaries, np.float64)
        self.summary_stderr = np.asarray(summary_stderr, np.float64)
        self.summary_jacobian = np.asarray(summary_jacobian, np.float64)
        n = self.theta.shape[0]
        self.n_failed = np.zeros(n, np.int64) if n_failed is None else np.asarray(n_failed, np.int64)
        self.done = np.ones(n, bool) if done is None else np.asarray(done, bool)
        self.has_jacobian = np.ones(n, bool) if has_jacobian is None else np.asarray(has_jacobian, bool)
        self.prior = prior
        self.observations = observations if observations is not None else Observations.default()
        self.summary_names = summary_names(self.observations)
        self.attrs = dict(attrs or {})
        s, d = len(self.summary_names), prior.ndim
        expected = {
            "theta": (n, d),
            "summaries": (n, s),
            "summary_stderr": (n, s),
            "summary_jacobian": (n, s, d),
            "n_failed": (n,),
            "done": (n,),
            "has_jacobian": (n,),
        }
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"InMemoryTrainingSet: {name} has shape {getattr(self, name).shape}, expected {shape}")
        digest = hashlib.sha256()
        for name in expected:
            digest.update(np.ascontiguousarray(getattr(self, name)).tobytes())
        digest.update(self.observations.fingerprint().encode())
        self.fingerprint = digest.hexdigest()[:16]

    @classmethod
    def from_npz(cls, path: str | os.PathLike, **kwargs) -> InMemoryTrainingSet:
        """Arrays named as in the constructor, from an .npz file."""
        with np.load(path) as npz:
            arrays = {
                k: npz[k]
                for k in (
                    "theta",
                    "summaries",
                    "summary_stderr",
                    "summary_jacobian",
                    "n_failed",
                    "done",
                    "has_jacobian",
                )
                if k in npz.files
            }
        return cls(**arrays, **kwargs)

    @property
    def n_points(self) -> int:
        return int(self.theta.shape[0])

    def valid_mask(self) -> np.ndarray:
        """(N,) bool: done, no failed halo, every summary, stderr and (where it has one) Jacobian
        entry finite."""
        finite = (
            np.isfinite(self.summaries).all(axis=1)
            & np.isfinite(self.summary_stderr).all(axis=1)
            & (np.isfinite(self.summary_jacobian).all(axis=(1, 2)) | ~self.has_jacobian)
        )
        return self.done & (self.n_failed == 0) & finite

    def load(self, indices=None) -> dict[str, np.ndarray]:
        """Rows at ``indices`` (sorted, like the store), as a dict of numpy arrays."""
        idx = np.arange(self.n_points) if indices is None else np.sort(np.asarray(indices, np.int64))
        return {name: getattr(self, name)[idx] for name in (*DATA_KEYS, "n_failed", "has_jacobian")}

    def batches(
        self, batch_size: int, indices=None, seed: int = 0, buffer_chunks: int = 8
    ) -> Iterator[dict[str, np.ndarray]]:
        """One seeded shuffled pass over ``indices`` (default: valid rows); last batch partial."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        idx = np.flatnonzero(self.valid_mask()) if indices is None else np.asarray(indices, np.int64)
        idx = np.random.default_rng(seed).permutation(idx)
        for start in range(0, idx.size, batch_size):
            rows = idx[start : start + batch_size]
            yield {name: getattr(self, name)[rows] for name in (*DATA_KEYS, "n_failed", "has_jacobian")}


def as_training_set(source):
    """A training set with the store API from: a store view (returned as is), a path to a Zarr
    store (``training_sets.open_training_set``), a path to an .npz file or a dict of arrays
    (:class:`InMemoryTrainingSet`)."""
    if hasattr(source, "valid_mask") and hasattr(source, "batches") and hasattr(source, "load"):
        return source
    if isinstance(source, Mapping):
        return InMemoryTrainingSet(**dict(source))
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ValueError(f"training set {str(path)!r} does not exist")
        if path.suffix == ".npz":
            return InMemoryTrainingSet.from_npz(path)
        from training_sets import open_training_set

        return open_training_set(path)
    raise ValueError(
        f"cannot use a {type(source).__name__} as a training set: give a store path, a "
        "training_sets view, an .npz path, a dict of arrays or an InMemoryTrainingSet"
    )


def exclusion_counts(ts) -> tuple[np.ndarray, dict[str, int]]:
    """Valid design points (sorted indices) and how many were excluded and why (a point can
    have several reasons; ``excluded`` counts each point once)."""
    valid = np.asarray(ts.valid_mask(), bool)
    done = np.asarray(ts.done, bool)
    n_failed = np.asarray(ts.n_failed)
    counts = {
        "n_points": int(valid.size),
        "n_valid": int(valid.sum()),
        "excluded": int((~valid).sum()),
        "not_done": int((~done).sum()),
        "failed_halos": int((done & (n_failed > 0)).sum()),
        "non_finite": int((done & (n_failed == 0) & ~valid).sum()),
    }
    return np.flatnonzero(valid), counts


def split_design(
    indices: np.ndarray, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded split of design-point ``indices`` into disjoint ``train``/``val``/``test`` (each
    sorted), in proportions ``fractions`` (normalised).  At least one validation point is kept
    whenever there are two or more points."""
    fractions = np.asarray(fractions, np.float64)
    if fractions.shape != (3,) or np.any(fractions < 0) or fractions.sum() <= 0 or fractions[0] <= 0:
        raise ValueError(f"split fractions must be 3 non-negative numbers (train > 0), got {tuple(fractions)}")
    fractions = fractions / fractions.sum()
    idx = np.random.default_rng(seed).permutation(np.asarray(indices, np.int64))
    n = idx.size
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    if n >= 2 and fractions[1] > 0:
        n_val = max(n_val, 1)
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"split {tuple(fractions)} of {n} valid design points leaves no training point")
    return {"train": idx[:n_train], "val": idx[n_train : n_train + n_val], "test": idx[n_train + n_val :]}


def explicit_split(indices: Mapping[str, Sequence[int]], valid: np.ndarray) -> dict[str, np.ndarray]:
    """Checked ``train``/``val``/``test`` row indices given by the caller (instead of
    :func:`split_design`'s seeded fractions): each a list of valid store rows, disjoint, ``train``
    and ``val`` non-empty.  The train order is kept (``n_train`` takes its first n); val and test
    are sorted."""
    if set(indices) != {"train", "val", "test"}:
        raise ValueError(f"split_indices must have exactly the keys train, val, test; got {sorted(indices)}")
    out = {name: np.asarray(indices[name], np.int64).reshape(-1) for name in ("train", "val", "test")}
    valid_set = set(np.asarray(valid, np.int64).tolist())
    for name, rows in out.items():
        outside = [int(r) for r in rows if int(r) not in valid_set]
        if outside:
            raise ValueError(f"split_indices[{name!r}] holds rows that are not valid design points: {outside[:5]}")
        if np.unique(rows).size != rows.size:
            raise ValueError(f"split_indices[{name!r}] repeats rows")
    every = np.concatenate(list(out.values()))
    if np.unique(every).size != every.size:
        raise ValueError("split_indices' train, val and test overlap")
    if out["train"].size == 0 or out["val"].size == 0:
        raise ValueError("split_indices needs at least one train and one val row")
    return {"train": out["train"], "val": np.sort(out["val"]), "test": np.sort(out["test"])}


def to_network_space(
    batch: Mapping[str, np.ndarray], scalings: Scalings
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(u (n, 8), z (n, S), dz/du (n, S, 8), has_jacobian (n,) as 0/1) from a batch of store
    rows; the Jacobian rows of value-only points (``has_jacobian`` False, default all True) are
    set to 0 and masked out of the loss."""
    u = scalings.to_unit(batch["theta"])
    z = scalings.standardise(batch["summaries"])
    has = np.asarray(batch.get("has_jacobian", np.ones(u.shape[0], bool)), bool)
    jac = np.asarray(batch["summary_jacobian"], np.float64)
    if not has.all():
        jac = np.where(has[:, None, None], jac, 0.0)
    jz = scalings.jacobian_to_network(jac)
    return u, z, jz, has.astype(np.float64)


#: A training split up to this size is read from the store once and shuffled in memory; a
#: larger one streams from the store every epoch (the speed-up: docs/design.md s.11).
IN_MEMORY_LIMIT_BYTES = 512 * 2**20


def batch_source(ts, train_idx: np.ndarray):
    """(training set to draw minibatches from, its indices of the training rows)."""
    if isinstance(ts, InMemoryTrainingSet):
        return ts, train_idx
    n_theta, n_summary = ts.prior.ndim, len(ts.summary_names)
    n_bytes = train_idx.size * 8 * (n_theta + n_summary * (2 + n_theta) + 1)
    if n_bytes > IN_MEMORY_LIMIT_BYTES:
        return ts, train_idx
    rows = ts.load(train_idx)  # sorted, like train_idx
    kept = {name: rows[name] for name in (*DATA_KEYS, "n_failed", "has_jacobian")}
    return InMemoryTrainingSet(**kept, prior=ts.prior, observations=ts.observations), np.arange(train_idx.size)
