"""Design points: seeded, space-filling Latin hypercubes over the prior box, user tables, and
extensions that add points without repeating any."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from scipy.spatial.distance import cdist
from scipy.stats import qmc

from sapphire.prior import Prior


def latin_hypercube_design(prior: Prior, n_points: int, seed: int) -> np.ndarray:
    """``n_points`` points of a Latin hypercube in the prior box, (n_points, d), optimised for
    space filling (scipy's ``random-cd``: coordinate swaps lowering the centred discrepancy,
    which keeps the Latin property).  Same seed, same design."""
    if int(n_points) != n_points or n_points < 1:
        raise ValueError(f"number of design points must be a positive integer, got {n_points!r}")
    sampler = qmc.LatinHypercube(d=prior.ndim, optimization="random-cd", rng=np.random.default_rng(seed))
    return prior.from_unit(sampler.random(int(n_points)))


def extend_design(prior: Prior, existing: np.ndarray, n_new: int, seed: int, candidates: int = 16) -> np.ndarray:
    """``n_new`` further points for a design that already holds ``existing`` (n, d).

    Draws ``candidates`` seeded, optimised Latin hypercubes of ``n_new`` points and keeps the
    one whose closest approach (in the unit cube) to the existing points is largest, so the
    new points fill gaps rather than pile up; a new point equal to an existing one is
    impossible in practice (continuous draws) and is checked anyway.  Returns (n_new, d)."""
    existing_unit = prior.to_unit(np.atleast_2d(existing))
    rng = np.random.default_rng(seed)
    best, best_gap = None, -np.inf
    for _ in range(candidates):
        sampler = qmc.LatinHypercube(d=prior.ndim, optimization="random-cd", rng=rng)
        unit = sampler.random(int(n_new))
        gap = cdist(unit, existing_unit).min() if existing_unit.size else np.inf
        if gap > best_gap:
            best, best_gap = unit, gap
    if best_gap <= 0.0:
        raise RuntimeError("design extension repeated an existing point; choose another seed")
    return prior.from_unit(best)


def read_design_table(path: str | os.PathLike, prior: Prior) -> np.ndarray:
    """A user's design: a CSV whose header names the parameters (any order, all of
    ``prior.names``, nothing else) and whose rows are points inside the prior box."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"design table {path} not found")
    with open(path, newline="") as f:
        rows = list(csv.reader(row for row in f if row.strip() and not row.startswith("#")))
    if not rows:
        raise ValueError(f"design table {path} is empty")
    header = [h.strip() for h in rows[0]]
    missing = [n for n in prior.names if n not in header]
    unknown = [h for h in header if h not in prior.names]
    if missing or unknown:
        raise ValueError(
            f"design table {path}: columns must be {list(prior.names)}; missing {missing}, unknown {unknown}"
        )
    try:
        values = np.array([[float(v) for v in row] for row in rows[1:]], dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"design table {path}: non-numeric entry ({err})") from None
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] != len(header):
        raise ValueError(f"design table {path}: expected rows of {len(header)} numbers")
    theta = values[:, [header.index(n) for n in prior.names]]
    return prior.validate(theta)
