"""Exact-model NUTS on a mock (issue 6 acceptance), resumable; with --emulator, the same with the
emulator and the cross-validation report.

    # exact model: 4 free parameters, 64 halos, a noise-free mock at a truth inside the box.
    # Checkpointed after every block: re-run the same command to resume after an interruption.
    python benchmarks/exact_hmc.py --out runs/exact_hmc [--time-limit 3600]

    # then the emulator on the same mock, and the report (PASS: |shift| < 0.2 sigma, widths
    # within 1.25x, classifier AUC < 0.6)
    python benchmarks/exact_hmc.py --out runs/exact_hmc --emulator PATH

Writes to --out: ``mock_observations.json``; ``exact_checkpoint.npz`` (the resumable state);
``exact_hmc.npz`` / ``exact_hmc.json`` (draws so far, R-hat, ESS, divergences, timings; partial
until the run completes); with --emulator: ``emulator_hmc.npz`` / ``.json``, ``crossval.json``,
``crossval.md``, ``crossval_corner.png``, ``crossval_fisher.png``.  Exact chains run one after
another (``chain_method="sequential"``: under vmap the solver would evaluate both of its
per-group branches).  Tiny smoke run: ``--halos 8 --chains 1 --warmup 5 --samples 5``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

DEFAULT_FREE = "A_etaM,A_etaE,A_etaZ,A_tdep"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("runs/exact_hmc"))
    p.add_argument("--halos", type=int, default=64)
    p.add_argument("--halo-seed", type=int, default=0)
    p.add_argument("--free", default=DEFAULT_FREE, help=f"comma-separated free parameters (default {DEFAULT_FREE})")
    p.add_argument(
        "--truth", default=None, help="8 comma-separated values (default: prior centre + 0.1 x width in the free ones)"
    )
    p.add_argument("--relations", default=None, help="comma-separated relations (default all)")
    p.add_argument("--sigma-scale", type=float, default=1.0)
    p.add_argument("--noise-seed", type=int, default=None, help="add N(0, sigma) noise to the mock (default: none)")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--block", type=int, default=25, help="iterations per checkpointed block")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chain-method", default="sequential", choices=["sequential", "vectorized"])
    p.add_argument("--solver", default="auto")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-6)
    p.add_argument(
        "--time-limit", type=float, default=None, help="stop (resumably) after the block that passes this many seconds"
    )
    p.add_argument(
        "--cpu-devices",
        type=int,
        default=int(os.environ.get("SAPPHIRE_CPU_DEVICES", "1")),
        help="XLA CPU devices to split the halo batch over (default 1 or $SAPPHIRE_CPU_DEVICES)",
    )
    p.add_argument(
        "--emulator", type=Path, default=None, help="emulator to load; runs its HMC and the cross-validation"
    )
    p.add_argument("--no-emulator-error", action="store_true", help="leave the emulator error out of the likelihood")
    p.add_argument("--emulator-chain-method", default="vectorized", choices=["sequential", "vectorized"])
    return p.parse_args(argv)


def load_emulator(path: Path):
    """The emulator at ``path`` (package ``emulator``, built in parallel: adapt here if its loader
    is named differently)."""
    import emulator

    for loader in (
        getattr(getattr(emulator, "SobolevEmulator", None), "load", None),
        getattr(emulator, "load", None),
        getattr(emulator, "load_emulator", None),
    ):
        if loader is not None:
            return loader(path)
    raise SystemExit(
        "emulator: no loader found (expected emulator.SobolevEmulator.load, emulator.load or emulator.load_emulator)"
    )


def progress_printer(label: str):
    def show(info: dict) -> None:
        done, total = info["iteration"], info["total"]
        rate = info["elapsed_s"] / max(done, 1)
        print(
            f"[{label}] {info['phase']:8s} {done:5d}/{total} iterations  block {info['block_s']:7.1f} s  "
            f"elapsed {info['elapsed_s']:8.1f} s  ~{rate * (total - done):8.0f} s left (this call's rate)  "
            f"divergent {info['divergent']}  accept {info['mean_accept_prob']:.2f}  steps {info['mean_num_steps']:.1f}",
            flush=True,
        )

    return show


def main(argv=None) -> int:
    args = parse_args(argv)
    import sapphire

    if args.cpu_devices > 1:
        sapphire.set_host_device_count(args.cpu_devices)
    import numpy as np

    import forecasts

    args.out.mkdir(parents=True, exist_ok=True)
    prior = sapphire.DEFAULT_PRIOR
    free = [s.strip() for s in args.free.split(",") if s.strip()]
    if args.truth is None:
        truth = prior.centre.copy()
        for name in free:
            i = prior.names.index(name)
            truth[i] += 0.1 * prior.width[i]
    else:
        truth = np.array([float(v) for v in args.truth.split(",")])
    truth = prior.validate(truth)
    relations = None if args.relations is None else [s.strip() for s in args.relations.split(",")]

    t0 = time.perf_counter()
    model = sapphire.Model(solver=args.solver, rtol=args.rtol, atol=args.atol)
    halos = sapphire.HaloPopulation.from_diffmah(args.halos, seed=args.halo_seed)
    obs = sapphire.Observations.default()
    mock = forecasts.mock_observations(model, halos, obs, truth, noise_seed=args.noise_seed)
    (args.out / "mock_observations.json").write_text(json.dumps(mock.to_dict(), indent=1))
    exact = forecasts.ExactForward(
        model, halos, mock, free=free, fixed=truth, relations=relations, sigma_scale=args.sigma_scale
    )
    truth_free = truth[list(exact.free_index)]
    print(
        f"exact forward: {exact}; truth {dict(zip(exact.free_names, truth_free.round(4).tolist()))}; mock in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )

    # chains start near the truth (seeded jitter of 2% of the box): warmup far out in the box
    # would spend its solves in expensive corners.
    jitter = np.random.default_rng(args.seed).uniform(-1.0, 1.0, (args.chains, exact.n_free)) * 0.02 * exact.prior.width
    init = np.clip(truth_free + jitter, exact.prior.low, exact.prior.high)
    t1 = time.perf_counter()
    result = forecasts.run_hmc(
        exact,
        num_chains=args.chains,
        num_warmup=args.warmup,
        num_samples=args.samples,
        seed=args.seed,
        chain_method=args.chain_method,
        checkpoint=args.out / "exact_checkpoint.npz",
        block_size=args.block,
        time_limit_s=args.time_limit,
        progress=progress_printer("exact"),
        init=init,
    )
    wall = time.perf_counter() - t1
    result.save(args.out / "exact_hmc.npz")
    summary = result.summary() | {
        "truth": truth_free.tolist(),
        "wall_time_this_call_s": wall,
        "n_halos": args.halos,
        "model": repr(model.settings),
        "cpu_devices": args.cpu_devices,
    }
    (args.out / "exact_hmc.json").write_text(json.dumps(summary, indent=2))
    state = (
        "complete"
        if result.complete
        else f"PARTIAL ({result.samples.shape[1]} of {args.samples} draws; re-run to resume)"
    )
    print(f"exact HMC {state}: {wall:.1f} s this call; times {result.times}", flush=True)
    if result.samples.shape[1] >= 4:
        print(
            f"  mean {result.mean.round(4)}  std {result.std.round(4)}  R-hat {result.r_hat.round(4)}  ESS {result.ess.round(0)}  "
            f"divergent {result.n_divergent}",
            flush=True,
        )

    if args.emulator is None:
        return 0
    emu = load_emulator(args.emulator)
    emulated = forecasts.EmulatorForward(
        emu,
        mock,
        include_emulator_error=not args.no_emulator_error,
        free=free,
        fixed=truth,
        relations=relations,
        sigma_scale=args.sigma_scale,
    )
    t2 = time.perf_counter()
    emu_result = forecasts.run_hmc(
        emulated,
        num_chains=args.chains,
        num_warmup=args.warmup,
        num_samples=args.samples,
        seed=args.seed,
        chain_method=args.emulator_chain_method,
    )
    emu_wall = time.perf_counter() - t2
    emu_result.save(args.out / "emulator_hmc.npz")
    (args.out / "emulator_hmc.json").write_text(json.dumps(emu_result.summary() | {"wall_time_s": emu_wall}, indent=2))
    print(
        f"emulator HMC: {emu_wall:.1f} s ({emu_result.times}); R-hat max {np.nanmax(emu_result.r_hat):.4f}, "
        f"divergent {emu_result.n_divergent}",
        flush=True,
    )
    if result.flat.shape[0] < 10:
        print("exact run has too few draws for the cross-validation; resume it first", flush=True)
        return 1
    if not result.complete:
        print(
            f"WARNING: cross-validating against a PARTIAL exact run ({result.samples.shape[1]} draws per chain)",
            flush=True,
        )
    # Fisher ellipses: exact Laplace at the truth (the MAP of a noise-free mock; an exact MAP
    # search costs thousands of sensitivity solves), emulator Laplace at the emulator MAP.
    fisher_exact = forecasts.laplace(exact, truth_free)
    emu_map = forecasts.find_map(emulated, n_starts=8, seed=args.seed)
    fisher_emu = forecasts.laplace(emulated, emu_map.best)
    report = forecasts.cross_validate(
        result,
        emu_result,
        fisher_reference=fisher_exact,
        fisher_candidate=fisher_emu,
        labels=("exact", "emulator"),
        seed=args.seed,
    )
    report.to_json(args.out / "crossval.json")
    (args.out / "crossval.md").write_text(report.to_markdown())
    report.plot(args.out, truths=truth_free)
    print(report.to_markdown(), flush=True)
    return 0 if report.passed else 2


if __name__ == "__main__":
    sys.exit(main())
