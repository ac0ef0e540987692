"""``sapphire refine STORE EMULATOR --out DIR``: posterior-focused refinement of an emulator
(``forecasts.refine``), registered by ``forecasts.cli.register``.

Every option is checked (store, emulator, observations or mock truth, free and fixed
parameters, sizes) before anything is computed or written; a bad one is one line on stderr,
exit status 2.  Exit status 0 when the held-out targets were met, 3 when the waves ran out
first (the report says what is missing; rerun with more ``--waves`` to continue).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sapphire.cli_common import fraction, nonnegative_int, output_dir, positive_float, positive_int

from .problem import load_observations, option_error, parse_names, parse_vector

#: Exit status when the waves ran out before the targets held.
NOT_CONVERGED_EXIT = 3


def cmd_refine(args: argparse.Namespace) -> int:
    """Refine an emulator where the posterior lives: waves of exact points drawn from its
    broadened posterior, scored held-out before it is retrained on them."""
    import sapphire
    import training_sets
    from emulator import SobolevEmulator
    from training_sets.generate import model_from_attrs

    from .campaigns import mock_observations
    from .refine import RefineSettings, refine

    if args.observations is not None and args.mock_theta is not None:
        raise option_error(args, "give --observations or --mock-theta, not both")
    if not Path(args.store).exists():
        raise option_error(args, f"STORE: no training-set store at {args.store!r}")
    try:
        ts = training_sets.open_training_set(args.store)
        model = model_from_attrs(ts.attrs)
    except (ValueError, KeyError, OSError) as err:
        raise option_error(args, f"STORE {args.store!r}: {err}") from None
    if not Path(args.emulator).exists():
        raise option_error(args, f"EMULATOR: no emulator at {args.emulator!r}")
    try:
        emu = SobolevEmulator.load(args.emulator)
        emu.check_observations(ts.observations)
    except ValueError as err:
        raise option_error(args, f"EMULATOR {args.emulator!r}: {err}") from None
    free = parse_names(args, args.free, sapphire.PARAMETER_NAMES, "--free")
    fixed = parse_vector(args, args.fixed, "--fixed", model.prior)
    truth = parse_vector(args, args.mock_theta, "--mock-theta", model.prior)
    obs = load_observations(args)
    try:
        emu.check_observations(obs)
    except ValueError as err:
        raise option_error(args, f"--observations: {err}") from None
    if args.broaden < 1:
        raise option_error(
            args, f"--broaden must be >= 1 (the proposal is the posterior broadened), got {args.broaden}"
        )
    try:
        settings = RefineSettings(
            waves=args.waves,
            points_per_wave=args.points_per_wave,
            broaden=args.broaden,
            spread_fraction=args.spread_fraction,
            chains=args.chains,
            warmup=args.warmup,
            draws=args.draws,
            map_starts=args.starts,
            seed=args.seed,
            include_emulator_error=not args.no_emulator_error,
            jacobian=not args.no_jacobian,
        )
    except ValueError as err:
        raise option_error(args, str(err)) from None
    if truth is not None:
        obs = mock_observations(model, ts.halos(), obs, truth)
        fixed = truth if fixed is None else fixed
    result = refine(
        args.store,
        emu,
        args.out,
        obs,
        free=free,
        fixed=fixed,
        settings=settings,
        progress=not args.quiet,
    )
    print(f"refine: {result.summary_line()}")
    print(f"refined emulator: {result.emulator_path}; report: {result.report_path}")
    return 0 if result.converged else NOT_CONVERGED_EXIT


def register_refine(sub) -> None:
    """Add the ``refine`` subcommand to the ``sapphire`` parser."""
    p = sub.add_parser(
        "refine",
        help="refine an emulator where the posterior lives: waves of exact points from its broadened posterior, "
        "appended to the store, scored held-out, then retrained on",
        description=cmd_refine.__doc__
        + " Writes OUT/emulator (a SobolevEmulator artifact for sapphire forecast --emulator), OUT/refine_report.md "
        "with figures and OUT/refine_state.json; appends the new points to STORE. A rerun continues from the last "
        f"finished wave. Exit 0 when the held-out targets hold, {NOT_CONVERGED_EXIT} when the waves ran out first.",
    )
    p.add_argument("store", help="training-set store (Zarr) the emulator was trained on; new points are appended")
    p.add_argument("emulator", help="emulator to refine (SobolevEmulator artifact directory)")
    p.add_argument("--out", type=output_dir, default="runs/refine", help="output directory (default runs/refine)")
    g = p.add_argument_group("problem")
    g.add_argument("--observations", help="observations JSON (Observations.to_json()); default Observations.default()")
    g.add_argument(
        "--mock-theta", help="8 comma-separated values: refine for noise-free exact-model mock data made there"
    )
    g.add_argument("--free", help="comma-separated free parameters (default all 8)")
    g.add_argument(
        "--fixed", help="8 comma-separated values of the held parameters (default: the mock's truth, else the centre)"
    )
    g.add_argument(
        "--no-emulator-error", action="store_true", help="leave the emulator's error out of the posterior's likelihood"
    )
    g = p.add_argument_group("waves")
    g.add_argument("--waves", type=positive_int, default=3, help="at most this many waves (default 3)")
    g.add_argument("--points-per-wave", type=positive_int, default=128, help="exact points per wave (default 128)")
    g.add_argument(
        "--broaden", type=positive_float, default=1.5, help="the proposal's width / the posterior's (>= 1; default 1.5)"
    )
    g.add_argument(
        "--spread-fraction",
        type=fraction,
        default=0.25,
        help="fraction of each wave's points chosen where the ensemble spread is largest (default 0.25)",
    )
    g.add_argument("--seed", type=nonnegative_int, default=0, help="seed of every draw: MAP starts, HMC, points")
    g.add_argument(
        "--no-jacobian",
        action="store_true",
        help="value-only new points (no exact Jacobians, ~6x cheaper each); the retraining masks their Jacobian term",
    )
    g = p.add_argument_group("posterior per wave (MAP, then NUTS from its modes)")
    g.add_argument("--starts", type=positive_int, default=8, help="MAP starts (default 8)")
    g.add_argument("--chains", type=positive_int, default=4, help="NUTS chains (default 4)")
    g.add_argument("--warmup", type=positive_int, default=300, help="warmup iterations per chain (default 300)")
    g.add_argument(
        "--hmc-draws", "--draws", dest="draws", type=positive_int, default=500, help="draws per chain (default 500)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_refine)
