"""The ``sapphire`` command line.  Thin: every subcommand calls the same functions a
notebook would."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .cli_common import (
    ArgumentParser,
    OptionError,
    add_solver_options,
    check_option_ranges,
    join_negative_values,
    model_from_options,
    nonnegative_int,
    output_dir,
    output_file,
    parse_theta,
    positive_int,
    run_command,
)
from .jsonio import write_json


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def cmd_evolve(args: argparse.Namespace) -> int:
    """Evolve N diffmah halos at theta; print a table; optionally save states and Jacobians."""
    from tqdm import tqdm

    import sapphire

    prior = sapphire.DEFAULT_PRIOR
    theta = parse_theta(args.theta, prior)
    model = model_from_options(args)
    halos = sapphire.HaloPopulation.from_diffmah(
        args.halos, logm_min=args.logm_min, logm_max=args.logm_max, seed=args.halo_seed
    )
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

    def gather(get) -> np.ndarray:
        """One array over all batches, dropping the padding of the last."""
        return np.concatenate([np.asarray(get(p))[:k] for p, k in zip(pieces, n)])

    log_state = gather(lambda p: p.log_state)
    log_mhalo = gather(lambda p: p.log_mhalo)
    success = gather(lambda p: p.success)
    num_steps = gather(lambda p: p.num_steps)
    implicit = gather(lambda p: p.implicit)
    diagnostics = {key: gather(lambda p, key=key: p.diagnostics[key]) for key in pieces[0].diagnostics}

    print(f"theta = {dict(zip(prior.names, np.round(theta, 4).tolist()))}")
    print(
        f"{halos.n_halos} halos in {elapsed:.2f} s (incl. compilation); failed solves: {int((~success).sum())}; "
        f"implicit: {int(implicit.sum())}; steps mean {num_steps.mean():.0f}, max {num_steps.max()}"
    )
    bins = np.linspace(log_mhalo.min(), log_mhalo.max() + 1e-9, min(6, halos.n_halos) + 1)
    header = (
        f"{'log Mh':>8} {'n':>4} {'log M*/Mh':>10} {'log MISM/M*':>12} {'12+log O/H':>11} {'f_bar':>7} {'log SFR':>8}"
    )
    print(header)
    print("-" * len(header))
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (log_mhalo >= lo) & (log_mhalo < hi) & success
        if not sel.any():
            continue
        med = lambda key: np.median(diagnostics[key][sel])
        print(
            f"{0.5 * (lo + hi):8.2f} {sel.sum():4d} {med('log_smhm'):10.3f} {med('log_gas_ratio'):12.3f} "
            f"{med('oxygen_abundance'):11.3f} {med('baryon_fraction'):7.3f} {np.log10(med('sfr') / 1e9):8.3f}"
        )
    if args.out:
        arrays = dict(
            theta=theta,
            parameter_names=np.array(prior.names),
            state_names=np.array(sapphire.STATE_NAMES),
            log_state=log_state,
            log_mhalo=log_mhalo,
            success=success,
            num_steps=num_steps,
            implicit=implicit,
            **{f"diag_{k}": v for k, v in diagnostics.items()},
            metadata=json.dumps(
                {
                    "sapphire_version": sapphire.__version__,
                    "config": model.config.to_dict(),
                    "solver": model.settings.to_dict(),
                    "halos": dict(halos.provenance),
                    "halo_fingerprint": halos.fingerprint(),
                }
            ),
        )
        if args.jacobian:
            arrays["jacobian"] = np.concatenate(jacobians)
        with open(args.out, "wb") as f:  # exactly the path given (numpy would add .npz to a bare name)
            np.savez_compressed(f, **arrays)
        print(f"wrote {args.out}")
    return 0 if success.all() else 3


def _append_halos(first, second):
    """One population with the halos of ``first`` followed by those of ``second`` (same grid)."""
    import jax.numpy as jnp

    import sapphire
    from sapphire.halos import set_provenance

    if first.n_times != second.n_times or not np.allclose(np.asarray(first.times), np.asarray(second.times)):
        raise ValueError("can only append halos on the same time grid")
    cat = lambda a, b: jnp.concatenate([a, b], axis=0)
    return sapphire.HaloPopulation(
        times=first.times,
        log_mhalo=cat(first.log_mhalo, second.log_mhalo),
        mhalo_rate=cat(first.mhalo_rate, second.mhalo_rate),
        t_start=cat(first.t_start, second.t_start),
        coeffs=tuple(cat(a, b) for a, b in zip(first.coeffs, second.coeffs)),
        provenance=set_provenance(
            first.provenance, n_halos=first.n_halos + second.n_halos, appended=second.fingerprint()
        ),
    )


def _check_counts(args: argparse.Namespace, min_halos: int) -> None:
    if args.halos < min_halos:
        raise SystemExit(f"--halos must be >= {min_halos}, got {args.halos}")
    if args.draws < 0 or (args.draws == 0 and not getattr(args, "corners", False)):
        raise SystemExit(f"--prior-draws (--draws) must be >= 1 (or 0 with --corners), got {args.draws}")


def cmd_sensitivity(args: argparse.Namespace) -> int:
    """Jacobian heat map of a Milky-Way-mass halo (prior centre) and the ensemble view of the
    parameter sensitivity versus halo mass over a Latin hypercube of the prior; JSON of which
    parameter dominates per mass bin."""
    from tqdm import tqdm

    import sapphire
    from sapphire import plots
    from sapphire.prior import latin_hypercube

    _check_counts(args, 2)
    if args.bins < 1:
        raise SystemExit(f"--bins must be >= 1, got {args.bins}")
    prior = sapphire.DEFAULT_PRIOR
    model = model_from_options(args)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    sample = sapphire.HaloPopulation.from_diffmah(
        args.halos, logm_min=args.logm_min, logm_max=args.logm_max, seed=_halo_seed(args)
    )
    mw = sapphire.HaloPopulation.from_diffmah(1, logm_min=11.99, logm_max=12.01, seed=_halo_seed(args))
    halos = _append_halos(sample, mw)  # one compiled shape: the MW halo rides along as the last halo
    thetas = np.vstack([prior.centre[None, :], latin_hypercube(prior, args.draws, args.seed)])

    jacobians, successes = [], []
    started = time.perf_counter()
    for theta in tqdm(thetas, desc="sensitivity (centre + draws)", unit="draw", disable=args.quiet):
        out, jac = model.evolve_with_jacobian(theta, halos)
        jacobians.append(np.asarray(jac))
        successes.append(np.asarray(out.success))
        log_mhalo = np.asarray(out.log_mhalo)
    elapsed = time.perf_counter() - started
    jac = np.stack(jacobians)  # (1 + K, N + 1, 7, 8)
    success = np.stack(successes)
    failed_per_draw = (~success).sum(axis=1)

    mw_jac = jac[0, -1]
    plots.jacobian_heatmap(
        mw_jac,
        title=f"Milky-Way-mass halo (log Mh(z=0) = {log_mhalo[-1]:.2f}), prior centre",
        path=out_dir / "jacobian_mw.png",
    )
    ensemble = jac[1:, : args.halos] if args.draws > 0 else jac[:, : args.halos]
    bins = np.linspace(args.logm_min, args.logm_max, args.bins + 1)
    plots.sensitivity_vs_mass(log_mhalo[: args.halos], ensemble, bins, path=out_dir / "sensitivity_vs_mass.png")

    width = prior.width
    quantities = {}
    for name, values in plots.relation_sensitivities(ensemble).items():
        centres, medians, counts = plots.binned_sensitivity(log_mhalo[: args.halos], values, bins)
        _, scaled, _ = plots.binned_sensitivity(log_mhalo[: args.halos], values * width, bins)
        pick = lambda m: [prior.names[int(np.argmax(row))] if np.isfinite(row).any() else None for row in m]
        quantities[name] = {
            "median_abs": medians,
            "dominant": pick(medians),
            "median_abs_times_prior_width": scaled,
            "dominant_per_prior_width": pick(scaled),
            "counts": counts,
        }
    payload = {
        "description": (
            "Median |d q / d theta| over halos (in log10 Mh(z=0) bins) and Latin-hypercube prior draws, "
            "q = log10 M_*, log10 M_ISM/M_*, 12 + log(O/H); 'dominant' = parameter with the largest median "
            "|derivative|, 'dominant_per_prior_width' = largest median |derivative| x prior width."
        ),
        "parameters": list(prior.names),
        "prior_width": width,
        "bin_edges": bins,
        "bin_centres": 0.5 * (bins[:-1] + bins[1:]),
        "quantities": quantities,
        "mw_halo": {
            "log_mhalo": float(log_mhalo[-1]),
            "theta": prior.centre,
            "state_names": list(sapphire.STATE_NAMES),
            "jacobian": mw_jac,
        },
        "thetas": thetas,
        "failed_per_draw": failed_per_draw,
        "n_halos": args.halos,
        "seed": args.seed,
        "halo_seed": _halo_seed(args),
        "seconds": elapsed,
        "solver": model.settings.to_dict(),
        "halo_fingerprint": halos.fingerprint(),
        "sapphire_version": sapphire.__version__,
    }
    write_json(out_dir / "sensitivity.json", payload)

    print(
        f"{len(thetas)} solves (prior centre + {args.draws} draws) x {halos.n_halos} halos in {elapsed:.1f} s; "
        f"failed halos per draw: {failed_per_draw.tolist()}"
    )
    header = f"{'log Mh bin':>13} {'n':>5} " + " ".join(f"{q:>17}" for q in quantities)
    print("dominant parameter (largest median |d q/d theta|; per prior width in brackets)")
    print(header)
    for b in range(args.bins):
        cells = " ".join(
            f"{str(v['dominant'][b]):>8} [{str(v['dominant_per_prior_width'][b]):>7}]" for v in quantities.values()
        )
        print(f"{bins[b]:6.2f}-{bins[b + 1]:5.2f} {int(quantities['log_mstar']['counts'][b]):5d} {cells}")
    print(f"wrote {out_dir / 'jacobian_mw.png'}, {out_dir / 'sensitivity_vs_mass.png'}, {out_dir / 'sensitivity.json'}")
    return 0


def cmd_ppc(args: argparse.Namespace) -> int:
    """Prior predictive check: the three relations over a Latin hypercube of the prior (and its
    corners), against the default data."""
    from tqdm import tqdm

    import sapphire
    from sapphire import plots
    from sapphire.predictive import predictive_coverage
    from sapphire.prior import latin_hypercube

    _check_counts(args, 2)
    prior = sapphire.DEFAULT_PRIOR
    model = model_from_options(args)
    obs = sapphire.Observations.default()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    halos = sapphire.HaloPopulation.from_diffmah(
        args.halos, logm_min=args.logm_min, logm_max=args.logm_max, seed=_halo_seed(args)
    )
    thetas = latin_hypercube(prior, args.draws, args.seed)
    kinds = ["lhs"] * len(thetas)
    if args.corners:
        thetas = np.vstack([thetas, prior.corners()])
        kinds += ["corner"] * (2**prior.ndim)

    means, stderrs, failed, supports = [], [], [], []
    started = time.perf_counter()
    progress = tqdm(thetas, desc="prior predictive", unit="draw", disable=args.quiet)
    for theta in progress:
        s = model.summaries(theta, halos, obs)
        means.append(np.asarray(s.mean))
        stderrs.append(np.asarray(s.stderr))
        supports.append(np.asarray(s.support))
        failed.append(s.n_failed)
        progress.set_postfix(failed=int(np.sum(failed)))
    elapsed = time.perf_counter() - started
    means, stderrs, failed, supports = np.stack(means), np.stack(stderrs), np.asarray(failed), np.stack(supports)
    poor = ~(supports >= sapphire.summaries.MIN_SUPPORT)  # (n_draw, S)

    coverage = predictive_coverage(obs, means)
    for point, fraction in zip(coverage["points"], poor.mean(axis=0)):
        point["fraction_poorly_supported"] = float(fraction)
    n_draw = len(thetas)
    plots.prior_predictive_bands(
        obs,
        means,
        path=out_dir / "ppc.png",
        title=f"Prior predictive: {args.draws} Latin-hypercube draws"
        + (" + 256 corners" if args.corners else "")
        + f", {args.halos} halos",
    )
    payload = {
        **coverage,
        "n_lhs": args.draws,
        "corners": bool(args.corners),
        "n_halos": args.halos,
        "seed": args.seed,
        "halo_seed": _halo_seed(args),
        "failed_per_draw": failed,
        "draws_with_failures": int(np.sum(failed > 0)),
        "failed_halos_total": int(failed.sum()),
        "min_support": sapphire.summaries.MIN_SUPPORT,
        "poorly_supported_per_draw": poor.sum(axis=1).tolist(),
        "draws_with_poorly_supported": int(np.sum(poor.any(axis=1))),
        "seconds": elapsed,
        "solver": model.settings.to_dict(),
        "observations": obs.fingerprint(),
        "halo_fingerprint": halos.fingerprint(),
        "sapphire_version": sapphire.__version__,
    }
    write_json(out_dir / "ppc.json", payload)
    np.savez_compressed(
        out_dir / "ppc_draws.npz",
        thetas=thetas,
        kind=np.array(kinds),
        mean=means,
        stderr=stderrs,
        support=supports,
        n_failed=failed,
        names=np.array(sapphire.population_summaries.summary_names(obs)),
    )

    print(
        f"{n_draw} draws x {args.halos} halos in {elapsed:.1f} s; draws with failed halos: "
        f"{payload['draws_with_failures']} (failed halo solves in total: {payload['failed_halos_total']})"
    )
    print(f"{'relation':>10} {'points':>6} {'in envelope':>12} {'in 2.5-97.5':>12}")
    for name, frac in coverage["fractions"].items():
        print(f"{name:>10} {frac['n_points']:6d} {frac['inside_envelope']:12.2f} {frac['inside_band']:12.2f}")
    print(
        f"draws with poorly supported summaries (support < {sapphire.summaries.MIN_SUPPORT:g} halos): "
        f"{payload['draws_with_poorly_supported']} of {n_draw} ({int(poor.sum())} summaries in total)"
    )
    for p in coverage["points"]:
        if p["fraction_poorly_supported"] > 0:
            print(
                f"  poorly supported: {p['relation']} x = {p['x']:.2f} in {p['fraction_poorly_supported']:.0%} of draws"
            )
    outside = [p for p in coverage["points"] if not p["inside_envelope"]]
    for p in outside:
        lo, hi = p["envelope"]
        print(f"  outside envelope: {p['relation']} x = {p['x']:.2f}: y = {p['y']:.3f}, envelope [{lo}, {hi}]")
    print(f"wrote {out_dir / 'ppc.png'}, {out_dir / 'ppc.json'}, {out_dir / 'ppc_draws.npz'}")
    return 0


#: The order in which the other packages' subcommands appear in ``sapphire --help``.
COMMAND_GROUP_ORDER = ("training_sets", "emulator", "forecasts", "quickstart")


def register_plugin_commands(sub) -> None:
    """Add the subcommands that other packages declare as ``sapphire.commands`` entry points
    (pyproject.toml): each entry point is a ``register(subparsers)`` function.  The engine
    imports none of them by name, so imports flow one way."""
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group="sapphire.commands")}
    rank = {name: i for i, name in enumerate(COMMAND_GROUP_ORDER)}
    for name in sorted(found, key=lambda n: (rank.get(n, len(rank)), n)):
        found[name].load()(sub)


def _halo_seed(args: argparse.Namespace) -> int:
    """``--halo-seed``, or ``--seed`` where it is not given (sensitivity, ppc)."""
    return args.seed if args.halo_seed is None else args.halo_seed


def add_halo_seed_option(p: argparse.ArgumentParser, *, default: int | None = 0, seed_alias: bool = False) -> None:
    """``--halo-seed``: the seed of the diffmah halo population (every subcommand).  With
    ``seed_alias``, ``--seed`` is accepted for it too (only where the command has no other
    random draws: ``evolve``)."""
    names = ["--halo-seed", "--seed"] if seed_alias else ["--halo-seed"]
    fallback = "--seed" if default is None else str(default)
    p.add_argument(
        *names,
        dest="halo_seed",
        type=nonnegative_int,
        default=default,
        help=f"seed of the diffmah halo population (default {fallback})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="sapphire", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("evolve", help="evolve a diffmah halo population at one theta")
    p.add_argument("--halos", type=positive_int, default=64, help="number of diffmah halos (default 64)")
    p.add_argument(
        "--theta", help="8 comma-separated parameters in sapphire.PARAMETER_NAMES order (default: prior centre)"
    )
    add_halo_seed_option(p, seed_alias=True)
    p.add_argument("--batch", type=positive_int, default=256, help="halos per compiled batch (default 256)")
    p.add_argument("--jacobian", action="store_true", help="also compute exact d log X / d theta")
    p.add_argument(
        "--out",
        type=output_file,
        help="write states (and Jacobians) to this file, exactly this path (an .npz archive; its directory must exist)",
    )
    add_solver_options(p)
    p.set_defaults(func=cmd_evolve)

    p = sub.add_parser(
        "sensitivity", help="Jacobian heat map (MW-mass halo) and sensitivity versus halo mass over prior draws"
    )
    p.add_argument("--halos", type=positive_int, default=64, help="diffmah halos (default 64; a MW-mass halo is added)")
    p.add_argument(
        "--prior-draws",
        "--draws",
        dest="draws",
        type=nonnegative_int,
        default=32,
        help="Latin-hypercube prior draws (default 32)",
    )
    p.add_argument(
        "--seed",
        type=nonnegative_int,
        default=0,
        help="seed of the Latin hypercube (and of the halos unless --halo-seed)",
    )
    add_halo_seed_option(p, default=None)
    p.add_argument("--bins", type=positive_int, default=5, help="halo-mass bins (default 5)")
    p.add_argument(
        "--out", type=output_dir, default="runs/sensitivity", help="output directory (PNGs and sensitivity.json)"
    )
    add_solver_options(p)
    p.set_defaults(func=cmd_sensitivity)

    p = sub.add_parser("ppc", help="prior predictive bands of the three relations with the data")
    p.add_argument(
        "--prior-draws",
        "--draws",
        dest="draws",
        type=nonnegative_int,
        default=200,
        help="Latin-hypercube prior draws (default 200)",
    )
    p.add_argument("--halos", type=positive_int, default=64, help="diffmah halos (default 64)")
    p.add_argument("--corners", action="store_true", help="add the 256 corners of the prior box")
    p.add_argument(
        "--seed",
        type=nonnegative_int,
        default=0,
        help="seed of the Latin hypercube (and of the halos unless --halo-seed)",
    )
    add_halo_seed_option(p, default=None)
    p.add_argument(
        "--out", type=output_dir, default="runs/ppc", help="output directory (ppc.png, ppc.json, ppc_draws.npz)"
    )
    add_solver_options(p)
    p.set_defaults(func=cmd_ppc)

    register_plugin_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand.  Bad options and inputs exit with status 2 and one line on stderr
    naming the option, the value and what is allowed (:mod:`sapphire.cli_common`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(join_negative_values(argv))
        check_option_ranges(args)
        # Use every core: batches are split over host devices (sapphire/devices.py).  Must run
        # before JAX initialises; SAPPHIRE_CPU_DEVICES=1 turns it off.
        import os

        from .devices import set_host_device_count

        set_host_device_count(int(os.environ.get("SAPPHIRE_CPU_DEVICES", "0")) or None)
        return run_command(args)
    except OptionError as err:
        sys.stderr.write(f"{err}\n")
        raise


if __name__ == "__main__":
    sys.exit(main())
