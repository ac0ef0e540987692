"""Emulator benchmark (issue 5): train, validate, compare, time.

    python benchmarks/bench_emulator.py --data TS.zarr|DEV.npz [--out benchmarks/results/emulator]

In one run:
1. trains the Sobolev ensemble (lambda = --gradient-weight, K = --ensemble) and, with the same
   architecture, split, seed and K, a values-only ensemble (lambda = 0); writes both artifacts'
   validation reports (``report/``, ``report_lambda0/``: JSON + figures);
2. learning curves on the same test split: lambda = 1 vs lambda = 0 (``--curve-ensemble``
   members) at ``--sizes``, and a scikit-learn Gaussian process at ``--gp-sizes``;
3. speed, side by side in this process: emulator mean + error + Jacobian for one theta (jit'd,
   after compilation; median over many standalone calls, and per theta inside one compiled loop;
   float32 and float64 evaluation) versus the exact ``Model.summaries_with_jacobian`` (one
   sensitivity solve) with ``--speed-halos`` halos (after compilation, a few repeats);
   ``--sync-dispatch`` repeats this with JAX's CPU client dispatching synchronously;
4. ``bench_emulator.json`` gathers the headline numbers and the acceptance checks.

``--data`` is a training-set store made by ``sapphire generate`` (e.g.
``sapphire generate dev.zarr --points 1600 --halos 128 --chunk 16``), or an .npz with arrays
theta, summaries, summary_stderr, summary_jacobian (and optionally n_failed) made with the
default observations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="training-set store (.zarr) or development .npz")
    p.add_argument("--out", default="benchmarks/results/emulator")
    p.add_argument("--gradient-weight", type=float, default=1.0)
    p.add_argument("--ensemble", type=int, default=5)
    p.add_argument("--hidden", default="128,128,128", help="hidden layer widths (comma list)")
    p.add_argument("--epochs", type=int, default=600)
    p.add_argument("--patience", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sizes", default="100,200,400,800,1280", help="learning-curve training sizes")
    p.add_argument("--gp-sizes", default="100,200,400,800")
    p.add_argument("--curve-ensemble", type=int, default=1)
    p.add_argument("--speed-halos", type=int, default=256)
    p.add_argument("--skip", default="", help="comma list of stages to skip: train,lambda0,curve,speed")
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--sync-dispatch",
        action="store_true",
        help="run JAX's CPU client without asynchronous dispatch (set before JAX starts); "
        "the speed results go to 'speed_sync_dispatch'",
    )
    return p.parse_args(argv)


def time_emulator(emu, theta, repeats: int = 2000, loop_thetas: int = 1000) -> dict:
    """Mean + error + Jacobian at one theta, after compilation: as a standalone call (median
    over ``repeats`` calls; includes JAX's per-call dispatch), through a user's ``jax.jit``,
    and per theta inside one compiled ``lax.map`` over ``loop_thetas`` prior draws (what a
    jitted optimiser or sampler step pays per evaluation)."""
    import jax

    def call_times(fn, arg, n):
        jax.block_until_ready(fn(arg))  # compile
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(arg))
            times.append(time.perf_counter() - t0)
        return times

    times = call_times(emu.predict_and_jacobian, theta, repeats)
    inner = call_times(jax.jit(lambda t: (emu.predict(t), emu.jacobian(t))), theta, repeats)
    draws = emu.prior.from_unit(np.random.default_rng(0).uniform(size=(loop_thetas, emu.prior.ndim)))
    looped = call_times(jax.jit(lambda ts: jax.lax.map(emu.predict_and_jacobian, ts)), jax.numpy.asarray(draws), 20)
    return {
        "precision": emu.precision,
        "predict_and_jacobian_median_s": float(np.median(times)),
        "p90_s": float(np.percentile(times, 90)),
        "user_jit_of_predict_plus_jacobian_median_s": float(np.median(inner)),
        "in_compiled_loop_per_theta_s": float(np.median(looped)) / loop_thetas,
        "calls": repeats,
    }


def architecture_speeds(
    emu, theta, shapes=((5, (64, 64, 64)), (3, (128, 128, 128)), (5, (128, 128, 128, 128)))
) -> dict:
    """predict_and_jacobian time of untrained ensembles of other sizes (the cost does not
    depend on the weights): what a smaller or larger default would cost."""
    from emulator import SobolevEmulator
    from emulator.network import Architecture, init_ensemble

    out = {}
    for k, hidden in shapes:
        arch = Architecture(emu.architecture.n_in, emu.architecture.n_out, hidden, emu.architecture.activation)
        _, params = init_ensemble(arch, list(range(k)))
        other = SobolevEmulator(
            architecture=arch,
            params=params,
            scalings=emu.scalings,
            prior=emu.prior,
            observations=emu.observations,
            summary_names=emu.summary_names,
            store_fingerprint="timing",
        )
        out[f"K={k} hidden={list(hidden)}"] = time_emulator(other, theta, repeats=1000, loop_thetas=200)[
            "predict_and_jacobian_median_s"
        ]
    return out


def time_exact(theta, n_halos: int, repeats: int = 3) -> dict:
    import jax

    import sapphire

    model = sapphire.Model()
    halos = sapphire.HaloPopulation.from_diffmah(n_halos, seed=0)
    obs = sapphire.Observations.default()

    def once():
        summaries, jacobian = model.summaries_with_jacobian(theta, halos, obs)
        jax.block_until_ready((summaries.mean, jacobian))

    t0 = time.perf_counter()
    once()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    return {
        "summaries_plus_jacobian_median_s": float(np.median(times)),
        "all_s": times,
        "first_call_s": first,
        "n_halos": n_halos,
        "devices": jax.local_device_count(),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    import sapphire

    sapphire.set_host_device_count()  # the exact model at its best (all cores), as the CLI runs it
    if args.sync_dispatch:
        import jax

        jax.config.update("jax_cpu_enable_async_dispatch", False)  # read when the CPU client starts
    from emulator import SobolevEmulator, emulator_report, learning_curve, train_emulator

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    data = Path(args.data)
    progress = not args.quiet
    result: dict = {
        "data": str(data),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    hidden = tuple(int(w) for w in args.hidden.split(",") if w)
    common = dict(
        ensemble=args.ensemble,
        hidden=hidden,
        epochs=args.epochs,
        patience=args.patience,
        seed=args.seed,
        progress=progress,
    )
    emus = {}
    for tag, lam, stage in (("", args.gradient_weight, "train"), ("_lambda0", 0.0, "lambda0")):
        path = out / f"emulator{tag}.emu"
        if stage in skip:
            if path.exists():
                emus[tag] = SobolevEmulator.load(path)
            continue
        t0 = time.perf_counter()
        emu = train_emulator(str(data), gradient_weight=lam, **common)
        emu.save(path)
        emus[tag] = emu
        print(
            f"trained lambda={lam}: {time.perf_counter() - t0:.0f} s, {emu.training['epochs_run']} epochs", flush=True
        )
    for tag, emu in emus.items():
        rep = emulator_report(emu, str(data), out / f"report{tag}", progress=progress)
        result[f"report{tag}"] = {
            k: rep[k]
            for k in (
                "n_test",
                "value_error_sigma_obs",
                "jacobian_rel_error",
                "fisher",
                "calibration",
                "acceptance",
                "emulator",
            )
        }
        for r in result[f"report{tag}"]["value_error_sigma_obs"], result[f"report{tag}"]["jacobian_rel_error"]:
            r.pop("per_summary", None), r.pop("per_summary_median", None)
    if "" in emus and "_lambda0" in emus:
        a, b = result["report"], result["report_lambda0"]
        result["sobolev_vs_values_only"] = {
            "jacobian_error_ratio_lambda0_over_lambda1": b["jacobian_rel_error"]["median"]
            / a["jacobian_rel_error"]["median"],
            "fisher_overlap_median": [a["fisher"]["overlap_median"], b["fisher"]["overlap_median"]],
            "fisher_kl_median": [a["fisher"]["kl_median"], b["fisher"]["kl_median"]],
            "value_worst_median": [
                a["value_error_sigma_obs"]["worst_median"],
                b["value_error_sigma_obs"]["worst_median"],
            ],
        }
    if "curve" not in skip:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        gp_sizes = [int(s) for s in args.gp_sizes.split(",") if s]
        curve = learning_curve(
            str(data),
            sizes,
            gradient_weights=(args.gradient_weight, 0.0),
            gp_sizes=gp_sizes,
            ensemble=args.curve_ensemble,
            seed=args.seed,
            progress=progress,
            out_dir=out,
            epochs=args.epochs,
            patience=args.patience,
            hidden=hidden,
        )
        result["learning_curve"] = curve
    if "speed" not in skip and "" in emus:
        theta = sapphire.DEFAULT_PRIOR.centre
        emu = emus[""]
        fast = {}
        for precision in ("float32", "float64"):
            emu.precision = precision
            fast[precision] = time_emulator(emu, theta)
        emu.precision = "float32"
        slow = time_exact(theta, args.speed_halos)
        exact_s = slow["summaries_plus_jacobian_median_s"]
        speedups = {
            f"{precision}_{how}": exact_s / row[key]
            for precision, row in fast.items()
            for how, key in (
                ("single_call", "predict_and_jacobian_median_s"),
                ("in_compiled_loop", "in_compiled_loop_per_theta_s"),
            )
        }
        key = "speed_sync_dispatch" if args.sync_dispatch else "speed"
        result[key] = {
            "emulator": fast["float32"],
            "emulator_float64": fast["float64"],
            "exact": slow,
            "speedup": speedups["float32_single_call"],
            "speedups": speedups,
            "cpu_async_dispatch": not args.sync_dispatch,
            "other_architectures": architecture_speeds(emu, theta),
        }
        print(
            f"speed ({'synchronous' if args.sync_dispatch else 'default asynchronous'} CPU dispatch): exact "
            f"{exact_s:.3f} s ({args.speed_halos} halos)",
            flush=True,
        )
        for precision, row in fast.items():
            print(
                f"  {precision}: single call {row['predict_and_jacobian_median_s'] * 1e6:.0f} us "
                f"(x{speedups[precision + '_single_call']:.3g}), in a compiled loop "
                f"{row['in_compiled_loop_per_theta_s'] * 1e6:.0f} us per theta "
                f"(x{speedups[precision + '_in_compiled_loop']:.3g})",
                flush=True,
            )
    from sapphire.jsonio import json_ready

    path = out / "bench_emulator.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    commands = previous.get("commands", [])
    previous.update(json_ready(result))
    previous["commands"] = commands + [result.pop("command")]
    previous.pop("command", None)
    path.write_text(json.dumps(previous, indent=1))
    return result


if __name__ == "__main__":
    main()
