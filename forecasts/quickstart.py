"""The main job end to end (``sapphire quickstart``): training set -> Sobolev emulator -> mock
-> emulator MAP + Fisher + HMC -> reduced exact-model HMC -> cross-validation report.

Every stage writes its result under ``out_dir`` and is skipped on a rerun when that result
exists and still matches its inputs (stores are resumed, HMC runs continue from their
checkpoints), so an interrupted quickstart picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import sapphire
from sapphire.cli_common import nonnegative_int, output_dir
from sapphire.jsonio import write_json


@dataclasses.dataclass(frozen=True)
class Scale:
    """Sizes of one quickstart configuration."""

    n_halos: int
    n_train: int
    n_test: int
    chunk: int
    ensemble: int
    epochs: int
    patience: int
    hidden: tuple[int, ...]
    map_starts: int
    emulator_hmc: tuple[int, int, int]  # chains, warmup, draws
    exact_free: tuple[str, ...]
    exact_hmc: tuple[int, int, int]


SCALES: dict[str, Scale] = {
    # 2-core laptop CPU, no GPU: about 15 minutes in all (README gives the measured time).
    # The exact check is 1-dimensional: each exact NUTS step is a sensitivity solve (~0.1 s for 32
    # halos here), and ~10 of them per iteration during warmup.
    "small": Scale(n_halos=32, n_train=384, n_test=64, chunk=16, ensemble=4, epochs=600, patience=100,
                   hidden=(64, 64, 64), map_starts=8, emulator_hmc=(4, 500, 1000),
                   exact_free=("A_etaM",), exact_hmc=(2, 100, 200)),
    # Tests and CI notebooks: every stage, minutes on 2 cores, numbers meaningless.
    "tiny": Scale(n_halos=8, n_train=48, n_test=16, chunk=8, ensemble=2, epochs=40, patience=20,
                  hidden=(16, 16), map_starts=2, emulator_hmc=(2, 30, 30),
                  exact_free=("A_etaM",), exact_hmc=(1, 10, 10)),
    # The original analysis's sizes, for GPU nodes.
    "paper": Scale(n_halos=1000, n_train=5000, n_test=500, chunk=16, ensemble=8, epochs=3000, patience=300,
                   hidden=(128, 128, 128, 128), map_starts=32, emulator_hmc=(4, 1000, 2000),
                   exact_free=("A_etaM", "B_etaM", "A_tdep", "B_tdep"), exact_hmc=(4, 500, 1000)),
}

# The mock's truth, in the unit cube of the prior box: an interior, unremarkable point.
TRUTH_UNIT = np.array([0.55, 0.6, 0.45, 0.5, 0.4, 0.55, 0.5, 0.45])


class _Stages:
    """Runs named stages, timing them and printing one line each."""

    def __init__(self, log: Callable[[str], None]):
        self.log, self.rows = log, []

    def run(self, name: str, function: Callable[[], str]) -> None:
        self.log(f"[quickstart] {name} ...")
        started = time.perf_counter()
        outcome = function()
        seconds = time.perf_counter() - started
        self.rows.append({"stage": name, "seconds": round(seconds, 1), "outcome": outcome})
        self.log(f"[quickstart] {name}: {outcome} ({seconds:.1f} s)")


def run_quickstart(out_dir: str | Path = "quickstart", scale: str = "small", seed: int = 0, progress: bool = True,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or finish) the whole pipeline into ``out_dir``; returns the summary written to
    ``out_dir/summary.json``.  ``scale``: a key of :data:`SCALES`."""
    import training_sets
    from emulator import SobolevEmulator, emulator_report, train_emulator
    from training_sets.generate import model_from_attrs

    from .campaigns import mock_observations
    from .crossval import cross_validate
    from .fisher import gauss_newton_fisher, laplace
    from .forward import EmulatorForward, ExactForward
    from .optimize import find_map

    if scale not in SCALES:
        raise ValueError(f"unknown quickstart scale {scale!r}; choose one of {sorted(SCALES)}")
    sizes = SCALES[scale]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages(log)
    state: dict[str, Any] = {}

    # 1. Training and test sets (same halos, independent designs).
    def training_sets_stage() -> str:
        reports = []
        for name, n_points, design_seed in (("train", sizes.n_train, seed), ("test", sizes.n_test, seed + 1000)):
            r = training_sets.generate(out / f"{name}.zarr", n_points=n_points, n_halos=sizes.n_halos, seed=design_seed,
                                       halo_seed=seed, chunk=sizes.chunk, resume=True, progress=progress)
            reports.append(f"{name}: {r.n_points} points ({r.computed} computed now, {r.failed_points} with failed halos)")
        return "; ".join(reports)

    stages.run("training sets", training_sets_stage)
    train = training_sets.open_training_set(out / "train.zarr")
    state["model"], state["halos"] = model_from_attrs(train.attrs), train.halos()

    # 2. Emulator (retrained only if the training store changed).
    def emulator_stage() -> str:
        path = out / "emulator.emu"
        if path.exists():
            try:
                emu = SobolevEmulator.load(path)
                if emu.store_fingerprint == train.fingerprint:
                    state["emu"] = emu
                    return f"kept {path} (trained on this store)"
            except ValueError:
                pass
        emu = train_emulator(train, ensemble=sizes.ensemble, epochs=sizes.epochs, patience=sizes.patience,
                             hidden=sizes.hidden, seed=seed, progress=progress)
        emu.save(path)
        state["emu"] = emu
        return f"trained {sizes.ensemble} members, saved {path}"

    stages.run("emulator", emulator_stage)
    emu = state["emu"]

    def emulator_report_stage() -> str:
        report = emulator_report(emu, out / "test.zarr", out / "emulator_report", progress=progress)
        state["emulator_report"] = report
        return _emulator_report_line(report)

    stages.run("emulator validation (test set)", emulator_report_stage)

    # 3. Mock data from the exact model at a known truth.
    truth = sapphire.DEFAULT_PRIOR.from_unit(TRUTH_UNIT)
    model, halos = state["model"], state["halos"]

    def mock_stage() -> str:
        path = out / "mock_observations.json"
        mock = mock_observations(model, halos, sapphire.Observations.default(), truth)
        path.write_text(mock.to_json())
        state["mock"] = mock
        return f"exact summaries at theta_true = {np.round(truth, 3).tolist()} ({halos.n_halos} halos), written to {path.name}"

    stages.run("mock", mock_stage)
    mock = state["mock"]

    # 4. Emulator forecast with every parameter free.
    def emulator_forecast_stage() -> str:
        fm = EmulatorForward(emu, mock)
        fit = find_map(fm, n_starts=sizes.map_starts, seed=seed)
        fisher = laplace(fm, fit.best)
        chains, warmup, draws = sizes.emulator_hmc
        post = _run_hmc_resuming(fm, out / "emulator_hmc.pkl", log, num_chains=chains, num_warmup=warmup, num_samples=draws, seed=seed, progress=_hmc_bar("emulator HMC", warmup + draws, progress))
        state["emulator_forecast"] = {"map": fit.to_dict(), "laplace": fisher.to_dict(), "hmc": post.summary(), "truth": truth}
        write_json(out / "emulator_forecast.json", state["emulator_forecast"])
        from .plots import corner_overlay

        corner_overlay([post.samples.reshape(-1, post.samples.shape[-1])], ["emulator HMC"], post.names,
                       out / "emulator_posterior.png", truths=truth, title="emulator posterior, all 8 parameters")
        bias = (post.mean - truth) / post.std
        return (f"MAP loss {fit.best_loss:.2f} ({fit.n_converged}/{len(fit.losses)} starts converged); HMC "
                f"{chains}x({warmup}+{draws}), {_hmc_line(post)}; |mean - truth|/sigma max {np.max(np.abs(bias)):.2f}")

    stages.run("emulator forecast (8 free)", emulator_forecast_stage)

    # 5. Reduced exact-model check and the same problem with the emulator.
    free = list(sizes.exact_free)
    chains, warmup, draws = sizes.exact_hmc

    def exact_stage() -> str:
        # Fisher of the exact model at the truth: the mock is noise-free, so the truth is the
        # exact MAP up to the theta-dependence of the model's standard error; an exact MAP
        # search would cost another compilation of the sensitivity solve.  Gauss-Newton
        # (J^T C^-1 J) for both models, so the two ellipses are computed the same way.
        exact = ExactForward(model, halos, mock, free=free, fixed=truth)
        start = truth[list(exact.free_index)]
        fisher = gauss_newton_fisher(exact, start)
        post = _run_hmc_resuming(exact, out / "exact_hmc.pkl", log, num_chains=chains, num_warmup=warmup, num_samples=draws, seed=seed, init=start, progress=_hmc_bar("exact HMC", warmup + draws, progress))
        state["exact"] = (post, fisher)
        return (f"{len(free)} free ({', '.join(free)}), {halos.n_halos} halos: {chains}x({warmup}+{draws}), "
                f"{_hmc_line(post)}")

    def emulator_reduced_stage() -> str:
        fm = EmulatorForward(emu, mock, free=free, fixed=truth)
        fisher = gauss_newton_fisher(fm, find_map(fm, n_starts=sizes.map_starts, seed=seed).best)
        chains, warmup, draws = sizes.emulator_hmc
        post = _run_hmc_resuming(fm, out / "emulator_hmc_reduced.pkl", log, num_chains=chains, num_warmup=warmup, num_samples=draws, seed=seed, progress=_hmc_bar("emulator HMC", warmup + draws, progress))
        state["emulator_reduced"] = (post, fisher)
        return f"{chains}x({warmup}+{draws}), {_hmc_line(post)}"

    stages.run("exact-model HMC (reduced)", exact_stage)
    stages.run("emulator HMC (same reduced problem)", emulator_reduced_stage)

    # 6. Cross-validation.
    def crossval_stage() -> str:
        exact_post, exact_fisher = state["exact"]
        emu_post, emu_fisher = state["emulator_reduced"]
        report = cross_validate(exact_post, emu_post, fisher_reference=exact_fisher, fisher_candidate=emu_fisher, seed=seed)
        report.to_json(out / "crossval.json")
        figures = report.plot(out, truths=truth[[sapphire.PARAMETER_NAMES.index(n) for n in free]])
        state["crossval"] = report
        state["crossval_figures"] = figures
        return f"{report.verdict}: shifts {np.round(report.shift, 3).tolist()} sigma, width ratios {np.round(report.width_ratio, 3).tolist()}, AUC {report.auc:.3f}"

    stages.run("cross-validation", crossval_stage)

    summary = {
        "scale": scale, "sizes": dataclasses.asdict(sizes), "seed": seed, "truth": truth,
        "sapphire_version": sapphire.__version__, "stages": stages.rows,
        "verdict": state["crossval"].verdict, "crossval": state["crossval"].to_dict(),
        "emulator_report": {"acceptance": state["emulator_report"].get("acceptance"),
                            "line": _emulator_report_line(state["emulator_report"])},
        "emulator_forecast": state["emulator_forecast"]["hmc"],
    }
    write_json(out / "summary.json", summary)
    _write_report(out, summary, state)
    log(_summary_table(stages.rows))
    log(f"[quickstart] verdict: emulator posterior vs exact: {summary['verdict']}; report {out / 'report.md'}")
    return summary


