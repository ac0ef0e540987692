"""Engine speed, measured side by side in one process.

    python benchmarks/bench_engine.py [--halos 256] [--repeats 3] [--extra-sizes 10000,100000] [--rows ...]

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

from sapphire.solve import SolverSettings, solve_population  # noqa: E402

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


ROWS = (
    "baseline_vmap_tsit5_centre_s",
    "engine_one_device_centre_s",
    "engine_one_device_stiff_corner_s",
    "engine_solve_only_centre_s",
    "engine_centre_s",
    "engine_stiff_corner_s",
    "engine_jacobian_centre_s",
    "engine_jacobian_stiff_corner_s",
)
# Rows that only differ from the engine rows when there are several devices.
MULTI_DEVICE_ROWS = ("engine_one_device_centre_s", "engine_one_device_stiff_corner_s", "engine_solve_only_centre_s")
RATIOS = {  # derived figure: (numerator row or halo count, denominator row)
    "baseline_solves_per_s": ("n_halos", "baseline_vmap_tsit5_centre_s"),
    "engine_solves_per_s": ("n_halos", "engine_centre_s"),
    "engine_solve_only_solves_per_s": ("n_halos", "engine_solve_only_centre_s"),
    "engine_one_device_solves_per_s": ("n_halos", "engine_one_device_centre_s"),
    "speedup_vs_baseline": ("baseline_vmap_tsit5_centre_s", "engine_centre_s"),
    "stiff_over_centre": ("engine_stiff_corner_s", "engine_centre_s"),
    "stiff_over_centre_one_device": ("engine_one_device_stiff_corner_s", "engine_one_device_centre_s"),
    "jacobian_over_solve_centre": ("engine_jacobian_centre_s", "engine_centre_s"),
    "jacobian_over_solve_stiff": ("engine_jacobian_stiff_corner_s", "engine_stiff_corner_s"),
}


def bench(n_halos: int, repeats: int, rows_wanted: tuple[str, ...], on_row=lambda rows: None) -> dict:
    """Time ``rows_wanted`` (in ROWS order) for ``n_halos``; ``on_row(rows)`` after each row
    (the caller saves partial results, so a run cut at its time limit keeps what it measured)."""
    halos = sapphire.HaloPopulation.from_diffmah(n_halos, seed=0)
    one_device = halos.forcing()
    config = sapphire.DEFAULT_CONFIG
    centre = np.asarray(sapphire.DEFAULT_PRIOR.centre)
    model = sapphire.Model()
    rows = {"n_halos": n_halos, "n_devices": jax.local_device_count()}

    def solve_fn(settings):
        return jax.jit(lambda th, f: solve_population(th, f, None, settings, config).log_state)

    def engine(with_jacobian):
        # Model.evolve_placed: the engine as Model.evolve / Model.jacobian run it (every
        # local device; a stiff batch dealt to the devices by rank of stiffness).
        return lambda th: model.evolve_placed(jax.numpy.asarray(th), halos, None, with_jacobian)

    runs = {
        "baseline_vmap_tsit5_centre_s": (solve_fn(SolverSettings(solver="tsit5")), centre, one_device),
        "engine_one_device_centre_s": (solve_fn(SolverSettings()), centre, one_device),
        "engine_one_device_stiff_corner_s": (solve_fn(SolverSettings()), STIFF_CORNER, one_device),
        # The jitted solve alone on the device-split forcing (the row earlier versions reported).
        "engine_solve_only_centre_s": (solve_fn(SolverSettings()), centre, model.device_forcing(halos)),
        "engine_centre_s": (engine(False), centre),
        "engine_stiff_corner_s": (engine(False), STIFF_CORNER),
        "engine_jacobian_centre_s": (engine(True), centre),
        "engine_jacobian_stiff_corner_s": (engine(True), STIFF_CORNER),
    }
    for key in ROWS:
        if key not in rows_wanted:
            continue
        slow = key == "engine_jacobian_stiff_corner_s"
        rows[key] = best_time(*runs[key], repeats=max(1, repeats - 1) if slow else repeats, label=key)
        for name, (num, den) in RATIOS.items():
            if num in rows and den in rows:
                rows[name] = rows[num] / rows[den]
        on_row(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--halos", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--extra-sizes", default="", help="comma-separated extra batch sizes (e.g. 10000,100000 on a GPU)"
    )
    parser.add_argument("--rows", default="", help="comma-separated subset of: " + ", ".join(ROWS))
    parser.add_argument("--out", default="benchmarks/results/bench_engine.json")
    args = parser.parse_args()
    device = jax.devices()[0]
    machine = f"{platform.node()} {platform.processor() or platform.machine()} | jax {jax.__version__} on {device.platform}:{device.device_kind}"
    rows_wanted = tuple(r for r in args.rows.split(",") if r) or ROWS
    unknown = set(rows_wanted) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    if jax.local_device_count() == 1:  # one device: those rows would repeat the engine rows
        rows_wanted = tuple(r for r in rows_wanted if r not in MULTI_DEVICE_ROWS)
    sizes = [args.halos] + [int(s) for s in args.extra_sizes.split(",") if s]
    results = {"machine": machine, "runs": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(partial=None):
        runs = results["runs"] + ([partial] if partial is not None else [])
        out.write_text(json.dumps({**results, "runs": runs}, indent=2))

    for n in sizes:
        row = bench(n, args.repeats if n <= 4096 else 1, rows_wanted, on_row=save)
        results["runs"].append(row)
        save()
        print(f"\n== {n} halos on {machine}")
        for key, value in row.items():
            print(f"  {key:34s} {value:10.4g}")


if __name__ == "__main__":
    main()
