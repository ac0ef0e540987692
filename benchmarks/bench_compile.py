"""Compile time of the engine's batch solve, split into tracing, lowering and XLA compilation.

    python benchmarks/bench_compile.py [--halos 6] [--solver auto] [--repeats 2]

Prints one line per (solve, repeat): the plain solve and the sensitivity solve (Jacobian) of
``sapphire.evolution.evolve_population``, each traced, lowered and compiled in a fresh process (so
that nothing is cached), then run once.  The test suite and the quickstart are dominated by
these compilations (docs/design.md s.18).  To compare two versions of the code side by side, run
it alternately with ``PYTHONPATH`` pointing at each checkout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

PROBE = """
import json, sys, time
import jax, jax.numpy as jnp
import sapphire
from sapphire.evolution import evolve_population
n, solver, jac = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
halos = sapphire.HaloPopulation.from_diffmah(n, seed=3)
model = sapphire.Model(solver=solver)
theta, forcing = jnp.asarray(sapphire.DEFAULT_PRIOR.centre), halos.forcing()
t0 = time.perf_counter()
traced = evolve_population.trace(theta, forcing, None, model.settings, model.config, jac, None)
t1 = time.perf_counter()
lowered = traced.lower()
t2 = time.perf_counter()
compiled = lowered.compile()
t3 = time.perf_counter()
jax.block_until_ready(compiled(theta, forcing, None))
t4 = time.perf_counter()
print(json.dumps(dict(trace=t1 - t0, lower=t2 - t1, compile=t3 - t2, run=t4 - t3)))
"""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--halos", type=int, default=6)
    p.add_argument("--solver", default="auto", choices=("auto", "tsit5", "kvaerno3", "kvaerno5"))
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    print(f"{'solve':<12} {'trace s':>8} {'lower s':>8} {'compile s':>10} {'total s':>8} {'run s':>6}")
    for _ in range(args.repeats):
        for jacobian in (False, True):
            out = subprocess.run(
                [sys.executable, "-c", PROBE, str(args.halos), args.solver, "1" if jacobian else "0"],
                capture_output=True,
                text=True,
                check=True,
            )
            t = json.loads(out.stdout.strip().splitlines()[-1])
            total = t["trace"] + t["lower"] + t["compile"]
            name = "sensitivity" if jacobian else "plain"
            print(f"{name:<12} {t['trace']:8.1f} {t['lower']:8.1f} {t['compile']:10.1f} {total:8.1f} {t['run']:6.2f}")


if __name__ == "__main__":
    main()
