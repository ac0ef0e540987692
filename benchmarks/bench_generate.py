"""Training-set generation: orchestration and I/O overhead versus the raw engine, points/hour,
the speed-up from one to all local devices, and ``--batch-points`` (a block's points as one
batch of (point, halo) lanes) on one device, measured side by side in one process.

    python benchmarks/bench_generate.py --points 32 --halos 128 --chunk 8 [--devices 2]

Raw engine = the same compiled per-point function (summaries + standard errors + exact
summary Jacobian) called on the same points with no store.  Compilation is excluded from
every timing (a warm-up call first; the jit cache is shared).  ``--devices n`` exposes n host
devices (before JAX starts) for the all-devices run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=32)
    parser.add_argument("--halos", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--devices", type=int, default=os.cpu_count() or 1, help="host devices to expose (CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/bench_generate.json")
    args = parser.parse_args()

    import sapphire

    sapphire.set_host_device_count(args.devices)
    import jax

    import training_sets as T
    from training_sets.generate import Evaluator

    model, obs = sapphire.Model(), sapphire.Observations.default()
    halos = sapphire.HaloPopulation.from_diffmah(args.halos, seed=0)
    theta = T.latin_hypercube_design(model.prior, args.points, seed=args.seed)
    devices = jax.local_devices()

    evaluator = Evaluator(model, halos, obs, False, devices)
    t0 = time.perf_counter()
    for d in devices:  # compile once per device
        evaluator.collect(evaluator.dispatch(theta[:1], d))
    compile_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    for start in range(0, args.points, args.chunk):
        evaluator.evaluate(theta[start : start + args.chunk])
    raw_s = time.perf_counter() - t0

    batched = Evaluator(model, halos, obs, False, devices[:1], batch_points=True)
    batched.collect(batched.dispatch(theta[: args.chunk], devices[0]))  # compile for the block shape

    tmp = Path(tempfile.mkdtemp(prefix="bench_generate_"))
    timings = {}
    try:
        for label, n_dev, batch_points in (
            ("one_device", 1, False),
            ("all_devices", len(devices), False),
            ("one_device_batch_points", 1, True),
        ):
            report = T.generate(
                tmp / f"{label}.zarr",
                n_points=args.points,
                halos=halos,
                model=model,
                seed=args.seed,
                chunk=args.chunk,
                devices=n_dev,
                batch_points=batch_points,
                progress=False,
            )
            timings[label] = report.seconds
        identical = T.store_digest(tmp / "one_device.zarr") == T.store_digest(tmp / "all_devices.zarr")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {devices[0].platform} x{len(devices)}",
        "points": args.points,
        "halos": args.halos,
        "chunk": args.chunk,
        "compile_s_all_devices": round(compile_s, 2),
        "raw_engine_s": round(raw_s, 3),
        "generate_one_device_s": round(timings["one_device"], 3),
        "generate_all_devices_s": round(timings["all_devices"], 3),
        "overhead_one_device": round(timings["one_device"] / raw_s - 1.0, 4),
        "points_per_hour_one_device": round(3600 * args.points / timings["one_device"]),
        "points_per_hour_all_devices": round(3600 * args.points / timings["all_devices"]),
        "speedup_all_vs_one_device": round(timings["one_device"] / timings["all_devices"], 3),
        "generate_one_device_batch_points_s": round(timings["one_device_batch_points"], 3),
        "batch_points_speedup_one_device": round(timings["one_device"] / timings["one_device_batch_points"], 3),
        "stores_bit_identical": identical,
        "command": " ".join([Path(sys.executable).name] + sys.argv),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