def _hmc_line(post) -> str:
    seconds = post.times.get("warmup", 0.0) + post.times.get("sampling", 0.0)
    return (f"sampling {seconds:.0f} s (+{post.times.get('compile', 0.0):.0f} s compile), max R-hat "
            f"{np.nanmax(post.r_hat):.3f}, min ESS {np.nanmin(post.ess):.0f}, {post.n_divergent} divergences")


def _hmc_bar(description: str, total: int, enabled: bool):
    """An HMC progress bar when progress is shown."""
    from .hmc import progress_bar

    return progress_bar(description, total) if enabled else None


def _emulator_report_line(report: dict) -> str:
    """Worst per-summary median and 95th-percentile |emulator - exact| / sigma_obs, median
    Jacobian relative error and the +-2 error coverage, from an emulator report."""
    values = report["value_error_sigma_obs"]["per_summary"].values()
    return (f"{report['n_test']} test points: |emu - exact|/sigma_obs worst-summary median "
            f"{max(v['median'] for v in values):.3f} (target 0.1), worst 95th pct {max(v['p95'] for v in values):.2f} "
            f"(target 0.3); Jacobian rel. error median {report['jacobian_rel_error']['median']:.3f} (target 0.05); "
            f"{100 * report['calibration']['fraction_inside_2_error']:.1f}% of errors inside +-2 spread")


