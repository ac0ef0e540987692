"""``sapphire train`` and ``sapphire emulator-report`` (a ``sapphire.commands`` entry point)."""

from __future__ import annotations

import argparse
import json


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train_emulator

    hidden = tuple(int(h) for h in args.hidden.split(",")) if args.hidden else None
    options = {"hidden": hidden} if hidden else {}
    try:
        emu = train_emulator(args.store, gradient_weight=args.gradient_weight, ensemble=args.ensemble, epochs=args.epochs,
                             patience=args.patience, seed=args.seed, progress=not args.quiet, **options)
    except ValueError as err:
        raise SystemExit(f"sapphire train: {err}")
    path = emu.save(args.out)
    print(f"wrote {path}: {emu.ensemble_size} members trained on {args.store} (store {emu.store_fingerprint}), "
          f"gradient weight {args.gradient_weight}")
    return 0


def cmd_emulator_report(args: argparse.Namespace) -> int:
    from .report import emulator_report

    out = args.out or str(args.emulator).rstrip("/") + "_report"
    try:
        report = emulator_report(args.emulator, args.store, out, progress=not args.quiet)
    except ValueError as err:
        raise SystemExit(f"sapphire emulator-report: {err}")
    summary = report.get("summary", {})
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, (list, dict))}, indent=2))
    if "acceptance" in report:
        print(json.dumps(report["acceptance"], indent=2))
    print(f"wrote {out}/emulator_report.json and figures")
    return 0


def register(sub) -> None:
    """Add the ``train`` and ``emulator-report`` subcommands to the ``sapphire`` parser."""
    p = sub.add_parser("train", help="train a Sobolev (value + exact-gradient) deep-ensemble emulator on a training-set store")
    p.add_argument("store", help="training-set Zarr store (sapphire generate)")
    p.add_argument("out", help="emulator artifact to write (a directory, e.g. out.emu)")
    p.add_argument("--gradient-weight", type=float, default=1.0, help="lambda of the Jacobian term (0: values only; default 1)")
    p.add_argument("--ensemble", type=int, default=5, help="ensemble members (default 5)")
    p.add_argument("--epochs", type=int, default=600, help="maximum epochs (default 600; early stopping)")
    p.add_argument("--patience", type=int, default=200, help="early-stopping patience in epochs (default 200)")
    p.add_argument("--hidden", help="hidden widths, e.g. 128,128,128")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("emulator-report", help="validate an emulator on held-out store rows (errors in sigma_obs, Jacobians, Fisher, calibration)")
    p.add_argument("emulator", help="emulator artifact (sapphire train)")
    p.add_argument("store", help="store to test on: the training store (its held-out test split is used) or an independent test store")
    p.add_argument("--out", help="report directory (default: <emulator>_report)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_emulator_report)
