"""The ``sapphire`` command line.  Thin: every subcommand calls the same functions a
notebook would."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np


def _parse_theta(text: str | None, prior) -> np.ndarray:
    if text is None:
        return prior.centre
    try:
        values = np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise SystemExit(f"--theta must be {prior.ndim} comma-separated numbers ({', '.join(prior.names)}); got {text!r}")
    try:
        return prior.validate(values)
    except ValueError as err:
        raise SystemExit(f"--theta: {err}")


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def cmd_evolve(args: argparse.Namespace) -> int:
    """Evolve N diffmah halos at theta; print a table; optionally save states and Jacobians."""
    import sapphire
    from tqdm import tqdm

    prior = sapphire.DEFAULT_PRIOR
    theta = _parse_theta(args.theta, prior)
    model = sapphire.Model(solver=args.solver, rtol=args.rtol)
    halos = sapphire.HaloPopulation.from_diffmah(args.halos, logm_min=args.logm_min, logm_max=args.logm_max, seed=args.seed)
    batch = min(args.batch, halos.n_halos)
    pieces, jacobians = [], []
    started = time.perf_counter()
    slices = _batches(halos.n_halos, batch)
    for sl in tqdm(slices, desc="evolving", unit="batch", disable=len(slices) == 1 or args.quiet):
        part = halos.subset(np.arange(sl.start, sl.stop))
        if part.n_halos < batch:  # keep one compiled shape: pad with the last halo
            part = halos.subset(np.r_[np.arange(sl.start, sl.stop), np.full(batch - part.n_halos, sl.stop - 1)])
        if args.jacobian:
            out, jac = model.evolve_with_jacobian(theta, part)
            jacobians.append(np.asarray(jac)[: sl.stop - sl.start])
        else:
            out = model.evolve(theta, part)
        pieces.append(out)
    elapsed = time.perf_counter() - started
    n = [sl.stop - sl.start for sl in slices]
    log_state = np.concatenate([np.asarray(p.log_state)[:k] for p, k in zip(pieces, n)])
    log_mhalo = np.concatenate([np.asarray(p.log_mhalo)[:k] for p, k in zip(pieces, n)])
    success = np.concatenate([np.asarray(p.success)[:k] for p, k in zip(pieces, n)])
    num_steps = np.concatenate([np.asarray(p.num_steps)[:k] for p, k in zip(pieces, n)])
    implicit = np.concatenate([np.asarray(p.implicit)[:k] for p, k in zip(pieces, n)])
    diagnostics = {
        key: np.concatenate([np.asarray(p.diagnostics[key])[:k] for p, k in zip(pieces, n)]) for key in pieces[0].diagnostics
    }

    print(f"theta = {dict(zip(prior.names, np.round(theta, 4).tolist()))}")
    print(f"{halos.n_halos} halos in {elapsed:.2f} s (incl. compilation); failed solves: {int((~success).sum())}; "
          f"implicit: {int(implicit.sum())}; steps mean {num_steps.mean():.0f}, max {num_steps.max()}")
    bins = np.linspace(log_mhalo.min(), log_mhalo.max() + 1e-9, min(6, halos.n_halos) + 1)
    header = f"{'log Mh':>8} {'n':>4} {'log M*/Mh':>10} {'log MISM/M*':>12} {'12+log O/H':>11} {'f_bar':>7} {'log SFR':>8}"
    print(header)
    print("-" * len(header))
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (log_mhalo >= lo) & (log_mhalo < hi) & success
        if not sel.any():
            continue
        med = lambda key: np.median(diagnostics[key][sel])
        print(f"{0.5 * (lo + hi):8.2f} {sel.sum():4d} {med('log_smhm'):10.3f} {med('log_gas_ratio'):12.3f} "
              f"{med('oxygen_abundance'):11.3f} {med('baryon_fraction'):7.3f} {np.log10(med('sfr') / 1e9):8.3f}")
    if args.out:
        arrays = dict(
            theta=theta, parameter_names=np.array(prior.names), state_names=np.array(sapphire.STATE_NAMES),
            log_state=log_state, log_mhalo=log_mhalo, success=success, num_steps=num_steps, implicit=implicit,
            **{f"diag_{k}": v for k, v in diagnostics.items()},
            metadata=json.dumps({
                "sapphire_version": sapphire.__version__, "config": model.config.to_dict(),
                "solver": model.settings.to_dict(), "halos": dict(halos.provenance), "halo_fingerprint": halos.fingerprint(),
            }),
        )
        if args.jacobian:
            arrays["jacobian"] = np.concatenate(jacobians)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.out, **arrays)
        print(f"wrote {args.out}")
    return 0 if success.all() else 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sapphire", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("evolve", help="evolve a diffmah halo population at one theta")
    p.add_argument("--halos", type=int, default=64, help="number of halos (default 64)")
    p.add_argument("--theta", help="8 comma-separated parameters (default: prior centre)")
    p.add_argument("--seed", type=int, default=0, help="halo population seed")
    p.add_argument("--logm-min", type=float, default=10.0)
    p.add_argument("--logm-max", type=float, default=12.5)
    p.add_argument("--solver", default="auto", choices=["auto", "tsit5", "kvaerno3", "kvaerno5"])
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--batch", type=int, default=256, help="halos per compiled batch")
    p.add_argument("--jacobian", action="store_true", help="also compute exact d log X / d theta")
    p.add_argument("--out", help="write states (and Jacobians) to this .npz")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evolve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
