"""Cost of the solver choice where a batch mixes stiff and ordinary halos (issue 16).

    python benchmarks/bench_solver_choice.py [--halos 256] [--repeats 3] [--out FILE.json]

Times the default engine (``solver="auto"``) on one device (the jitted ``solve_population``) and
as ``Model.evolve`` runs it (``Model.evolve_placed``, every local device) at points on the line
from the prior centre (s = 0) to the stiff corner (s = 1) of bench_engine.py: at s = 0.3 and 0.4
about a third and a half of 256 diffmah halos (seed 0) are above the stiffness threshold, the
case where the solver choice per halo (rather than per group) matters.  Run it on two trees
alternately (PYTHONPATH) to compare before / after on a shared, noisy CPU.
"""

from __future__ import annotations

import argparse
import json
import time

import sapphire

sapphire.set_host_device_count()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from sapphire.evolution import batch_stiffness  # noqa: E402
from sapphire.solve import SolverSettings, solve_population  # noqa: E402

STIFF_CORNER = np.array([2.0, -3.0, 0.0, -3.0, -2.0, 0.0, -0.5, 0.0])
FRACTIONS = (0.0, 0.3, 0.4, 1.0)


def best(fn, repeats):
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--halos", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    halos = sapphire.HaloPopulation.from_diffmah(args.halos, seed=0)
    forcing = jax.device_put(halos.forcing(), jax.local_devices()[0])
    model = sapphire.Model()
    centre = np.asarray(sapphire.DEFAULT_PRIOR.centre)
    solve = jax.jit(lambda th, f: solve_population(th, f, None, SolverSettings(), sapphire.DEFAULT_CONFIG).log_state)
    rows = []
    for s in FRACTIONS:
        theta = jnp.asarray(centre + s * (STIFF_CORNER - centre))
        n_stiff = int(np.sum(np.asarray(batch_stiffness(theta, forcing, sapphire.DEFAULT_CONFIG)) > 1000.0))
        one = best(lambda: solve(theta, forcing), args.repeats)
        placed = best(lambda: model.evolve_placed(theta, halos, None, False)[0], args.repeats)
        rows.append({"s": s, "n_stiff": n_stiff, "one_device_s": one, "evolve_placed_s": placed})
        print(f"s = {s:.1f} ({n_stiff:3d} stiff): one device {one:.3f} s, Model.evolve {placed:.3f} s", flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"n_halos": args.halos, "n_devices": jax.local_device_count(), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
