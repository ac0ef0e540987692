"""``sapphire forecast``, ``sapphire validate`` and ``sapphire recover`` (a ``sapphire.commands``
entry point, :func:`register`).  The problem the options describe: forecasts/problem.py; the
shared steps (MAP, Fisher cache, HMC checkpoints): forecasts/steps.py.

Thin: each subcommand parses its options into the objects of the ``forecasts`` package, calls
the same functions a notebook would, writes JSON and PNG files under ``--out`` and prints a
short table.

The problem (shared options)
----------------------------
``--forward emulator|exact``     what predicts the summaries (forecast, recover; validate uses both)
``--emulator PATH``              a saved ``emulator.SobolevEmulator`` (needed for the emulator)
``--halos N [--halo-seed S]``    the exact model on N diffmah halos (solver options apply), or
``--store TS.zarr``              the exact model and halo population recorded in a training set
``--free A_etaM,A_tdep``         free parameters (default all 8)
``--fixed v1,...,v8``            values of the held parameters (default: the mock's truth, else
                                 the prior centre); all 8 in ``sapphire.PARAMETER_NAMES`` order
``--relations smhm,mzr``         relations compared (default all)
``--sigma-scale 0.5`` (or ``smhm=0.5,mzr=1``)   factor on the observational errors
``--observations FILE.json``     ``Observations.to_json()`` output (default ``Observations.default()``)
``--mock-theta v1,...,v8``       replace the data by the exact model's (noise-free) summaries at
                                 this theta (``forecasts.mock_observations``; needs --halos or --store)

Exit codes: 0 done; 1 ``validate --strict`` and the verdict is FAIL; 2 a bad option or input
(one line on stderr naming the option, the value and what is allowed; nothing computed);
3 an HMC run stopped at ``--time-limit`` before its end (rerun the same command to resume from
the checkpoint); 4 ``forecast`` with modes and its NUTS chains did not converge inside a mode
(max R-hat > 1.01; every output is written).

Modes (issue 19): ``forecast --modes`` (default with ``--hmc`` for the emulator) weighs the
posterior's modes by tempered SMC, finds each mode's MAP, runs NUTS in each mode and merges
modes whose chains mix (forecasts/steps.py ``modes_step``); ``validate --modes`` compares the
emulator and exact posteriors mode by mode (``forecasts.modes.cross_validate_modes``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from sapphire.cli_common import (
    add_solver_options,
    fraction,
    nonnegative_float,
    nonnegative_int,
    output_dir,
    positive_float,
    positive_int,
)
from sapphire.jsonio import write_json

from .problem import (
    Problem,
    available_relation_sets,
    build_problem,
    make_forward,
    note,
    option_error,
    parse_relation_sets,
    split_list,
)
from .steps import fisher_draws, hmc_step, laplace_step, mode_convergence, mode_draws, modes_step, use_modes

HESSIANS = ("auto", "autodiff", "fd_grad", "gauss-newton")
#: Exit status of a run whose HMC stopped at --time-limit (rerun to resume); 2 is a bad option.
INCOMPLETE_EXIT = 3
#: HMC chains, the same default for every subcommand.
DEFAULT_CHAINS = 4
#: Exit status of a forecast whose NUTS chains did not converge inside a mode (results written).
NOT_CONVERGED_EXIT = 4
#: R-hat above which a mode's chains have not converged.
RHAT_THRESHOLD = 1.01


def _fmt(value, spec: str = ".4g") -> str:
    if value is None:
        return "n/a"
    value = float(value)
    return format(value, spec) if np.isfinite(value) else "n/a"


def _settings(args) -> dict:
    return {k: v for k, v in vars(args).items() if k != "func"}


def _run_record(args, started: float) -> dict:
    """The tail of every JSON record this module writes: the settings, the wall-clock seconds
    since ``started`` and the version."""
    import sapphire

    return {
        "settings": _settings(args),
        "seconds": time.perf_counter() - started,
        "sapphire_version": sapphire.__version__,
    }


def _print_map_line(fit: dict | None) -> None:
    """One line on the MAP search (nothing when there was none)."""
    if fit is not None:
        print(f"MAP: -ln L = {fit['best_loss']:.4f}, {sum(fit['converged'])}/{len(fit['converged'])} starts converged")


def _header(args, fm, problem: Problem) -> None:
    data = "mock at --mock-theta" if problem.truth is not None else problem.info["observations"]["source"]
    print(
        f"{type(fm).__name__}: free {', '.join(fm.free_names)}; relations {', '.join(fm.relations)} "
        f"({fm.n_summary} summaries); sigma scale {fm.sigma_scale}; data: {data}"
    )


# ------------------------------------------------------------------------------------------------
# sapphire forecast
# ------------------------------------------------------------------------------------------------
def cmd_forecast(args: argparse.Namespace) -> int:
    """MAP, Laplace (Fisher) at the MAP and optionally HMC for one forward model."""

    from .plots import corner_overlay, fisher_ellipses

    started = time.perf_counter()
    problem = build_problem(args, need_exact=args.forward == "exact", need_emulator=args.forward == "emulator")
    fm = make_forward(args, problem, args.forward)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if problem.truth is not None:
        (out / "mock_observations.json").write_text(problem.obs.to_json())
    _header(args, fm, problem)
    point, fit, fisher = laplace_step(args, fm, problem)
    if use_modes(args):
        return _forecast_modes(args, fm, problem, out, point, fit, fisher, started)
    post = None
    if args.hmc:
        checkpoint = None if args.checkpoint is None else Path(args.checkpoint or out / "hmc_checkpoint.npz")
        if checkpoint is None and args.time_limit is not None:
            checkpoint = out / "hmc_checkpoint.npz"  # a run cut by the time limit must be resumable
        post = hmc_step(
            args, fm, chains=args.chains, warmup=args.warmup, draws=args.draws, checkpoint=checkpoint, init_point=point
        )
        post.save(out / "hmc_samples.npz")
    truth = problem.free_truth(fm)
    groups = None
    if post is not None and post.samples.shape[1] >= 4:
        from .modes import group_chains

        groups = group_chains(post, threshold=RHAT_THRESHOLD)

    # figure: HMC with the Laplace Gaussian overlaid, or the Fisher ellipses alone
    if post is not None and post.samples.shape[1] >= 2:
        sets, labels = [post.flat], [f"HMC ({post.samples.shape[0]} x {post.samples.shape[1]})"]
        draws = fisher_draws(fisher, 4000, args.seed)
        if draws is not None:
            sets.append(draws)
            labels.append(f"Fisher ({fisher.kind})")
        corner_overlay(
            sets, labels, fm.free_names, out / "corner.png", truths=truth, title=f"{type(fm).__name__} posterior"
        )
    else:
        fisher_ellipses([fisher], [f"Fisher ({fisher.kind})"], out / "corner.png", title=f"{type(fm).__name__} Fisher")

    poor = fm.poorly_supported(point)
    payload = {
        "command": "forecast",
        "forward": fm.describe(),
        "fingerprint": fm.fingerprint(),
        "problem": problem.info,
        "truth": None if truth is None else truth,
        "point": point,
        "fisher_at": args.fisher_at,
        "map": fit,
        "poorly_supported_at_point": poor,
        "fisher": fisher.to_dict() | {"correlation": fisher.correlation},
        "hmc": None if post is None else post.summary(),
        "chain_groups": None if groups is None else _groups_dict(groups),
    } | _run_record(args, started)
    write_json(out / "forecast.json", payload)

    # table
    _print_map_line(fit)
    if poor:
        print(f"poorly supported summaries at the point (support < 3 halos, stderr inflated): {', '.join(poor)}")
    print(
        f"Fisher ({fisher.kind}): "
        + (
            "positive definite, condition number " + _fmt(fisher.condition_number, ".3g")
            if fisher.positive_definite
            else fisher.message
        )
    )
    head = (
        f"{'parameter':>10}"
        + (f" {'truth':>9}" if truth is not None else "")
        + f" {'point' if fit is None else 'MAP':>9} {'Fisher sigma':>12}"
    )
    if post is not None:
        head += f" {'HMC mean +- std':>22} {'R-hat':>6}"
    print(head)
    print("-" * len(head))
    summary = None if post is None else post.summary()
    for k, name in enumerate(fm.free_names):
        line = (
            f"{name:>10}" + (f" {_fmt(truth[k]):>9}" if truth is not None else "") + f" {_fmt(point[k]):>9} "
            f"{_fmt(None if fisher.sigmas is None else fisher.sigmas[k]):>12}"
        )
        if post is not None:
            mean = summary["mean"][k] if summary["mean"] else None
            std = summary["std"][k] if summary["std"] else None
            line += f" {_fmt(mean) + ' +- ' + _fmt(std, '.3g'):>22} {_fmt(summary['r_hat'][k], '.3f'):>6}"
        print(line)
    if post is not None:
        print(
            f"HMC: {post.n_divergent} divergent transitions; {post.samples.shape[1]}/{post.num_samples} draws per chain"
        )
    if groups is not None:
        print(
            f"chains: {groups.verdict}"
            + ("; R-hat above is across modes: use --modes to weigh them" if groups.n_modes > 1 else "")
        )
    print(
        f"wrote {out / 'forecast.json'}, {out / 'corner.png'}"
        + (f", {out / 'hmc_samples.npz'}" if post is not None else "")
    )
    if post is not None and not post.complete:
        print(f"HMC stopped at --time-limit before its end: rerun (each run continues from {checkpoint})")
        return INCOMPLETE_EXIT
    return 0


def _groups_dict(groups) -> dict:
    return {
        "verdict": groups.verdict,
        "n_modes": groups.n_modes,
        "groups": [list(g) for g in groups.groups],
        "converged": groups.converged.tolist(),
        "threshold": groups.threshold,
    }


def _forecast_modes(args, fm, problem: Problem, out: Path, point, fit, fisher, started: float) -> int:
    """``forecast`` with modes: tempered SMC weighs them, each mode's MAP, NUTS per mode (--hmc),
    the mode table, the modes corner, the evidence."""

    from .modes import mode_table, modes_summary
    from .plots import modes_corner

    checkpoint = None
    if args.hmc and (args.checkpoint is not None or args.time_limit is not None):
        checkpoint = Path(args.checkpoint or out / "hmc_checkpoint.npz")
    modes = modes_step(
        args,
        fm,
        refine=args.hmc,
        chains_per_mode=args.chains_per_mode,
        warmup=args.warmup,
        draws=args.draws,
        checkpoint=checkpoint,
    )
    result, refined, groups, maps = modes["result"], modes["refined"], modes["groups"], modes["maps"]
    truth = problem.free_truth(fm)
    hmc = None if refined is None else refined[0].hmc
    if hmc is not None:
        hmc.save(out / "hmc_samples.npz")
    samples, weights, labels = mode_draws(modes)
    source = "NUTS per mode" if refined is not None else "tempered SMC particles"
    modes_corner(
        samples,
        weights,
        labels,
        fm.free_names,
        out / "corner.png",
        mode_weights=[m.weight for m in result.modes],
        truths=truth,
        title=f"{type(fm).__name__}: {result.n_modes} mode(s), {source}",
    )
    table = mode_table(result, fm, refined, maps=maps)
    (out / "modes.md").write_text(
        f"# sapphire forecast: modes\n\n{type(fm).__name__}; free {', '.join(fm.free_names)}.\n\n{table}\n"
    )
    summary = modes_summary(result, refined, fm=fm, maps=maps)
    bad = [] if refined is None else mode_convergence(refined, RHAT_THRESHOLD)
    payload = {
        "command": "forecast",
        "forward": fm.describe(),
        "fingerprint": fm.fingerprint(),
        "problem": problem.info,
        "truth": truth,
        "point": point,
        "fisher_at": args.fisher_at,
        "map": fit,
        "fisher": fisher.to_dict() | {"correlation": fisher.correlation},
        "modes": summary.pop("modes"),
        "log_evidence": summary.pop("log_evidence"),
        "log_evidence_error": summary.pop("log_evidence_error"),
        "modes_info": summary,
        "particle_coverage": modes["coverage"],
        "smc_modes": modes["smc_modes"],
        "hmc": None
        if hmc is None
        else hmc.summary() | {"note": "all modes' chains together: use modes[k].r_hat, not this R-hat"},
        "chain_groups": None if groups is None else _groups_dict(groups),
        "converged_in_modes": None if refined is None else not bad,
    } | _run_record(args, started)
    write_json(out / "forecast.json", payload)

    _print_map_line(fit)
    print(
        f"tempered SMC: {result.n_modes} mode(s), {len(result.log_evidence_runs)} runs x {result.settings['num_particles']} "
        f"particles, {result.times['total']:.1f} s; ln Z = {result.log_evidence:.3f} +- {_fmt(result.log_evidence_error, '.3f')}"
    )
    print(table)
    if groups is not None:
        print(f"NUTS chains ({args.chains_per_mode} per mode, started in each mode): {groups.verdict}")
    files = ["forecast.json", "modes.md", "corner.png"] + (["hmc_samples.npz"] if hmc is not None else [])
    print(f"wrote {', '.join(str(out / f) for f in files)}; {time.perf_counter() - started:.1f} s")
    if hmc is not None and not hmc.complete:
        print(f"HMC stopped at --time-limit before its end: rerun (each run continues from {checkpoint})")
        return INCOMPLETE_EXIT
    if bad:
        import sys

        worst = ", ".join(f"mode {k} max R-hat {np.nanmax(refined[k].r_hat):.3f}" for k in bad)
        print(
            f"sapphire forecast: NOT CONVERGED inside {worst} > {RHAT_THRESHOLD}: run longer chains (--warmup, --hmc-draws)",
            file=sys.stderr,
        )
        return NOT_CONVERGED_EXIT
    return 0


# ------------------------------------------------------------------------------------------------
# sapphire validate
# ------------------------------------------------------------------------------------------------
def cmd_validate(args: argparse.Namespace) -> int:
    """Emulator-versus-exact posterior cross-check on the same problem."""

    from .crossval import Thresholds, cross_validate

    started = time.perf_counter()
    problem = build_problem(args, need_exact=True, need_emulator=True)
    forwards = {"emulator": make_forward(args, problem, "emulator"), "exact": make_forward(args, problem, "exact")}
    if tuple(forwards["emulator"].prior.low) != tuple(forwards["exact"].prior.low) or tuple(
        forwards["emulator"].prior.high
    ) != tuple(forwards["exact"].prior.high):
        note(
            args,
            f"the emulator's prior box {forwards['emulator'].prior.to_dict()} differs from the exact model's "
            f"{forwards['exact'].prior.to_dict()}: the two posteriors are truncated differently",
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.restart:
        for label in forwards:
            for name in (f"hmc_{label}.ckpt.npz", f"laplace_{label}.json", f"hmc_{label}_modes.npz"):
                (out / name).unlink(missing_ok=True)
    if problem.truth is not None:
        (out / "mock_observations.json").write_text(problem.obs.to_json())
    if args.modes:
        return _validate_modes(args, problem, forwards, out, started)
    sizes = {
        "emulator": (args.chains, args.warmup, args.draws),
        "exact": tuple(
            e if e is not None else d
            for e, d in zip(
                (args.exact_chains, args.exact_warmup, args.exact_draws), (args.chains, args.warmup, args.draws)
            )
        ),
    }
    results = {}
    for label, fm in forwards.items():  # the emulator first: cheap, and an early look
        _header(args, fm, problem)
        point, fit, fisher = laplace_step(args, fm, problem, cache=out / f"laplace_{label}.json")
        chains, warmup, draws = sizes[label]
        post = hmc_step(
            args,
            fm,
            chains=chains,
            warmup=warmup,
            draws=draws,
            checkpoint=out / f"hmc_{label}.ckpt.npz",
            init_point=point,
            label=f"{label} HMC",
        )
        post.save(out / f"hmc_{label}.npz")
        results[label] = {"fm": fm, "point": point, "map": fit, "fisher": fisher, "post": post}
        print(
            f"  {label}: HMC {post.samples.shape[0]} x {post.samples.shape[1]}/{post.num_samples} draws, max R-hat "
            f"{_fmt(np.nanmax(post.r_hat) if np.isfinite(post.r_hat).any() else None, '.3f')}, {post.n_divergent} divergent"
        )
    incomplete = [label for label, r in results.items() if not r["post"].complete]
    if incomplete:
        print(
            f"HMC of {', '.join(incomplete)} stopped at --time-limit: rerun the same command to resume "
            f"(checkpoints in {out}); no cross-validation yet"
        )
        return INCOMPLETE_EXIT

    thresholds = Thresholds(args.max_shift, args.max_width_ratio, args.max_auc)
    exact, emu = results["exact"], results["emulator"]
    try:
        report = cross_validate(
            exact["post"],
            emu["post"],
            fisher_reference=exact["fisher"],
            fisher_candidate=emu["fisher"],
            thresholds=thresholds,
            labels=("exact", "emulator"),
            seed=args.seed,
        )
    except ValueError as err:
        raise option_error(args, f"cross-validation: {err}") from None
    truth = problem.free_truth(exact["fm"])
    payload = (
        report.to_dict()
        | {
            "problem": problem.info,
            "truth": truth,
            "runs": {
                label: {
                    "forward": r["fm"].describe(),
                    "fingerprint": r["fm"].fingerprint(),
                    "point": r["point"],
                    "map": r["map"],
                    "fisher": r["fisher"].to_dict(),
                    "hmc": r["post"].summary(),
                }
                for label, r in results.items()
            },
        }
        | _run_record(args, started)
    )
    write_json(out / "crossval.json", payload)
    fm = exact["fm"]
    intro = (
        f"# sapphire validate\n\nFree: {', '.join(fm.free_names)}; relations: {', '.join(fm.relations)}; sigma scale "
        f"{fm.sigma_scale}; data: {'mock at ' + str(np.round(problem.truth, 4).tolist()) if problem.truth is not None else problem.info['observations']['source']}; "
        f"exact model: {problem.info['exact']}; emulator: {args.emulator}.\n\n"
    )
    (out / "crossval.md").write_text(intro + report.to_markdown())
    figures = report.plot(out, truths=truth)

    print(
        f"{'parameter':>10} {'exact mean':>11} {'exact sd':>9} {'emu mean':>11} {'emu sd':>9} {'shift/sd':>9} {'width':>7}"
    )
    for k, name in enumerate(report.names):
        print(
            f"{name:>10} {_fmt(report.reference_mean[k]):>11} {_fmt(report.reference_std[k], '.3g'):>9} "
            f"{_fmt(report.candidate_mean[k]):>11} {_fmt(report.candidate_std[k], '.3g'):>9} "
            f"{report.shift[k]:>+9.3f} {report.width_ratio[k]:>7.3f}"
        )
    print(f"classifier AUC {report.auc:.3f}; checks {report.checks}")
    print(
        f"verdict: {report.verdict} (|shift| < {thresholds.max_abs_shift}, width ratio in "
        f"[{1 / thresholds.max_width_ratio:.3g}, {thresholds.max_width_ratio:.3g}], AUC < {thresholds.max_auc})"
    )
    print(f"wrote {out / 'crossval.json'}, {out / 'crossval.md'}, " + ", ".join(str(p) for p in figures))
    return 1 if (args.strict and not report.passed) else 0


def _validate_modes(args, problem: Problem, forwards: dict, out: Path, started: float) -> int:
    """``validate --modes``: the emulator's modes (tempered SMC), NUTS in each mode with both
    models (the exact chains started in the emulator's modes), per-mode verdicts, and the mode
    weights (emulator: SMC; exact: importance sampling around its NUTS draws) with their errors."""

    from .crossval import Thresholds
    from .hmc import CheckpointMismatch
    from .modes import check_modes, mode_table, modes_summary
    from .plots import modes_corner

    emu_fm, exact_fm = forwards["emulator"], forwards["exact"]
    _header(args, emu_fm, problem)
    modes = modes_step(
        args,
        emu_fm,
        refine=True,
        chains_per_mode=args.chains_per_mode,
        warmup=args.warmup,
        draws=args.draws,
        checkpoint=out / "hmc_emulator_modes.npz",
        label="emulator ",
    )
    result, emu_chains = modes["result"], modes["refined"]
    print(mode_table(result, emu_fm, emu_chains, maps=modes["maps"]))
    _header(args, exact_fm, problem)
    chains = args.exact_chains or args.chains_per_mode
    warmup, draws = args.exact_warmup or args.warmup, args.exact_draws or args.draws
    try:
        exact_chains, exact_weights, report = check_modes(
            exact_fm,
            result,
            emu_chains,
            chains_per_mode=chains,
            num_warmup=warmup,
            num_samples=draws,
            weight_draws=args.weight_draws,
            thresholds=Thresholds(args.max_shift, args.max_width_ratio, args.max_auc),
            seed=args.seed,
            progress=not args.quiet,
            checkpoint=out / "hmc_exact_modes.npz",
            time_limit_s=args.time_limit,
        )
    except ValueError as err:  # CheckpointMismatch included; a cross-validation refused
        raise option_error(
            args, f"{err} (or pass --restart)" if isinstance(err, CheckpointMismatch) else f"cross-validation: {err}"
        ) from None
    if report is None:
        incomplete = [
            label for label, c in (("emulator", emu_chains), ("exact", exact_chains)) if not c[0].hmc.complete
        ]
        print(
            f"HMC of {', '.join(incomplete)} stopped at --time-limit: rerun the same command to resume "
            f"(checkpoints in {out}); no cross-validation yet"
        )
        return INCOMPLETE_EXIT
    truth = problem.free_truth(exact_fm)
    figures = []
    for k, r in enumerate(report.reports):
        figures += r.plot(out, truths=truth, prefix=f"crossval_mode{k}")
    samples, weights, labels = mode_draws(modes)
    figures.append(
        modes_corner(
            samples,
            weights,
            labels,
            emu_fm.free_names,
            out / "crossval_modes_corner.png",
            mode_weights=[m.weight for m in result.modes],
            truths=truth,
            title=f"emulator: {result.n_modes} mode(s), NUTS per mode",
        )
    )
    single = report.reports[0].to_dict() if len(report.reports) == 1 else {}  # one mode: today's layout, plus the modes
    payload = (
        single
        | report.to_dict()
        | {
            "problem": problem.info,
            "truth": truth,
            "emulator_modes": modes_summary(result, emu_chains, fm=emu_fm, maps=modes["maps"]),
            "exact_mode_weights": exact_weights,
            "particle_coverage": modes["coverage"],
            "runs": {
                label: {"forward": fm.describe(), "fingerprint": fm.fingerprint()} for label, fm in forwards.items()
            },
        }
        | _run_record(args, started)
    )
    write_json(out / "crossval.json", payload)
    intro = (
        f"# sapphire validate --modes\n\nFree: {', '.join(exact_fm.free_names)}; relations: {', '.join(exact_fm.relations)}; "
        f"exact model: {problem.info['exact']}; emulator: {args.emulator}.\n\n## Emulator modes\n\n"
        f"{mode_table(result, emu_fm, emu_chains, maps=modes['maps'])}\n\n"
    )
    (out / "crossval.md").write_text(intro + report.to_markdown())
    print(f"{'mode':>4} {'emu weight':>16} {'exact weight':>16} {'z':>6} {'verdict':>12}")
    for k, (w, r) in enumerate(zip(report.weights, report.reports)):
        z = "n/a" if w["z"] is None else f"{w['z']:+.2f}"
        print(
            f"{k:>4} {w['candidate']:>8.3f} +- {w['candidate_error']:.3f} {w['reference']:>8.3f} +- {w['reference_error']:.3f} "
            f"{z:>6} {r.verdict:>12}"
        )
    if report.reference_groups:
        print(f"exact chains: {report.reference_groups}")
    print(f"verdict: {report.verdict} (every mode's cross-validation passes and |weight z| <= {report.max_weight_z:g})")
    print(f"wrote {out / 'crossval.json'}, {out / 'crossval.md'}, " + ", ".join(str(p) for p in figures))
    return 1 if (args.strict and report.verdict != "PASS") else 0


# ------------------------------------------------------------------------------------------------
# sapphire recover
# ------------------------------------------------------------------------------------------------
def cmd_recover(args: argparse.Namespace) -> int:
    """Mock parameter recovery over relation sets, optionally the error-scaling forecast."""
    import sapphire

    from . import campaigns

    started = time.perf_counter()
    if args.truths < 1:
        raise option_error(args, f"--truths must be >= 1, got {args.truths}")
    if not 0 <= args.truth_margin < 0.5:
        raise option_error(args, f"--truth-margin must lie in [0, 0.5), got {args.truth_margin}")
    sets = parse_relation_sets(args, args.relation_sets)
    problem = build_problem(args, need_exact=True, need_emulator=args.forward == "emulator", allow_mock=False)
    sets = available_relation_sets(args, sets, problem.obs.names)
    # the mocks carry the (scaled) observational errors: fold --sigma-scale into the observations
    obs = problem.obs if problem.sigma_scale == 1.0 else problem.obs.scaled(problem.sigma_scale)
    if args.forward == "emulator":
        factory = campaigns.emulator_factory(
            problem.emu, include_emulator_error=not args.no_emulator_error, free=problem.free, fixed=problem.fixed
        )
    else:
        factory = campaigns.exact_factory(problem.model, problem.halos, obs, free=problem.free, fixed=problem.fixed)
    probe = _checked_factory(args, factory, obs)
    hessian = None if args.hessian == "auto" else args.hessian
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"{args.truths} truths x {len(sets)} relation sets; {type(probe).__name__}, free {', '.join(probe.free_names)}; "
        f"mocks: exact model, {problem.halos.n_halos} halos, {'noisy' if args.noise else 'noise-free'}"
    )
    try:
        report = campaigns.mock_recovery(
            problem.model,
            problem.halos,
            obs,
            n_truths=args.truths,
            seed=args.seed,
            forward_factory=factory,
            relation_sets=sets,
            free=problem.free,
            fixed=problem.fixed,
            n_starts=args.starts,
            noise=args.noise,
            truth_margin=args.truth_margin,
            failure_sigma=args.failure_sigma,
            hessian_method=hessian,
            progress=None if args.quiet else (lambda line: print("  " + line)),
        )
    except ValueError as err:
        raise option_error(args, str(err)) from None
    data = report.to_dict() | {
        "problem": problem.info,
        "settings_cli": _settings(args),
        "sapphire_version": sapphire.__version__,
    }
    write_json(out / "recovery.json", data)
    written = [out / "recovery.json", report.plot(out / "recovery.png")]

    names = report.free
    print(f"{'relations':>22} {'fail':>6} {'cond (median)':>13}  " + " ".join(f"{n + ' bias':>17}" for n in names))
    for entry in data["relation_sets"]:
        cells = " ".join(
            f"{_fmt(m, '+.2f') + ' +- ' + _fmt(s, '.2f'):>17}" for m, s in zip(entry["bias_mean"], entry["bias_std"])
        )
        print(
            f"{'+'.join(entry['relations']):>22} {entry['failure_rate']:>6.0%} {_fmt(entry['median_condition_number'], '.3g'):>13}  {cells}"
        )
    if report.mock_failures:
        print(f"mocks that could not be made: {report.mock_failures}")

    if args.error_scaling:
        scaling = _error_scaling(args, problem, factory, probe, obs, hessian)
        written += [out / "error_scaling.json", scaling.plot(out / "error_scaling.png")]
        scaling.to_json(out / "error_scaling.json")
    print(f"{time.perf_counter() - started:.1f} s; wrote " + ", ".join(str(p) for p in written))
    return 0


def _checked_factory(args, factory, obs):
    try:
        return factory(obs, None, 1.0)
    except ValueError as err:
        raise option_error(args, f"{args.forward} forward model: {err}") from None


def _error_scaling(args, problem: Problem, factory, probe, obs, hessian):
    """Fisher (and optionally HMC) errors versus the error scale at the fixed point (a noise-free mock there)."""
    from . import campaigns

    try:
        scales = [float(v) for v in split_list(args.scales)]
    except ValueError:
        raise option_error(args, f"--scales must be comma-separated positive numbers; got {args.scales!r}") from None
    if not scales or any(not (np.isfinite(s) and s > 0) for s in scales):
        raise option_error(args, f"--scales must be comma-separated positive numbers; got {args.scales!r}")
    theta8 = np.array(probe.fixed)  # --fixed (all 8 entries), or the prior centre
    try:
        mock = campaigns.mock_observations(problem.model, problem.halos, obs, theta8)
        scaling = campaigns.error_scaling_forecast(
            factory,
            theta8[list(probe.free_index)],
            scales,
            obs=mock,
            with_hmc=args.scaling_hmc,
            hmc_options=dict(num_chains=args.chains, num_warmup=args.warmup, num_samples=args.draws, seed=args.seed),
            n_starts=args.starts,
            seed=args.seed,
            hessian_method=hessian,
        )
    except ValueError as err:
        raise option_error(args, f"--error-scaling: {err}") from None
    print(
        f"error scaling at theta = {np.round(theta8, 4).tolist()} (noise-free mock), all relations of the observations"
    )
    print(f"{'scale':>7} " + " ".join(f"{n:>10}" for n in scaling.free) + "   (Fisher sigma; HMC std in brackets)")
    for row in scaling.rows:
        sig = row["fisher_sigma"] or [None] * len(scaling.free)
        hmc = row.get("hmc_std") or [None] * len(scaling.free)
        cells = " ".join(
            f"{_fmt(s, '.3g'):>10}" + (f" [{_fmt(h, '.3g')}]" if args.scaling_hmc else "") for s, h in zip(sig, hmc)
        )
        print(f"{row['sigma_scale']:>7.3g} {cells}" + ("" if row["positive_definite"] else f"  {row['message']}"))
    return scaling


# ------------------------------------------------------------------------------------------------
# Registration
# ------------------------------------------------------------------------------------------------
def _add_problem_options(p: argparse.ArgumentParser, *, mock: bool = True, relations: bool = True) -> None:
    g = p.add_argument_group("problem")
    g.add_argument("--emulator", help="saved emulator (SobolevEmulator artifact directory, sapphire train)")
    g.add_argument(
        "--no-emulator-error", action="store_true", help="leave the emulator's error estimate out of the likelihood"
    )
    g.add_argument("--halos", type=positive_int, help="exact model on this many diffmah halos (or use --store)")
    g.add_argument(
        "--halo-seed", type=nonnegative_int, default=0, help="seed of the diffmah halo population (default 0)"
    )
    g.add_argument("--store", help="training-set store: take the exact model and halos recorded in it")
    g.add_argument("--free", help="comma-separated free parameters (default all 8)")
    g.add_argument(
        "--fixed",
        help="8 comma-separated values for the held parameters (default: the mock's truth, else the prior centre)",
    )
    if relations:
        g.add_argument("--relations", help="comma-separated relations (smhm, gas_ratio, mzr; default all)")
    g.add_argument(
        "--sigma-scale", default="1", help="factor on the observational errors: a number or smhm=0.5,mzr=1 (default 1)"
    )
    g.add_argument("--observations", help="observations JSON (Observations.to_json()); default Observations.default()")
    if mock:
        g.add_argument("--mock-theta", help="8 comma-separated values: fit noise-free exact-model mock data made there")
    g.add_argument(
        "--seed", type=nonnegative_int, default=0, help="seed of MAP starts, HMC and the classifier (default 0)"
    )
    add_solver_options(p)


def _add_fit_options(p: argparse.ArgumentParser, *, fisher_at: bool = True, gauss_newton: bool = True) -> None:
    g = p.add_argument_group("MAP and Fisher")
    g.add_argument("--starts", type=positive_int, default=8, help="MAP starts (Latin hypercube; default 8)")
    g.add_argument(
        "--hessian",
        default="auto",
        choices=HESSIANS if gauss_newton else HESSIANS[:3],
        help="Fisher matrix: the forward model's Laplace default (auto), autodiff, fd_grad"
        + (", or gauss-newton (J^T C^-1 J)" if gauss_newton else ""),
    )
    if fisher_at:
        g.add_argument(
            "--fisher-at",
            default="map",
            choices=["map", "truth"],
            help="expand at the MAP (default) or at the --mock-theta truth (no MAP search: for a noise-free mock it is the MAP)",
        )


def _add_hmc_options(
    p: argparse.ArgumentParser, *, warmup: int = 500, draws: int = 1000, resumable: bool = True
) -> None:
    g = p.add_argument_group("HMC (NUTS)")
    g.add_argument("--chains", type=positive_int, default=DEFAULT_CHAINS, help=f"chains (default {DEFAULT_CHAINS})")
    g.add_argument(
        "--warmup", type=positive_int, default=warmup, help=f"warmup iterations per chain (default {warmup})"
    )
    g.add_argument(
        "--hmc-draws",
        "--draws",
        dest="draws",
        type=positive_int,
        default=draws,
        help=f"HMC draws per chain after warmup (default {draws})",
    )
    if not resumable:
        return
    g.add_argument(
        "--hmc-init",
        default="random",
        choices=["random", "map"],
        help="chains start at numpyro's random init (default) or at the MAP / Fisher point",
    )
    g.add_argument(
        "--time-limit",
        type=positive_float,
        help=f"stop HMC after about this many seconds (exit {INCOMPLETE_EXIT}; rerun resumes from the checkpoint)",
    )


def _add_modes_options(p: argparse.ArgumentParser, *, default_text: str) -> None:
    g = p.add_argument_group("modes (tempered SMC weighs them, NUTS refines each)")
    g.add_argument("--modes", action=argparse.BooleanOptionalAction, default=None, help=default_text)
    g.add_argument("--particles", type=positive_int, default=1000, help="SMC particles per run (default 1000)")
    g.add_argument(
        "--smc-runs",
        type=positive_int,
        default=8,
        help="independent SMC runs: the evidence and weight errors (default 8)",
    )
    g.add_argument("--max-modes", type=positive_int, default=6, help="most modes the clustering may find (default 6)")
    g.add_argument(
        "--chains-per-mode", type=positive_int, default=2, help="NUTS chains started in each mode (default 2)"
    )


def register(sub) -> None:
    """Add the ``forecast``, ``validate``, ``recover`` and ``refine`` subcommands to the ``sapphire`` parser."""
    from .refine_cli import register_refine

    register_refine(sub)
    p = sub.add_parser(
        "forecast",
        help="MAP, Fisher (Laplace) and optionally HMC with the emulator or the exact model",
        description=cmd_forecast.__doc__ + " Writes forecast.json, corner.png (and hmc_samples.npz).",
    )
    p.add_argument(
        "--forward", default="emulator", choices=["emulator", "exact"], help="forward model (default emulator)"
    )
    _add_problem_options(p)
    _add_fit_options(p)
    p.add_argument("--hmc", action="store_true", help="also run NUTS")
    _add_hmc_options(p)
    p.add_argument(
        "--checkpoint",
        nargs="?",
        const="",
        default=None,
        help="HMC checkpoint (resumed if present); without a value: OUT/hmc_checkpoint.npz",
    )
    _add_modes_options(
        p,
        default_text="weigh the posterior's modes, then NUTS in each (with --hmc); default on with --hmc "
        "for the emulator, off for the exact model (~1e6 solves)",
    )
    p.add_argument("--out", type=output_dir, default="runs/forecast", help="output directory (default runs/forecast)")
    p.set_defaults(func=cmd_forecast)

    p = sub.add_parser(
        "validate",
        help="cross-validate the emulator posterior against the exact model's (same problem)",
        description=cmd_validate.__doc__ + " HMC checkpoints and Laplace results live in OUT, so a rerun "
        "resumes. Writes crossval.json, crossval.md, crossval_corner.png, crossval_fisher.png. Exit 0 "
        f"whatever the verdict unless --strict (1 on FAIL); {INCOMPLETE_EXIT} if HMC stopped at --time-limit.",
    )
    _add_problem_options(p)
    _add_fit_options(p)
    _add_hmc_options(p)
    g = p.add_argument_group("exact-model HMC sizes (default: as the emulator's)")
    g.add_argument("--exact-chains", type=positive_int, help="chains of the exact-model HMC (default --chains)")
    g.add_argument(
        "--exact-warmup", type=positive_int, help="warmup iterations per exact-model chain (default --warmup)"
    )
    g.add_argument(
        "--exact-hmc-draws",
        "--exact-draws",
        dest="exact_draws",
        type=positive_int,
        help="draws per exact-model chain (default --hmc-draws)",
    )
    g = p.add_argument_group("verdict")
    g.add_argument(
        "--max-shift", type=nonnegative_float, default=0.2, help="|mean shift| / exact sigma below this (default 0.2)"
    )
    g.add_argument(
        "--max-width-ratio", type=positive_float, default=1.25, help="width ratio within [1/r, r] (default 1.25)"
    )
    g.add_argument("--max-auc", type=fraction, default=0.6, help="classifier two-sample AUC below this (default 0.6)")
    g.add_argument("--strict", action="store_true", help="exit 1 if the verdict is FAIL")
    _add_modes_options(
        p,
        default_text="compare mode by mode: weigh the emulator posterior's modes, NUTS in each mode with "
        "both models (--chains-per-mode; --exact-chains per mode for the exact model), per-mode verdicts and "
        "mode weights with their errors (default off: one posterior as a whole)",
    )
    g.add_argument(
        "--weight-draws",
        type=positive_int,
        default=256,
        help="importance-sampling draws per mode for the mode weights from NUTS (default 256)",
    )
    p.add_argument("--restart", action="store_true", help="delete OUT's checkpoints and Laplace results first")
    p.add_argument("--out", type=output_dir, default="runs/validate", help="output directory (default runs/validate)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "recover",
        help="mock parameter recovery over relation sets (and the error-scaling forecast)",
        description=cmd_recover.__doc__ + " Mocks come from the exact model (--halos or --store); fits "
        "use --forward. Writes recovery.json, recovery.png (and error_scaling.json/.png).",
    )
    p.add_argument(
        "--forward", default="emulator", choices=["emulator", "exact"], help="forward model fitted (default emulator)"
    )
    _add_problem_options(p, mock=False, relations=False)
    _add_fit_options(p, fisher_at=False, gauss_newton=False)
    p.set_defaults(starts=4)
    g = p.add_argument_group("campaign")
    g.add_argument("--truths", type=int, default=10, help="random truths (Latin hypercube of the free box; default 10)")
    g.add_argument(
        "--relation-sets", default="all", help="'all' (7 combinations) or sets separated by ';' (smhm,mzr;smhm)"
    )
    g.add_argument("--noise", action="store_true", help="add Gaussian noise of the observational errors to each mock")
    g.add_argument(
        "--truth-margin",
        type=float,
        default=0.1,
        help="keep truths this fraction of the width from the faces (default 0.1)",
    )
    g.add_argument(
        "--failure-sigma",
        type=positive_float,
        default=3.0,
        help="|normalised bias| above this is a failure (default 3)",
    )
    g = p.add_argument_group("error scaling")
    g.add_argument(
        "--error-scaling", action="store_true", help="also the Fisher errors with the errors scaled by --scales"
    )
    g.add_argument("--scales", default="1,0.5,0.1", help="error scales (default 1,0.5,0.1)")
    g.add_argument("--scaling-hmc", action="store_true", help="HMC at each scale too (--chains --warmup --hmc-draws)")
    _add_hmc_options(p, warmup=300, draws=500, resumable=False)
    p.add_argument("--out", type=output_dir, default="runs/recover", help="output directory (default runs/recover)")
    p.set_defaults(func=cmd_recover)
