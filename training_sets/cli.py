"""``sapphire generate`` and ``sapphire inspect`` (a ``sapphire.commands`` entry point)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sapphire.cli_common import (
    OptionError,
    add_solver_options,
    device_count,
    existing_file,
    existing_path,
    model_from_options,
    nonnegative_int,
    output_dir,
    output_file,
    positive_int,
)


def cmd_generate(args: argparse.Namespace) -> int:
    import sapphire

    from .design import read_design_table
    from .generate import extend_store, generate
    from .store import store_identity

    if not (args.points or args.design or args.resume or args.extend):
        raise OptionError(
            "sapphire generate: give the number of design points (--points N) or a design table "
            "(--design table.csv); --resume or --extend M continue an existing store"
        )
    if Path(args.out).exists() and not (args.resume or args.extend):  # before the halos are made
        raise OptionError(
            f"sapphire generate: {args.out} already exists; add --resume to finish it, --extend N to "
            "grow it, or choose another path"
        )
    if (args.resume or args.extend) and not Path(args.out).exists():
        option = "--extend" if args.extend else "--resume"
        raise OptionError(
            f"sapphire generate: {option}: no store at {args.out!r} to {option[2:]} (create it first without {option})"
        )
    if args.no_jacobian and args.scheduler:
        raise OptionError(
            "sapphire generate: --no-jacobian: value-only points are computed locally, not with --scheduler"
        )
    model = model_from_options(args)
    try:
        table = read_design_table(args.design, model.prior) if args.design else None
    except ValueError as err:
        raise OptionError(f"sapphire generate: --design {args.design}: {err}") from None
    halos = sapphire.HaloPopulation.from_diffmah(
        args.halos, logm_min=args.logm_min, logm_max=args.logm_max, seed=args.halo_seed
    )
    try:
        if args.extend is not None:  # settings and halos are checked before the store grows
            expected = store_identity(model, halos, sapphire.Observations.default(), args.chunk, args.save_states)
            n = extend_store(args.out, args.extend, args.seed, expected=expected, jacobian=not args.no_jacobian)
            print(f"{args.out}: design extended by {args.extend} points (seed {args.seed}) to {n}; computing them")
            args.resume = True
        report = generate(
            args.out,
            n_points=args.points,
            seed=args.seed if not args.extend else _first_seed(args.out),
            halos=halos,
            model=model,
            chunk=args.chunk,
            save_states=args.save_states,
            design_table=table,
            resume=args.resume,
            devices=args.devices,
            scheduler=args.scheduler,
            batch_points=args.batch_points,
            progress=not args.quiet,
            jacobian=not args.no_jacobian,
        )
    except (FileExistsError, ValueError) as err:
        raise SystemExit(f"sapphire generate: {err}") from None
    print(
        f"{report.path}: {report.computed} points computed in {report.seconds:.1f} s on {report.backend} "
        f"({report.points_per_hour:,.0f} points/hour); store holds {report.n_points} points, "
        f"{report.failed_points} with failed halo solves ({report.failed_halos} halos in total)"
    )
    for line in report.repaired:
        print(f"  recomputed damaged {line}")
    return 0


def _first_seed(path) -> int | None:
    from .store import open_group

    return open_group(path).attrs["design"]["batches"][0].get("seed")


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspection import inspect_store

    if args.verify:
        return _verify(args)
    try:
        summary = inspect_store(args.store, figure=args.figure)
    except ValueError as err:
        raise SystemExit(f"sapphire inspect: {err}") from None
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['path']}  (sapphire {summary['sapphire_version']}, content {summary['fingerprint']})")
    print(
        f"  points: {summary['done']}/{summary['points']} done, chunk {summary['chunk']}, {summary['blocks_pending']} blocks pending"
    )
    print(
        f"  failures: {summary['points_with_failed_halos']} points with failed halos ({summary['failed_halos_total']} halos); "
        f"{summary['done_but_not_finite']} done rows with non-finite values; {summary['valid_points']} valid points"
    )
    print(
        f"  halos: {summary['halos']} (fingerprint {summary['halo_fingerprint']}); design batches: "
        + ", ".join(f"{b['kind']} seed {b.get('seed')} x{b['n_points']}" for b in summary["design"])
    )
    for name, rng in summary["summary_ranges"].items():
        print(f"  {name:>10}: " + ("no rows yet" if rng is None else f"[{rng[0]:.3f}, {rng[1]:.3f}]"))
    poor = summary["poorly_supported"]
    print(
        f"  poorly supported (support < {poor['min_support']:g} halos): {poor['valid_points_with_any']} valid points "
        f"with any; per summary: " + (", ".join(f"{k} {v}" for k, v in poor["per_summary"].items()) or "none")
    )
    if "figure" in summary:
        print(f"  wrote {summary['figure']}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    """``sapphire inspect STORE --verify``: every chunk read, damage and implausible values
    listed; exit status 1 if any."""
    from .inspection import verify_store

    try:
        result = verify_store(args.store, progress=not args.json)
    except ValueError as err:
        raise SystemExit(f"sapphire inspect: {err}") from None
    if args.json:
        print(json.dumps(result, indent=2))
        return 0 if result["ok"] else 1
    for d in result["damaged"]:
        print(f"{result['path']}: damaged {d['line']}")
    for f in result["out_of_bounds"]:
        print(
            f"{result['path']}: {f['array']} row {f['row']} holds {f['value']:.6g}, outside the physical bounds ({f['allowed']})"
        )
    if result["ok"]:
        print(f"{result['path']}: every chunk verified (crc32c), every value within its physical bounds")
    elif result["damaged"]:
        print(
            f"{result['path']}: {len(result['damaged'])} damaged chunk(s); `sapphire generate {result['path']} --resume` recomputes their rows"
        )
    return 0 if result["ok"] else 1


def register(sub) -> None:
    """Add the ``generate`` and ``inspect`` subcommands to the ``sapphire`` parser."""
    p = sub.add_parser(
        "generate", help="evaluate a Latin-hypercube design (summaries + exact Jacobians) into a Zarr store"
    )
    p.add_argument(
        "out", type=output_dir, help="the Zarr store to create (or finish with --resume, grow with --extend)"
    )
    p.add_argument("--points", type=positive_int, help="design points (Latin hypercube)")
    p.add_argument("--halos", type=positive_int, default=128, help="diffmah halos per design point (default 128)")
    p.add_argument(
        "--design-seed",
        "--seed",
        dest="seed",
        type=nonnegative_int,
        default=0,
        help="seed of the design's Latin hypercube (default 0)",
    )
    p.add_argument(
        "--halo-seed", type=nonnegative_int, default=0, help="seed of the diffmah halo population (default 0)"
    )
    p.add_argument(
        "--design", type=existing_file, help="CSV table of design points (header = parameter names) instead of --points"
    )
    p.add_argument(
        "--extend",
        type=positive_int,
        help="append this many new design points (seeded by --design-seed) to an existing store and compute them",
    )
    p.add_argument(
        "--chunk", type=positive_int, default=8, help="design points per work unit and Zarr chunk (default 8)"
    )
    p.add_argument("--devices", type=device_count, default="all", help="'all' local devices (default) or a count")
    p.add_argument("--scheduler", help="Dask scheduler address (tcp://host:port): workers evaluate and write blocks")
    p.add_argument(
        "--no-jacobian",
        action="store_true",
        help="value-only design points (new store or --extend): summaries and standard errors from the plain solve, "
        "no exact Jacobians (~6x cheaper per point on a CPU); the emulator trains on stores mixing both kinds",
    )
    p.add_argument("--resume", action="store_true", help="finish an interrupted store (same settings required)")
    p.add_argument("--save-states", action="store_true", help="also store every halo's z = 0 log state")
    p.add_argument(
        "--batch-points",
        action="store_true",
        help="evaluate each block's points as one batch of (point, halo) lanes: for GPUs (use a "
        "large --chunk); agrees with the default to the solver tolerance, not bit for bit",
    )
    add_solver_options(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "inspect", help="summarise a training-set store (coverage, failures, ranges) and plot its design"
    )
    p.add_argument("store", type=existing_path, help="the training-set Zarr store (sapphire generate)")
    p.add_argument(
        "--figure",
        type=output_file,
        help="write the design's pairwise projections to this PNG (its directory must exist)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--verify",
        action="store_true",
        help="read every chunk (crc32c checksums) and check values against physical bounds; "
        "list damaged chunks with their rows; exit status 1 if anything is found",
    )
    p.set_defaults(func=cmd_inspect)
