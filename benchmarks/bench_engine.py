"""Engine speed, measured side by side in one process.

    python benchmarks/bench_engine.py [--halos 256] [--repeats 3] [--extra-sizes 10000,100000]

Reports halo solves per second for: a straightforward vmap of Tsit5 over the batch (the
baseline, one device), the default engine's jitted solve on one device, and the engine as
``Model.evolve`` / ``Model.jacobian`` run it (``Model.evolve_placed``: every local device, all
CPU cores via sapphire.set_host_device_count; solve + z = 0 diagnostics) at the prior centre
and at the stiff corner, and the Jacobian/solve cost ratio.  Timings exclude compilation (each function is called once
first) and take the best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import sapphire  # noqa: E402  (jax imported, backend not yet initialised)

sapphire.set_host_device_count()  # all cores; the one-device rows below use one of them

import jax  # noqa: E402
import numpy as np  # noqa: E402
from sapphire.solve import SolverSettings, solve_population

STIFF_CORNER = np.array([2.0, -3.0, 0.0, -3.0, -2.0, 0.0, -0.5, 0.0])


def best_time(fn, *args, repeats: int, label: str = "") -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    print(f"  [{label}] first call (incl. compilation) {time.perf_counter() - start:.2f} s", flush=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    print(f"  [{label}] best of {repeats}: {min(times):.4f} s", flush=True)
    return min(times)


def bench(n_halos: int, repeats: int) -> dict:
    halos = sapphire.HaloPopulation.from_diffmah(n_halos, seed=0)
    one_device = halos.forcing()
    config = sapphire.DEFAULT_CONFIG
    centre = np.asarray(sapphire.DEFAULT_PRIOR.centre)
    model = sapphire.Model()
    rows = {}

    def solve_fn(settings):
        return jax.jit(lambda th, f: solve_population(th, f, None, settings, config).log_state)

    def engine(with_jacobian):
        # Model.evolve_placed: the engine as Model.evolve / Model.jacobian run it (every
        # local device; a stiff batch dealt to the devices by rank of stiffness).
        return lambda th: model.evolve_placed(jax.numpy.asarray(th), halos, None, with_jacobian)

    def timed(key, fn, *args, repeats=repeats):
        rows[key] = best_time(fn, *args, repeats=repeats, label=key)

    timed("baseline_vmap_tsit5_centre_s", solve_fn(SolverSettings(solver="tsit5")), centre, one_device)
    timed("engine_one_device_centre_s", solve_fn(SolverSettings()), centre, one_device)
    timed("engine_one_device_stiff_corner_s", solve_fn(SolverSettings()), STIFF_CORNER, one_device)
    rows["n_devices"] = jax.local_device_count()
    # The jitted solve alone on the device-split forcing (the row earlier versions reported).
    timed("engine_solve_only_centre_s", solve_fn(SolverSettings()), centre, model.device_forcing(halos))
    timed("engine_centre_s", engine(False), centre)
    timed("engine_stiff_corner_s", engine(False), STIFF_CORNER)
    timed("engine_jacobian_centre_s", engine(True), centre)
    timed("engine_jacobian_stiff_corner_s", engine(True), STIFF_CORNER, repeats=max(1, repeats - 1))
    rows["n_halos"] = n_halos
    rows["baseline_solves_per_s"] = n_halos / rows["baseline_vmap_tsit5_centre_s"]
    rows["engine_solves_per_s"] = n_halos / rows["engine_centre_s"]
    rows["engine_solve_only_solves_per_s"] = n_halos / rows["engine_solve_only_centre_s"]
    rows["engine_one_device_solves_per_s"] = n_halos / rows["engine_one_device_centre_s"]
    rows["speedup_vs_baseline"] = rows["baseline_vmap_tsit5_centre_s"] / rows["engine_centre_s"]
    rows["stiff_over_centre"] = rows["engine_stiff_corner_s"] / rows["engine_centre_s"]
    rows["stiff_over_centre_one_device"] = rows["engine_one_device_stiff_corner_s"] / rows["engine_one_device_centre_s"]
    rows["jacobian_over_solve_centre"] = rows["engine_jacobian_centre_s"] / rows["engine_centre_s"]
    rows["jacobian_over_solve_stiff"] = rows["engine_jacobian_stiff_corner_s"] / rows["engine_stiff_corner_s"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--halos", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extra-sizes", default="", help="comma-separated extra batch sizes (e.g. 10000,100000 on a GPU)")
    parser.add_argument("--out", default="benchmarks/results/bench_engine.json")
    args = parser.parse_args()
    device = jax.devices()[0]
    machine = f"{platform.node()} {platform.processor() or platform.machine()} | jax {jax.__version__} on {device.platform}:{device.device_kind}"
    sizes = [args.halos] + [int(s) for s in args.extra_sizes.split(",") if s]
    results = {"machine": machine, "runs": []}
    for n in sizes:
        row = bench(n, args.repeats if n <= 4096 else 1)
        results["runs"].append(row)
        print(f"\n== {n} halos on {machine}")
        for key, value in row.items():
            print(f"  {key:34s} {value:10.4g}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
