"""Cost of the per-halo solver choice where a batch mixes stiff and ordinary halos (issue 16),
before and after, side by side in one process on ONE device.

    git archive main sapphire | tar -x -C /tmp/before && mv /tmp/before/sapphire /tmp/before/sapphire_before
    python benchmarks/bench_solver_choice.py --before /tmp/before [--halos 256] [--repeats 5] [--out FILE.json]

Times the jitted ``solve_population`` (default ``solver="auto"``) at points on the line from the
prior centre (s = 0) to the stiff corner (s = 1): at s = 0.3 and 0.4 about a third and a half of
256 diffmah halos (seed 0) are above the stiffness threshold, the case where choosing the solver
per halo (this tree) rather than per group (the ``--before`` tree) changes the work.  Every
(tree, s) row is compiled first, then all rows are timed round-robin, best of ``--repeats``
rounds, so that the shared machine's changing load hits every row alike.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import sapphire
from sapphire.evolution import batch_stiffness
from sapphire.solve import SolverSettings, solve_population

STIFF_CORNER = np.array([2.0, -3.0, 0.0, -3.0, -2.0, 0.0, -0.5, 0.0])
FRACTIONS = (0.0, 0.3, 0.4, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--halos", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", default="", help="directory holding the previous package as sapphire_before")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    config = sapphire.DEFAULT_CONFIG
    forcing = sapphire.HaloPopulation.from_diffmah(args.halos, seed=0).forcing()
    centre = np.asarray(sapphire.DEFAULT_PRIOR.centre)
    trees = {"after": (solve_population, SolverSettings)}
    if args.before:
        sys.path.insert(0, args.before)
        old = importlib.import_module("sapphire_before.solve")
        trees["before"] = (old.solve_population, old.SolverSettings)
    calls = {}
    n_stiff = {}
    for s in FRACTIONS:
        theta = jnp.asarray(centre + s * (STIFF_CORNER - centre))
        n_stiff[s] = int(
            np.sum(np.asarray(batch_stiffness(theta, forcing, config)) > SolverSettings().stiffness_threshold)
        )
        for tree, (solve, settings) in trees.items():
            fn = jax.jit(lambda th, f, solve=solve, settings=settings: solve(th, f, None, settings(), config).log_state)
            calls[(tree, s)] = (fn, theta)
    for (tree, s), (fn, theta) in calls.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(theta, forcing))
        print(f"  [{tree} s={s}] first call (incl. compilation) {time.perf_counter() - start:.1f} s", flush=True)
    times = {key: [] for key in calls}
    loads = []
    for _ in range(args.repeats):
        for key, (fn, theta) in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(theta, forcing))
            times[key].append(time.perf_counter() - start)
        loads.append(os.getloadavg()[0])
    rows = []
    for s in FRACTIONS:
        row = {"s": s, "n_stiff": n_stiff[s], **{f"{tree}_s": min(times[(tree, s)]) for tree in trees}}
        if "before" in trees:
            row["after_over_before"] = row["after_s"] / row["before_s"]
        rows.append(row)
        print(
            f"s = {s:.1f} ({n_stiff[s]:3d} stiff): "
            + ", ".join(f"{tree} {row[f'{tree}_s']:.3f} s" for tree in trees)
            + (f"; after/before {row['after_over_before']:.2f}" if "before" in trees else ""),
            flush=True,
        )
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
