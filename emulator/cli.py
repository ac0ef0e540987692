"""``sapphire train`` and ``sapphire emulator-report`` (a ``sapphire.commands`` entry point).

Both check their inputs before any training or evaluation: ``train`` refuses a store with too
few valid design points (:func:`minimum_valid_points`) and an existing artifact unless
``--force``; ``emulator-report`` refuses a test store whose halos, model constants or solver
settings differ from the training store's (:func:`store_differences`) unless
``--allow-other-store``, and says when only the observations' values differ.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sapphire.cli_common import (
    OptionError,
    existing_path,
    int_list,
    nonnegative_float,
    nonnegative_int,
    output_dir,
    positive_int,
)

#: The train / validation / test fractions that ``sapphire train`` uses (train_emulator's default).
TRAIN_SPLIT = (0.8, 0.1, 0.1)


def minimum_valid_points(n_parameters: int, split=TRAIN_SPLIT) -> int:
    """The fewest valid design points for which the seeded split (:func:`emulator.data.split_design`)
    leaves ``n_parameters + 1`` training points (the fewest that span the parameter space: with
    fewer, the design is flat in some direction), one validation point (early stopping and the
    spread calibration) and one test point (the report)."""
    import numpy as np

    from .data import split_design

    n = n_parameters + 3
    while True:
        try:
            parts = split_design(np.arange(n), split, seed=0)
        except ValueError:
            parts = None
        if parts is not None and parts["train"].size >= n_parameters + 1 and parts["val"].size and parts["test"].size:
            return n
        n += 1


def cmd_train(args: argparse.Namespace) -> int:
    from .data import as_training_set, exclusion_counts
    from .train import train_emulator

    out = Path(args.out)
    if out.exists() and not args.force:
        raise OptionError(
            f"sapphire train: {args.out!r} exists: pass --force to replace it (it is replaced only "
            "after the new emulator is trained)"
        )
    ts = as_training_set(args.store)
    valid, excluded = exclusion_counts(ts)
    needed = minimum_valid_points(ts.prior.ndim)
    if valid.size < needed:
        raise OptionError(
            f"sapphire train: {args.store} has {valid.size} valid design points (of {excluded['n_points']}; "
            f"not done {excluded['not_done']}, failed halos {excluded['failed_halos']}, non-finite "
            f"{excluded['non_finite']}); training needs at least {needed} ({ts.prior.ndim + 1} to train on, "
            f"1 to validate, 1 to test): generate more (sapphire generate {args.store} --extend N)"
        )
    options = {"hidden": args.hidden} if args.hidden else {}
    emu = train_emulator(
        ts,
        gradient_weight=args.gradient_weight,
        ensemble=args.ensemble,
        epochs=args.epochs,
        patience=args.patience,
        seed=args.seed,
        progress=not args.quiet,
        split=TRAIN_SPLIT,
        **options,
    )
    path = emu.save(args.out)
    print(
        f"wrote {path}: {emu.ensemble_size} members trained on {args.store} (store {emu.store_fingerprint}), "
        f"gradient weight {args.gradient_weight}"
    )
    return 0


def store_differences(emu, ts) -> dict[str, list[str]]:
    """How the test store ``ts`` differs from the store ``emu`` was trained on (its recorded
    ``store_identity``): ``{"refuse": [...], "note": [...]}``.  Halos, model constants and solver
    settings change what the summaries are (refuse); the observations' y and sigma (same
    relations and kernel centres) change only the units of the report (note)."""
    identity = dict(getattr(emu, "store_identity", {}) or {})
    attrs = dict(getattr(ts, "attrs", {}) or {})
    refuse, note = [], []
    if not identity.get("halos") or not attrs.get("halos"):
        note.append("the training store's halos are not recorded (in the artifact or the test store): not checked")
    else:
        trained, tested = identity["halos"], attrs["halos"]
        if trained.get("fingerprint") != tested.get("fingerprint"):
            refuse.append(
                f"halos: the test store has {tested.get('n_halos')} halos (fingerprint {tested.get('fingerprint')}, "
                f"{tested.get('provenance')}), the training store {trained.get('n_halos')} "
                f"(fingerprint {trained.get('fingerprint')}, {trained.get('provenance')})"
            )
    for key, what in (("model_config", "model constants"), ("solver", "solver settings")):
        if key in identity and key in attrs and identity[key] != attrs[key]:
            diff = sorted(k for k in set(identity[key]) | set(attrs[key]) if identity[key].get(k) != attrs[key].get(k))
            refuse.append(f"{what} differ ({', '.join(diff)})")
    trained_obs = emu.observations.to_dict()
    if ts.observations.to_dict() != trained_obs:
        note.append(
            "the test store's observations (y, sigma) differ from the emulator's: errors are in units of the "
            "emulator's sigma_obs"
        )
    return {"refuse": refuse, "note": note}


def _report_lines(report: dict[str, Any]) -> list[str]:
    """The headline figures of an emulator report, one per line."""
    v, j, f = report["value_error_sigma_obs"], report["jacobian_rel_error"], report["fisher"]
    lines = [
        f"test points: {report['n_test']} ({report['test_points']})",
        f"value error [sigma_obs]: worst median {v['worst_median']:.3g} ({v['worst_median_summary']}), worst p95 "
        f"{v['worst_p95']:.3g} ({v['worst_p95_summary']}), median over all {v['median_all']:.3g}",
        f"Jacobian relative error: median {j['median']:.3g}, p75 {j['p75']:.3g}, p95 {j['p95']:.3g}",
        f"Fisher: overlap median {f['overlap_median']:.3g}, KL median {f['kl_median']:.3g}",
    ]
    if "calibration" in report:
        c = report["calibration"]
        lines.append(f"calibration: {c['fraction_inside_2_error']:.1%} of errors inside +-2 error (target 90-99%)")
    lines.append("acceptance: " + ", ".join(f"{k} {v}" for k, v in report["acceptance"].items()))
    return lines


def cmd_emulator_report(args: argparse.Namespace) -> int:
    from sapphire.jsonio import write_json

    from .artifact import SobolevEmulator
    from .data import as_training_set
    from .report import emulator_report

    emu = SobolevEmulator.load(args.emulator)
    ts = as_training_set(args.store)
    differences = store_differences(emu, ts)
    if differences["refuse"] and not args.allow_other_store:
        raise OptionError(
            f"sapphire emulator-report: {args.store} was not made like the emulator's training store: "
            + "; ".join(differences["refuse"])
            + " (--allow-other-store to report anyway)"
        )
    same_store = ts.fingerprint == emu.store_fingerprint
    if same_store and not emu.training.get("split", {}).get("test"):
        raise OptionError(
            f"sapphire emulator-report: {args.emulator} has no held-out test split of {args.store}: "
            "test it on an independent store made with the same halos (sapphire generate TEST.zarr "
            "--design-seed S --halo-seed H ...)"
        )
    for line in differences["refuse"]:
        print(f"warning: test store differs from the training store: {line}")
    for line in differences["note"]:
        print(f"note: {line}")
    out = args.out or str(args.emulator).rstrip("/") + "_report"
    report = emulator_report(emu, ts, out, progress=not args.quiet)
    if differences["refuse"] or differences["note"]:
        report["store_differences"] = differences
        write_json(Path(out) / "emulator_report.json", report)
    for line in _report_lines(report):
        print(line)
    print(f"wrote {out}/emulator_report.json and figures")
    return 0


def register(sub) -> None:
    """Add the ``train`` and ``emulator-report`` subcommands to the ``sapphire`` parser."""
    p = sub.add_parser(
        "train", help="train a Sobolev (value + exact-gradient) deep-ensemble emulator on a training-set store"
    )
    p.add_argument("store", type=existing_path, help="training-set Zarr store (sapphire generate)")
    p.add_argument("out", type=output_dir, help="emulator artifact to write (a directory, e.g. out.emu)")
    p.add_argument(
        "--gradient-weight",
        type=nonnegative_float,
        default=1.0,
        help="lambda of the Jacobian term (0: values only; default 1)",
    )
    p.add_argument("--ensemble", type=positive_int, default=5, help="ensemble members (default 5)")
    p.add_argument("--epochs", type=positive_int, default=600, help="maximum epochs (default 600; early stopping)")
    p.add_argument("--patience", type=positive_int, default=200, help="early-stopping patience in epochs (default 200)")
    p.add_argument("--hidden", type=int_list, help="hidden layer widths, e.g. 128,128,128 (default: train_emulator's)")
    p.add_argument(
        "--seed",
        type=nonnegative_int,
        default=0,
        help="seed of the split, the members' initialisation and the minibatch order (default 0)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing artifact at OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "emulator-report",
        help="validate an emulator on held-out store rows (errors in sigma_obs, Jacobians, Fisher, calibration)",
    )
    p.add_argument("emulator", type=existing_path, help="emulator artifact (sapphire train)")
    p.add_argument(
        "store",
        type=existing_path,
        help="store to test on: the training store (its held-out test split is used) or an independent "
        "test store made with the same halos and settings",
    )
    p.add_argument("--out", type=output_dir, help="report directory (default: <emulator>_report)")
    p.add_argument(
        "--allow-other-store",
        action="store_true",
        help="report even if the test store's halos, model constants or solver settings differ from the "
        "training store's (with a warning)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_emulator_report)
