"""Cost of the per-halo solver choice where a batch mixes stiff and ordinary halos (issue 16),
before and after, side by side in one process on ONE device.

    git archive main sapphire | tar -x -C /tmp/before && mv /tmp/before/sapphire /tmp/before/sapphire_before
    python benchmarks/bench_solver_choice.py --before /tmp/before [--halos 256] [--repeats 5] \
        [--thresholds 1000,300] [--out FILE.json]

Times the jitted ``solve_population`` (default ``solver="auto"``) at points on the line from the
prior centre (s = 0) to the stiff corner (s = 1): at s = 0.3 and 0.4 about a third and a half of
256 diffmah halos (seed 0) are above the stiffness threshold, the case where choosing the solver
per halo (this tree) rather than per group (the ``--before`` tree) changes the work.  Every
(tree, s) row is compiled first, then all rows are timed round-robin, best of ``--repeats``
rounds, so that the shared machine's changing load hits every row alike.  ``--thresholds``: the
current tree once per ``stiffness_threshold`` [1/Gyr].  Besides the line, ``lhs``: the 16
Latin-hypercube draws of ``validate_engine.py`` (seed 0, 512 draws) with the most halos near the
threshold (largest estimate between 0.3x and 3x it) x 64 halos, timed as one loop over the
draws (a training set's work).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import sapphire
from sapphire.evolution import batch_stiffness
from sapphire.solve import SolverSettings, solve_population

sys.path.insert(0, str(Path(__file__).parent))
from validate_engine import lhs_draws  # noqa: E402

STIFF_CORNER = np.array([2.0, -3.0, 0.0, -3.0, -2.0, 0.0, -0.5, 0.0])
FRACTIONS = (0.0, 0.3, 0.4, 1.0)


def mixed_draws(config, threshold: float, n: int = 16) -> np.ndarray:
    """(n, 8) Latin-hypercube draws whose 64 halos (diffmah seed 0) straddle the threshold most."""
    thetas = lhs_draws(512, 0)
    forcing = sapphire.HaloPopulation.from_diffmah(64, seed=0).forcing()
    stiff = np.stack([np.asarray(batch_stiffness(jnp.asarray(t), forcing, config)) for t in thetas])
    near = np.sum((stiff > 0.3 * threshold) & (stiff < 3 * threshold), axis=1)
    return thetas[np.argsort(-near, kind="stable")[:n]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--halos", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", default="", help="directory holding the previous package as sapphire_before")
    parser.add_argument("--thresholds", default="1000", help="stiffness thresholds of the current tree [1/Gyr]")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    config = sapphire.DEFAULT_CONFIG
    thresholds = [float(t) for t in args.thresholds.split(",")]
    forcing = sapphire.HaloPopulation.from_diffmah(args.halos, seed=0).forcing()
    forcing64 = sapphire.HaloPopulation.from_diffmah(64, seed=0).forcing()
    centre = np.asarray(sapphire.DEFAULT_PRIOR.centre)
    trees = {f"after@{t:g}": (solve_population, SolverSettings, {"stiffness_threshold": t}) for t in thresholds}
    if args.before:
        sys.path.insert(0, args.before)
        old = importlib.import_module("sapphire_before.solve")
        trees["before"] = (old.solve_population, old.SolverSettings, {})
    points = {f"s={s:g}": (jnp.asarray(centre + s * (STIFF_CORNER - centre)), forcing) for s in FRACTIONS}
    points["lhs"] = (jnp.asarray(mixed_draws(config, SolverSettings().stiffness_threshold)), forcing64)
    calls = {}
    for tree, (solve, settings, kwargs) in trees.items():
        one = jax.jit(lambda th, f, solve=solve, s=settings(**kwargs): solve(th, f, None, s, config).log_state)
        for point, (theta, f) in points.items():
            if theta.ndim == 1:
                calls[(tree, point)] = lambda one=one, theta=theta, f=f: one(theta, f)
            else:
                calls[(tree, point)] = lambda one=one, theta=theta, f=f: [one(t, f) for t in theta]
    n_stiff = {
        point: int(np.sum(np.asarray(batch_stiffness(theta, f, config)) > SolverSettings().stiffness_threshold))
        for point, (theta, f) in points.items()
        if theta.ndim == 1
    }
    for key, fn in calls.items():
        start = time.perf_counter()
        jax.block_until_ready(fn())
        print(f"  {key} first call (incl. compilation) {time.perf_counter() - start:.1f} s", flush=True)
    times = {key: [] for key in calls}
    loads = []
    for _ in range(args.repeats):
        for key, fn in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[key].append(time.perf_counter() - start)
        loads.append(os.getloadavg()[0])
    rows = []
    for point in points:
        row = {"point": point, "n_stiff_at_default_threshold": n_stiff.get(point)}
        row.update({f"{tree}_s": min(times[(tree, point)]) for tree in trees})
        if "before" in trees:
            row.update(
                {f"{tree}_over_before": row[f"{tree}_s"] / row["before_s"] for tree in trees if tree != "before"}
            )
        rows.append(row)
        print(f"{point:>6}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items() if isinstance(v, float)), flush=True)
    if args.out:
        result = {
            "n_halos": args.halos,
            "devices": 1,
            "repeats": args.repeats,
            "load_per_round": loads,
            "command": " ".join(sys.argv),
            "rows": rows,
        }
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