def _summary_table(rows: list[dict]) -> str:
    width = max(len(r["stage"]) for r in rows)
    lines = [f"{'stage':<{width}}  {'seconds':>8}  outcome", "-" * (width + 60)]
    lines += [f"{r['stage']:<{width}}  {r['seconds']:>8.1f}  {r['outcome']}" for r in rows]
    lines.append(f"{'total':<{width}}  {sum(r['seconds'] for r in rows):>8.1f}")
    return "\n".join(lines)


def _write_report(out: Path, summary: dict, state: dict) -> None:
    report = state["crossval"]
    lines = [
        "# sapphire quickstart report",
        "",
        f"Scale `{summary['scale']}`, seed {summary['seed']}, sapphire {summary['sapphire_version']}.",
        "",
        f"**Verdict: the emulator posterior {'agrees' if report.verdict == 'PASS' else 'does NOT agree'} with the exact one "
        f"({report.verdict}).**",
        "",
        "## Stages",
        "",
        "| stage | seconds | outcome |",
        "| --- | ---: | --- |",
    ]
    lines += [f"| {r['stage']} | {r['seconds']:.1f} | {r['outcome']} |" for r in summary["stages"]]
    lines += ["", "## Emulator posterior versus exact HMC", "", report.to_markdown(), ""]
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in state["crossval_figures"]]
    lines += ["", "## Emulator forecast, all parameters free", "", "![emulator posterior](emulator_posterior.png)", "",
              "## Emulator validation on the test set", "",
              summary["emulator_report"]["line"] + ".", "",
              "Figures and numbers in `emulator_report/` (value errors in units of the observational sigma per "
              "summary, Jacobian errors, Fisher comparison, calibration of the ensemble spread).", "",
              "![value errors](emulator_report/value_error.png)", ""]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _run_hmc_resuming(fm, checkpoint: Path, log: Callable[[str], None], **options):
    """``run_hmc`` continuing from ``checkpoint``; a checkpoint left by other settings (a rerun
    with another scale or seed) is reported, removed, and the run restarts."""
    from .hmc import CheckpointMismatch, run_hmc

    try:
        return run_hmc(fm, checkpoint=checkpoint, **options)
    except CheckpointMismatch as err:
        log(f"[quickstart] {err}: starting this HMC afresh")
        checkpoint.unlink()
        return run_hmc(fm, checkpoint=checkpoint, **options)


def cmd_quickstart(args) -> int:
    """``sapphire quickstart``."""
    try:
        summary = run_quickstart(args.out, scale=args.scale, seed=args.seed, progress=not args.quiet)
    except ValueError as err:
        raise SystemExit(f"sapphire quickstart: {err}")
    return 0 if summary["verdict"] in ("PASS", "FAIL") else 1


def register(sub) -> None:
    """Add the ``quickstart`` subcommand to the ``sapphire`` parser."""
    p = sub.add_parser("quickstart", help="the whole pipeline on embedded defaults: training set, emulator, mock, "
                                          "emulator MAP/Fisher/HMC, reduced exact HMC, cross-validation report")
    p.add_argument("--out", type=output_dir, default="runs/quickstart",
                   help="output directory (default runs/quickstart); rerun to resume")
    p.add_argument("--scale", default="small", choices=sorted(SCALES), help="small (laptop, default), tiny (CI), paper (GPU nodes)")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed of every random draw of the run: halos, training design (the test design: seed + 1000), "
                        "emulator training, MAP starts, HMC (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_quickstart)
