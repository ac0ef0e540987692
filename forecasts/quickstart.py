"""The main job end to end (``sapphire quickstart``): training set -> Sobolev emulator -> mock
-> emulator MAP + Fisher + HMC -> a decisive exact-versus-emulator check -> report.

The decisive check (``forecasts.decisive``) runs exact-model and emulator HMC on a reduced
problem (``Scale.exact_free``, the other parameters at the mock truth), cross-validates them with
Monte-Carlo errors and extends the chains the cross-validation names until its verdict is PASS
or FAIL or ``Scale.exact_budget_s`` is spent (then INCONCLUSIVE, with the ESS that would decide
it).  ``sapphire quickstart`` exits 0 on PASS, 1 on FAIL, 3 on INCONCLUSIVE.

Every stage is recorded in ``out_dir/stages.json`` when it finishes and is skipped on a rerun
when its record matches (sizes, seed, the stage's settings) and its results load; stores are
resumed and HMC runs continue from their checkpoints, so a killed quickstart picks up inside the
stage where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import sapphire
from sapphire.cli_common import nonnegative_float, nonnegative_int, output_dir
from sapphire.jsonio import write_json


@dataclasses.dataclass(frozen=True)
class Scale:
    """Sizes of one quickstart configuration.

    ``emulator_hmc``, ``exact_hmc``: (chains, warmup, draws per chain); ``forecast_tree_depth``:
    the NUTS tree-depth cap of the 8-free emulator forecast (2^depth - 1 steps per draw).  The emulator's draws are
    those of the 8-free forecast and the first round of the reduced check; ``exact_hmc``'s draws
    are the exact chains' first round.  The decisive check then extends the chains the
    cross-validation names (exact up to ``max_exact_draws`` per chain, the reduced emulator up to
    8x its first draws) until the verdict is PASS or FAIL or ``exact_budget_s`` wall-clock seconds
    (first round included) are spent.

    ``refine_waves`` waves of ``refine_points`` posterior-local exact points each
    (``forecasts.refine``) run between the emulator and the forecasts, on the decisive check's
    problem (``exact_free`` free, the others at the mock truth); ``refine_hmc``: their NUTS
    (chains, warmup, draws).  0 waves: no refinement.

    Before the check, tempered SMC (``smc_runs`` x ``smc_particles``) weighs the modes of the
    emulator's posterior on the check's problem (``forecasts.modes``); with more than one mode
    (after merging modes whose NUTS chains mix) the check runs mode by mode instead.

    Each round of the one-mode check also reweights ``reweight_draws`` ESS-thinned draws of the
    emulator chains by the exact likelihood (``forecasts.reweight``): a paired estimate of the
    same shift and width ratio whose Monte-Carlo error is ~10x smaller than the exact chains'.

    ``solver``: the exact model's (``sapphire.Model(solver=...)``, recorded in the stores and
    used by every exact stage).  "auto" everywhere but ``tiny``, which uses "tsit5" as the tiny
    notebooks do: one solver to compile instead of two halves the tiny run (378 s -> 193 s,
    design.md s.18); the per-group choice is tested on its own (tests/test_solver_choice.py).
    """

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
    exact_budget_s: float
    max_exact_draws: int
    refine_waves: int = 0
    refine_points: int = 0
    refine_hmc: tuple[int, int, int] = (4, 300, 500)
    smc_particles: int = 1000
    smc_runs: int = 4
    reweight_draws: int = 400
    forecast_tree_depth: int = 10
    solver: str = "auto"


SCALES: dict[str, Scale] = {
    # 2-core laptop CPU, no GPU: the README gives the measured times.  The exact check has 2
    # free parameters; each exact NUTS step is a sensitivity solve of the 32 halos.  Budget 660 s:
    # a 360 s budget ended INCONCLUSIVE at a -0.30 +- 0.05 sigma shift (FAIL needed an exact ESS of
    # ~540, about 1.7x the first round's); 660 s keeps the whole run under ~17 min (README).
    "small": Scale(
        n_halos=32,
        n_train=384,
        n_test=64,
        chunk=16,
        ensemble=4,
        epochs=600,
        patience=100,
        hidden=(64, 64, 64),
        map_starts=8,
        emulator_hmc=(4, 500, 1000),
        exact_free=("A_etaM", "A_tdep"),
        exact_hmc=(2, 150, 250),
        exact_budget_s=660.0,
        max_exact_draws=3000,
        refine_waves=3,
        refine_points=128,
        refine_hmc=(4, 300, 500),
        # seed 1's 8-free posterior ran trees of ~1,000 steps: 772 s of its 32 min (design.md s.14)
        forecast_tree_depth=8,
    ),
    # Tests and CI notebooks: every stage, minutes on 2 cores, numbers meaningless.
    "tiny": Scale(
        n_halos=8,
        n_train=48,
        n_test=16,
        chunk=8,
        ensemble=2,
        epochs=40,
        patience=20,
        hidden=(16, 16),
        map_starts=2,
        emulator_hmc=(2, 30, 40),
        exact_free=("A_etaM", "A_tdep"),
        exact_hmc=(2, 10, 20),
        exact_budget_s=120.0,
        max_exact_draws=40,
        refine_waves=1,
        refine_points=8,
        refine_hmc=(2, 20, 20),
        smc_particles=200,
        smc_runs=2,
        solver="tsit5",
    ),
    # The original analysis's sizes, for GPU nodes.
    "paper": Scale(
        n_halos=1000,
        n_train=5000,
        n_test=500,
        chunk=16,
        ensemble=8,
        epochs=3000,
        patience=300,
        hidden=(128, 128, 128, 128),
        map_starts=32,
        emulator_hmc=(4, 1000, 2000),
        exact_free=("A_etaM", "B_etaM", "A_tdep", "B_tdep"),
        exact_hmc=(4, 500, 1000),
        exact_budget_s=7200.0,
        max_exact_draws=20000,
        refine_waves=3,
        refine_points=512,
        refine_hmc=(4, 500, 1000),
    ),
}

# The mock's truth, in the unit cube of the prior box: an interior, unremarkable point.
TRUTH_UNIT = np.array([0.55, 0.6, 0.45, 0.5, 0.4, 0.55, 0.5, 0.45])

#: ``cmd_quickstart``'s exit status per verdict (README "Exit status"): 0 the emulator posterior
#: agrees with the exact one; 1 it does not; 3 undecided within the budget (rerun with a larger
#: ``--exact-budget`` to extend the chains where they stopped).
EXIT_STATUS = {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}


class _Stages:
    """Runs named stages in order, timing them and printing one line each.

    Each finished stage is recorded in ``out/stages.json`` with a key (the run's sizes and seed,
    the stage's own settings); on a rerun a stage with the same key is skipped when its saved
    results load, unless a stage it depends on (``after``) was computed again in this run."""

    def __init__(self, out: Path, base: dict, log: Callable[[str], None]):
        self.path, self.base, self.log, self.rows = out / "stages.json", base, log, []
        self.records: dict = {}
        self.recomputed: set[str] = set()
        if self.path.exists():
            try:
                self.records = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                log(f"[quickstart] {self.path} is unreadable ({exc}): running every stage again")

    def run(
        self,
        name: str,
        compute: Callable[[], str],
        load: Callable[[], None],
        extra: Any = None,
        after: tuple[str, ...] = (),
    ) -> None:
        key = hashlib.sha256(json.dumps([self.base, name, extra], sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]
        record = self.records.get(name)
        if record is not None and record.get("key") == key and not self.recomputed.intersection(after):
            try:
                load()
            except (OSError, ValueError, KeyError) as exc:
                self.log(
                    f"[quickstart] {name}: the results of an earlier run could not be reused "
                    f"({type(exc).__name__}: {exc}); running it again"
                )
            else:
                self.rows.append(
                    {"stage": name, "seconds": record["seconds"], "outcome": record["outcome"], "skipped": True}
                )
                self.log(f"[quickstart] {name}: done in an earlier run, skipped ({record['outcome']})")
                return
        self.recomputed.add(name)
        self.log(f"[quickstart] {name} ...")
        started = time.perf_counter()
        outcome = compute()
        seconds = round(time.perf_counter() - started, 1)
        self.records[name] = {"key": key, "outcome": outcome, "seconds": seconds}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.records, indent=1))
        os.replace(tmp, self.path)
        self.rows.append({"stage": name, "seconds": seconds, "outcome": outcome, "skipped": False})
        self.log(f"[quickstart] {name}: {outcome} ({seconds:.1f} s)")


#: A_etaM offsets from the truth at which :func:`cgm_regime` also counts the cooling halos.
A_ETAM_SCAN = (-0.4, -0.3, -0.2, -0.1, 0.1, 0.2)


def cgm_regime(model: sapphire.Model, halos: sapphire.HaloPopulation, theta) -> dict:
    """Where ``theta`` lies relative to the CGM regime switch (docs/design.md s.9).

    t_cool / t_ff at r_0 at z = 0 (the ``t_cool_over_t_ff_r0`` diagnostic of ``Model.evolve``)
    per halo: below 1 the CGM cools and feeds the ISM, above 1 it stays hot (blows out, holds
    back inflow).  Returns the fractions of the solved halos in each state, the ratio's
    quantiles, A_etaM's place in its prior range (the switch lies in the lower half) and
    ``scan``: the cooling fraction at A_etaM + :data:`A_ETAM_SCAN` (the other parameters as in
    theta)."""
    names = list(sapphire.PARAMETER_NAMES)
    k = names.index("A_etaM")
    low, high = sapphire.DEFAULT_PRIOR.low[k], sapphire.DEFAULT_PRIOR.high[k]
    a_etam = float(np.asarray(theta)[k])

    def ratios(a: float) -> np.ndarray:
        """t_cool/t_ff at r_0, z = 0, of the solved halos at theta with A_etaM = a."""
        point = np.array(theta, dtype=np.float64)
        point[k] = a
        out = model.evolve(point, halos)
        ratio = np.asarray(out.diagnostics["t_cool_over_t_ff_r0"], dtype=np.float64).reshape(halos.n_halos, -1)[:, -1]
        return ratio[np.asarray(out.success, bool).reshape(-1) & np.isfinite(ratio)]

    solved = ratios(a_etam)
    # the same at A_etaM steps below and above the truth (one compiled solve): where the switch lies
    scan = [
        {"A_etaM": a, "fraction_cooling": float(np.mean(r < 1.0)) if r.size else None, "n_solved": int(r.size)}
        for a in a_etam + np.array(A_ETAM_SCAN)
        if low <= a <= high
        for r in [ratios(a)]
    ]
    unit = (a_etam - low) / (high - low)
    cooling = float(np.mean(solved < 1.0)) if solved.size else float("nan")
    q = np.quantile(solved, [0.1, 0.5, 0.9]).tolist() if solved.size else [None] * 3
    half = "lower" if unit < 0.5 else "upper"
    line = (
        f"at the mock truth {100 * cooling:.0f}% of the {solved.size} solved halos have a cooling CGM (t_cool/t_ff < 1 at r_0) "
        f"and {100 * (1 - cooling):.0f}% a hot one (median t_cool/t_ff {q[1]:.3g}, 10-90% {q[0]:.3g}-{q[2]:.3g}); "
        f"A_etaM = {a_etam:.3f} lies at {unit:.2f} of its range [{low:g}, {high:g}], in the {half} half "
        f"({'inside' if half == 'lower' else 'above'} the low-mass-loading half where the CGM switches regime "
        "and the emulator's errors are largest, docs/design.md s.9)"
    )
    return {
        "n_halos": int(halos.n_halos),
        "n_solved": int(solved.size),
        "fraction_cooling": cooling,
        "fraction_hot": 1.0 - cooling if solved.size else None,
        "t_cool_over_t_ff_r0_quantiles": q,
        "A_etaM": a_etam,
        "A_etaM_unit": unit,
        "A_etaM_half": half,
        "scan": scan,
        "line": line
        + "; fraction cooling versus A_etaM: "
        + ", ".join(
            f"{row['A_etaM']:.2f}: {row['fraction_cooling']:.2f}" for row in scan if row["fraction_cooling"] is not None
        ),
    }


def run_quickstart(
    out_dir: str | Path = "quickstart",
    scale: str = "small",
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    exact_budget_s: float | None = None,
) -> dict[str, Any]:
    """Run (or finish) the whole pipeline into ``out_dir``; returns the summary written to
    ``out_dir/summary.json``.  ``scale``: a key of :data:`SCALES`; ``exact_budget_s``: the
    decisive check's wall-clock budget in seconds (default the scale's; a rerun with a larger one
    extends the chains where the last run stopped)."""
    import training_sets
    from emulator import SobolevEmulator, emulator_report, train_emulator
    from training_sets.generate import model_from_attrs

    from .campaigns import mock_observations
    from .crossval import cross_validate
    from .decisive import extend_until_decided
    from .fisher import gauss_newton_fisher, laplace
    from .forward import EmulatorForward, ExactForward
    from .hmc import HmcResult
    from .optimize import find_map
    from .refine import REFINE_STATE, RefineSettings, refine
    from .reweight import ReweightedCheck, combine, reweighted_check
    from .steps import fisher_from_dict

    if scale not in SCALES:
        raise ValueError(f"unknown quickstart scale {scale!r}; choose one of {sorted(SCALES)}")
    sizes = SCALES[scale]
    budget = float(sizes.exact_budget_s if exact_budget_s is None else exact_budget_s)
    if not (np.isfinite(budget) and budget >= 0):
        raise ValueError(f"exact_budget_s must be a number of seconds >= 0; got {exact_budget_s!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fixed_sizes = {k: v for k, v in dataclasses.asdict(sizes).items() if k != "exact_budget_s"}
    stages = _Stages(out, {"sizes": fixed_sizes, "seed": seed}, log)
    state: dict[str, Any] = {}
    truth = sapphire.DEFAULT_PRIOR.from_unit(TRUTH_UNIT)

    # 1. Training and test sets (same halos, independent designs).
    stores = (("train", sizes.n_train, seed), ("test", sizes.n_test, seed + 1000))

    def training_sets_stage() -> str:
        reports = []
        for name, n_points, design_seed in stores:
            r = training_sets.generate(
                out / f"{name}.zarr",
                n_points=n_points,
                n_halos=sizes.n_halos,
                seed=design_seed,
                halo_seed=seed,
                chunk=sizes.chunk,
                model=sapphire.Model(solver=sizes.solver),
                resume=True,
                progress=progress,
            )
            reports.append(
                f"{name}: {r.n_points} points ({r.computed} computed now, {r.failed_points} with failed halos)"
            )
        return "; ".join(reports)

    def training_sets_load() -> None:
        for name, n_points, _ in stores:
            ts = training_sets.open_training_set(out / f"{name}.zarr")
            if ts.n_points != n_points or not bool(ts.done.all().compute()):
                raise ValueError(f"{name}.zarr holds {int(ts.done.sum().compute())} of {n_points} points")

    stages.run("training sets", training_sets_stage, training_sets_load)
    train = training_sets.open_training_set(out / "train.zarr")
    state["model"], state["halos"] = model_from_attrs(train.attrs), train.halos()
    model, halos = state["model"], state["halos"]

    # 2. Emulator (retrained only if the training store changed).
    emu_path = out / "emulator.emu"

    def emulator_load() -> None:
        emu = SobolevEmulator.load(emu_path)
        if emu.store_fingerprint != train.fingerprint:
            raise ValueError(f"{emu_path} was trained on another store")
        state["emu"] = emu

    def emulator_stage() -> str:
        if emu_path.exists():
            try:
                emulator_load()
                return f"kept {emu_path} (trained on this store)"
            except ValueError as exc:
                log(f"[quickstart] not reusing {emu_path} ({exc}): training a new emulator in its place")
        emu = train_emulator(
            train,
            ensemble=sizes.ensemble,
            epochs=sizes.epochs,
            patience=sizes.patience,
            hidden=sizes.hidden,
            seed=seed,
            progress=progress,
        )
        emu.save(emu_path)
        state["emu"] = emu
        return f"trained {sizes.ensemble} members, saved {emu_path}"

    stages.run("emulator", emulator_stage, emulator_load, after=("training sets",))
    emu = state["emu"]

    def emulator_report_stage() -> str:
        state["emulator_report"] = emulator_report(emu, out / "test.zarr", out / "emulator_report", progress=progress)
        return _emulator_report_line(state["emulator_report"])

    def emulator_report_load() -> None:
        state["emulator_report"] = json.loads((out / "emulator_report" / "emulator_report.json").read_text())

    stages.run("emulator validation (test set)", emulator_report_stage, emulator_report_load, after=("emulator",))

    # 3. Mock data from the exact model at a known truth, and where the truth sits relative to
    #    the CGM regime switch.
    def mock_stage() -> str:
        mock = mock_observations(model, halos, sapphire.Observations.default(), truth)
        (out / "mock_observations.json").write_text(mock.to_json())
        state["mock"], state["regime"] = mock, cgm_regime(model, halos, truth)
        write_json(out / "regime.json", state["regime"])
        return (
            f"exact summaries at theta_true = {np.round(truth, 3).tolist()} ({halos.n_halos} halos); "
            f"{100 * state['regime']['fraction_cooling']:.0f}% of halos with a cooling CGM"
        )

    def mock_load() -> None:
        state["mock"] = sapphire.Observations.from_dict(json.loads((out / "mock_observations.json").read_text()))
        state["regime"] = json.loads((out / "regime.json").read_text())

    stages.run("mock and CGM regime", mock_stage, mock_load, after=("training sets",))
    mock = state["mock"]

    # 3b. Refinement: waves of exact points where the posterior of the decisive check's problem
    #     lives, each scored held-out before the emulator is retrained on it (forecasts.refine).
    refine_dir = out / "refine"
    refine_settings = RefineSettings(
        waves=max(sizes.refine_waves, 1),
        points_per_wave=max(sizes.refine_points, 1),
        chains=sizes.refine_hmc[0],
        warmup=sizes.refine_hmc[1],
        draws=sizes.refine_hmc[2],
        map_starts=sizes.map_starts,
        seed=seed,
    )

    def refine_stage() -> str:
        source = {
            "train": train.fingerprint,
            "emulator": emu.store_fingerprint,
            "mock": mock.fingerprint(),
            # a refinement with other settings (other than more waves, which continue) starts afresh
            "settings": {k: v for k, v in refine_settings.to_dict().items() if k != "waves"},
        }
        marker = refine_dir / "source.json"
        if refine_dir.exists() and (not marker.exists() or json.loads(marker.read_text()) != source):
            log(f"[quickstart] {refine_dir} was refined from another store, emulator or mock: starting it afresh")
            shutil.rmtree(refine_dir)
        if not refine_dir.exists():
            refine_dir.mkdir(parents=True)
            # the waves append to a copy, so train.zarr stays the prior-wide design it was
            shutil.copytree(out / "train.zarr", refine_dir / "store.zarr")
            write_json(marker, source)
        result = refine(
            refine_dir / "store.zarr",
            emu,
            refine_dir,
            mock,
            free=list(sizes.exact_free),
            fixed=truth,
            settings=refine_settings,
            progress=progress,
            log=log,
        )
        state["emu"], state["refine"] = result.emulator, _refine_summary(refine_dir)
        return result.summary_line()

    def refine_load() -> None:
        saved = json.loads((refine_dir / REFINE_STATE).read_text())
        if saved.get("stopped") is None:
            raise ValueError("the refinement did not finish")
        state["emu"], state["refine"] = SobolevEmulator.load(refine_dir / "emulator"), _refine_summary(refine_dir)

    refine_title = f"refine ({sizes.refine_waves} wave(s) x {sizes.refine_points} points)"
    if sizes.refine_waves > 0:
        stages.run(
            refine_title,
            refine_stage,
            refine_load,
            extra=refine_settings.to_dict(),
            after=("emulator", "mock and CGM regime"),
        )
        emu = state["emu"]

    # 4. Emulator forecast with every parameter free.
    def emulator_forecast_stage() -> str:
        from .plots import corner_overlay

        fm = EmulatorForward(emu, mock)
        fit = find_map(fm, n_starts=sizes.map_starts, seed=seed)
        fisher = laplace(fm, fit.best)
        chains, warmup, draws = sizes.emulator_hmc
        post = _run_hmc_resuming(
            fm,
            out / "emulator_hmc.ckpt.npz",
            log,
            num_chains=chains,
            num_warmup=warmup,
            num_samples=draws,
            seed=seed,
            init=fit.best,
            max_tree_depth=sizes.forecast_tree_depth,
            progress=_hmc_bar("emulator HMC", warmup + draws, progress),
        )
        state["emulator_forecast"] = {
            "map": fit.to_dict(),
            "map_line": fit.summary_line(),
            "laplace": fisher.to_dict(),
            "hmc": post.summary(),
            "truth": truth,
        }
        write_json(out / "emulator_forecast.json", state["emulator_forecast"])
        corner_overlay(
            [post.flat],
            ["emulator HMC"],
            post.names,
            out / "emulator_posterior.png",
            truths=truth,
            title="emulator posterior, all 8 parameters",
        )
        bias = (post.mean - truth) / post.std
        return (
            f"MAP: {fit.summary_line()}; HMC {chains}x({warmup}+{draws}) from the MAP, {_hmc_line(post)}; "
            f"|mean - truth|/sigma max {np.max(np.abs(bias)):.2f}"
        )

    def emulator_forecast_load() -> None:
        state["emulator_forecast"] = json.loads((out / "emulator_forecast.json").read_text())

    stages.run(
        "emulator forecast (8 free)",
        emulator_forecast_stage,
        emulator_forecast_load,
        after=("emulator", "mock and CGM regime", refine_title),
    )

    # 5. The decisive check: exact-model HMC on a reduced problem against the emulator's on the
    #    same problem, extended until the cross-validation decides or the budget is spent.
    free = list(sizes.exact_free)
    title = f"decisive check ({len(free)} free: exact vs emulator)"

    def decisive_stage() -> str:
        exact = ExactForward(model, halos, mock, free=free, fixed=truth)
        start = truth[list(exact.free_index)]
        emu_fm = EmulatorForward(emu, mock, free=free, fixed=truth)
        # Fisher of the exact model at the truth: the mock is noise-free, so the truth is the
        # exact MAP up to the theta-dependence of the model's standard error (an exact MAP search
        # would cost another compilation of the sensitivity solve).  Gauss-Newton for both.
        fisher_exact = gauss_newton_fisher(exact, start)
        fit = find_map(emu_fm, n_starts=sizes.map_starts, seed=seed)
        fisher_emu = gauss_newton_fisher(emu_fm, fit.best)
        (ec, ew, ed), (cc, cw, cd) = sizes.exact_hmc, sizes.emulator_hmc
        modes, emu_chains = weigh_check_modes(emu_fm, sizes, seed, out, progress, log)
        if modes.n_modes > 1:
            return decide_by_modes(exact, modes, emu_chains, start, sizes, seed, budget, out, fit, state, progress)

        def run_exact(n: int, limit: float | None):
            return _run_hmc_resuming(
                exact,
                out / "exact_hmc.ckpt.npz",
                log,
                num_chains=ec,
                num_warmup=ew,
                num_samples=n,
                seed=seed,
                init=start,
                time_limit_s=limit,
                progress=_hmc_bar("exact HMC", ew + n, progress),
            )

        def run_emulator(n: int, limit: float | None):
            return _run_hmc_resuming(
                emu_fm,
                out / "emulator_hmc_reduced.ckpt.npz",
                log,
                num_chains=cc,
                num_warmup=cw,
                num_samples=n,
                seed=seed,
                init=fit.best,
                time_limit_s=limit,
                progress=_hmc_bar("emulator HMC (reduced)", cw + n, progress),
            )

        reweighted: dict = {}

        def compare(reference, candidate):
            report = cross_validate(
                reference, candidate, fisher_reference=fisher_exact, fisher_candidate=fisher_emu, seed=seed
            )
            # the paired check reweights the emulator's draws by the exact likelihood; it is
            # redone only when the emulator chains were extended
            if reweighted.get("draws") != candidate.samples.shape:
                check = reweighted_check(
                    exact, emu_fm, candidate.samples, n_draws=sizes.reweight_draws, seed=seed, progress=progress
                )
                reweighted.update(draws=candidate.samples.shape, check=check)
                log(f"[decisive] {check.line()}")
            return combine(report, reweighted["check"])

        key = hashlib.sha256(
            json.dumps(
                [
                    exact.fingerprint(),
                    emu_fm.fingerprint(),
                    sizes.exact_hmc,
                    sizes.emulator_hmc,
                    sizes.max_exact_draws,
                    sizes.reweight_draws,
                    seed,
                ]
            ).encode()
        ).hexdigest()[:16]
        result = extend_until_decided(
            run_exact,
            run_emulator,
            compare,
            reference_draws=ed,
            candidate_draws=cd,
            budget_s=budget,
            max_reference_draws=sizes.max_exact_draws,
            max_candidate_draws=8 * cd,
            state_path=out / "decisive_state.json",
            key=key,
            log=log,
        )
        result.reference.save(out / "exact_hmc.npz")
        result.candidate.save(out / "emulator_hmc_reduced.npz")
        write_json(
            out / "decisive.json",
            {
                "free": free,
                "truth": start,
                "modes": _modes_record(modes),
                "check": result.to_dict(),
                "map": fit.to_dict(),
                "map_line": fit.summary_line(),
                "fisher_exact": fisher_exact.to_dict(),
                "fisher_emulator": fisher_emu.to_dict(),
                "exact_hmc": result.reference.summary(),
                "emulator_hmc": result.candidate.summary(),
                "reweighting": result.report.reweighting,
            },
        )
        _keep_crossval(state, out, result.report, start)
        state["decisive"] = json.loads((out / "decisive.json").read_text())
        report = result.report
        return (
            f"{report.verdict} after {len(result.rounds)} round(s), {result.spent_s:.0f} s of {budget:.0f} ({result.stopped}): "
            f"exact {ec}x{result.reference.samples.shape[1]} draws (ESS {_ess_text(report.reference_ess)}), emulator "
            f"{cc}x{result.candidate.samples.shape[1]} (ESS {_ess_text(report.candidate_ess)}); shifts "
            + ", ".join(f"{n} {s:+.3f} +- {e:.3f}" for n, s, e in zip(report.names, report.shift, report.shift_se))
            + f" sigma; AUC {report.auc:.3f} +- {report.auc_se:.3f}; emulator MAP: {fit.summary_line()}"
        )

    def decisive_load() -> None:
        saved = json.loads((out / "decisive.json").read_text())
        if "modes_check" in saved:
            state["crossval"], state["crossval_figures"] = (
                ModesVerdict.from_dict(saved["modes_check"]),
                saved["figures"],
            )
            state["decisive"] = saved
            return
        reference, candidate = HmcResult.load(out / "exact_hmc.npz"), HmcResult.load(out / "emulator_hmc_reduced.npz")
        report = cross_validate(
            reference,
            candidate,
            fisher_reference=fisher_from_dict(saved["fisher_exact"]),
            fisher_candidate=fisher_from_dict(saved["fisher_emulator"]),
            seed=seed,
        )
        if saved.get("reweighting") is not None:
            report = combine(report, ReweightedCheck.from_dict(saved["reweighting"]))
        _keep_crossval(state, out, report, np.asarray(saved["truth"]))
        state["decisive"] = saved

    stages.run(
        title,
        decisive_stage,
        decisive_load,
        extra={"exact_budget_s": budget},
        after=("emulator", "mock and CGM regime", refine_title),
    )

    report = state["crossval"]
    decisive = state["decisive"]
    summary = {
        "scale": scale,
        "sizes": dataclasses.asdict(sizes) | {"exact_budget_s": budget},
        "seed": seed,
        "truth": truth,
        "sapphire_version": sapphire.__version__,
        "stages": stages.rows,
        "verdict": report.verdict,
        "exit_status": EXIT_STATUS[report.verdict],
        "advice": report.advice,
        "decisive_check": decisive["check"],
        "crossval": report.to_dict(),
        "chains": _chain_rows(state["emulator_forecast"]["hmc"], decisive["exact_hmc"], decisive["emulator_hmc"]),
        "cgm_regime": state["regime"],
        "emulator_map": {
            "line": state["emulator_forecast"]["map_line"],
            "converged_fraction": state["emulator_forecast"]["map"].get("converged_fraction"),
        },
        "reduced_emulator_map": {
            "line": decisive["map_line"],
            "converged_fraction": decisive["map"].get("converged_fraction"),
        },
        "emulator_report": {
            "acceptance": state["emulator_report"].get("acceptance"),
            "line": _emulator_report_line(state["emulator_report"]),
        },
        "emulator_forecast": state["emulator_forecast"]["hmc"],
        "refine": state.get("refine"),
        "check_modes": decisive.get("modes"),
    }
    write_json(out / "summary.json", summary)
    _write_report(out, summary, state)
    log(_summary_table(stages.rows))
    log(
        f"[quickstart] verdict: emulator posterior vs exact: {summary['verdict']}"
        + (f" ({report.advice})" if report.advice else "")
        + f"; report {out / 'report.md'}"
    )
    return summary


def _refine_summary(refine_dir: Path) -> dict:
    """The refinement's waves for the summary and report: held-out scores, posterior change,
    points and seconds per wave, why it stopped and what is missing."""
    from .refine import REFINE_STATE

    saved = json.loads((refine_dir / REFINE_STATE).read_text())
    return {
        "stopped": saved.get("stopped"),
        "missing": saved.get("missing", []),
        "waves": [
            {
                "wave": w["wave"],
                "n_points": w["n_points"],
                "scores": w["scores"],
                "posterior": w["posterior"],
                "posterior_change": w.get("posterior_change"),
                "seconds": w["seconds"],
            }
            for w in saved["waves"]
        ],
        "report": str(refine_dir / "refine_report.md"),
    }


@dataclasses.dataclass(frozen=True)
class ModesVerdict:
    """The check's verdict when the emulator's posterior has several modes: the mode-by-mode
    cross-validation (``forecasts.modes.cross_validate_modes``) as the report uses it."""

    verdict: str
    advice: str
    markdown: str
    payload: dict

    def to_markdown(self) -> str:
        return self.markdown

    def to_dict(self) -> dict:
        return self.payload

    @classmethod
    def from_dict(cls, d: dict) -> ModesVerdict:
        return cls(d["verdict"], d["advice"], d["markdown"], d["payload"])


def weigh_check_modes(emu_fm, sizes: Scale, seed: int, out: Path, progress: bool, log: Callable[[str], None]):
    """(ModesResult, its NUTS chains or None): tempered SMC on the check's emulator posterior;
    with several modes, NUTS in each and the modes whose chains mix merged."""
    from .modes import refine_and_merge, weigh_modes

    modes = weigh_modes(
        emu_fm, num_particles=sizes.smc_particles, num_runs=sizes.smc_runs, seed=seed, progress=progress
    )
    line = f"{modes.n_modes} mode(s) by tempered SMC, ln Z {modes.log_evidence:.3f} +- {modes.log_evidence_error:.3f}"
    chains = None
    if modes.n_modes > 1:
        chains_n, warmup, draws = sizes.emulator_hmc
        modes, chains, _, _, _ = refine_and_merge(
            emu_fm,
            modes,
            chains_per_mode=chains_n,
            num_warmup=warmup,
            num_samples=draws,
            seed=seed,
            progress=progress,
            checkpoint=out / "emulator_hmc_modes.npz",
        )
        line += f"; {modes.n_modes} after merging the modes whose NUTS chains mix"
    log(f"[quickstart] the check's emulator posterior: {line}")
    return modes, chains


def _modes_record(modes) -> dict:
    """The JSON record of the check's emulator modes: count, evidence, per-mode weight, mean, std."""
    return {
        "n_modes": modes.n_modes,
        "log_evidence": modes.log_evidence,
        "log_evidence_error": modes.log_evidence_error,
        "weight": [m.weight for m in modes.modes],
        "weight_error": [m.weight_error for m in modes.modes],
        "mean": [m.mean for m in modes.modes],
        "std": [m.std for m in modes.modes],
        "sampler": modes.settings,
    }


def decide_by_modes(
    exact, modes, emu_chains, truth_free, sizes: Scale, seed: int, budget: float, out: Path, fit, state, progress
) -> str:
    """The check mode by mode (several emulator modes): exact NUTS started in each mode, each
    mode cross-validated and the weights compared (``forecasts.modes.check_modes``); one round of
    ``exact_hmc`` draws within ``budget`` seconds (a rerun with a larger budget resumes the
    chains).  Writes ``decisive.json`` and sets the report's state; returns the stage's line."""
    from .modes import check_modes

    chains, warmup, draws = sizes.exact_hmc
    started = time.perf_counter()
    exact_chains, weights, report = check_modes(
        exact,
        modes,
        emu_chains,
        chains_per_mode=chains,
        num_warmup=warmup,
        num_samples=draws,
        seed=seed,
        progress=progress,
        checkpoint=out / "exact_hmc_modes.npz",
        time_limit_s=budget,
    )
    spent = time.perf_counter() - started
    if report is None:
        verdict = ModesVerdict(
            "INCONCLUSIVE",
            f"the exact chains in {modes.n_modes} modes stopped at the budget; rerun with a larger --exact-budget to resume them.",
            "The exact chains stopped at the budget: no cross-validation yet.\n",
            {"verdict": "INCONCLUSIVE", "modes": []},
        )
        figures = []
    else:
        advice = (
            ""
            if report.verdict != "INCONCLUSIVE"
            else ("a mode's cross-validation or weight is undecided: run `sapphire validate --modes` with more draws.")
        )
        verdict = ModesVerdict(report.verdict, advice, report.to_markdown(), report.to_dict())
        figures = [
            str(f)
            for k, r in enumerate(report.reports)
            for f in r.plot(out, truths=truth_free, prefix=f"crossval_mode{k}")
        ]
    record = {
        "free": list(exact.free_names),
        "truth": np.asarray(truth_free),
        "modes": _modes_record(modes),
        "modes_check": dataclasses.asdict(verdict),
        "exact_mode_weights": weights,
        "figures": figures,
        "check": {"rounds": [], "stopped": "mode by mode, one round", "spent_s": spent, "budget_s": budget},
        "map": fit.to_dict(),
        "map_line": fit.summary_line(),
        "exact_hmc": exact_chains[0].hmc.summary(),
        "emulator_hmc": emu_chains[0].hmc.summary(),
    }
    write_json(out / "decisive.json", record)
    state["decisive"] = json.loads((out / "decisive.json").read_text())
    state["crossval"], state["crossval_figures"] = verdict, figures
    return f"{verdict.verdict}, mode by mode ({modes.n_modes} emulator modes), {spent:.0f} s of {budget:.0f}"


def _keep_crossval(state: dict, out: Path, report, truths) -> None:
    """Write the cross-validation's JSON and figures and keep the report for the summary."""
    report.to_json(out / "crossval.json")
    state["crossval_figures"] = report.plot(out, truths=truths)
    state["crossval"] = report


def _ess_text(ess) -> str:
    return "/".join(f"{v:.0f}" for v in np.asarray(ess))


def _chain_rows(*summaries: dict) -> list[dict]:
    """One row per HMC run of the report: chains x draws, ESS and R-hat per parameter,
    divergences (sampling and warmup)."""
    labels = ("emulator, 8 free", "exact, reduced", "emulator, reduced")
    return [
        {
            "run": label,
            "chains": s["chains"],
            "draws": s["draws"],
            "names": s["names"],
            "ess": s["ess"],
            "r_hat": s["r_hat"],
            "n_divergent": s["n_divergent"],
            "warmup_divergent": s["warmup_divergent"],
            "draws_with_failed_halos": s.get("draws_with_failed_halos"),
        }
        for label, s in zip(labels, summaries)
    ]


def _hmc_line(post) -> str:
    seconds = post.times.get("warmup", 0.0) + post.times.get("sampling", 0.0)
    return (
        f"sampling {seconds:.0f} s (+{post.times.get('compile', 0.0):.0f} s compile), max R-hat "
        f"{np.nanmax(post.r_hat):.3f}, min ESS {np.nanmin(post.ess):.0f}, {post.n_divergent} divergences"
    )


def _plus_minus(value, se) -> str:
    """'+0.123 +- 0.045', or 'n/a' for a value JSON stored as null (not finite)."""
    return "n/a" if value is None or se is None else f"{value:+.3f} +- {se:.3f}"


def _hmc_bar(description: str, total: int, enabled: bool):
    """An HMC progress bar when progress is shown."""
    from .hmc import progress_bar

    return progress_bar(description, total) if enabled else None


def _emulator_report_line(report: dict) -> str:
    """Worst per-summary median and 95th-percentile |emulator - exact| / sigma_obs, median
    Jacobian relative error and the +-2 error coverage, from an emulator report."""
    values = report["value_error_sigma_obs"]["per_summary"].values()
    return (
        f"{report['n_test']} test points: |emu - exact|/sigma_obs worst-summary median "
        f"{max(v['median'] for v in values):.3f} (target 0.1), worst 95th pct {max(v['p95'] for v in values):.2f} "
        f"(target 0.3); Jacobian rel. error median {report['jacobian_rel_error']['median']:.3f} (target 0.05); "
        f"{100 * report['calibration']['fraction_inside_2_error']:.1f}% of errors inside +-2 spread"
    )


def _summary_table(rows: list[dict]) -> str:
    width = max(len(r["stage"]) for r in rows)
    lines = [f"{'stage':<{width}}  {'seconds':>8}  outcome", "-" * (width + 60)]
    lines += [f"{r['stage']:<{width}}  {r['seconds']:>8.1f}  {r['outcome']}" for r in rows]
    lines.append(f"{'total':<{width}}  {sum(r['seconds'] for r in rows):>8.1f}")
    return "\n".join(lines)


def _refine_lines(refine: dict | None) -> list[str]:
    """The report's refinement section (empty without refinement)."""
    if not refine:
        return []
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        "## Refinement waves (held-out scores, before retraining)",
        "",
        "Each wave drew exact points from the broadened posterior of the decisive check's problem under the "
        "emulator of the time, scored that emulator on them, then retrained on everything "
        "(`refine/refine_report.md`).",
        "",
        "| wave | points | value error median / p95 [sigma_obs] | Jacobian median | \\|dlnL\\| median / p95 | posterior shift (max) | exact s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for w in refine["waves"]:
        s, c = w["scores"], w.get("posterior_change")
        shift = "-" if c is None else f"{c['max_abs_shift']:.3f}"
        lines.append(
            f"| {w['wave']} | {w['n_points']} | {fmt(s['value_error_median'])} / {fmt(s['value_error_p95'])} | "
            f"{fmt(s['jacobian_error_median'])} | {fmt(s['dlogl_abs_median'])} / {fmt(s['dlogl_abs_p95'])} | {shift} | "
            f"{w['seconds'].get('exact', 0):.0f} |"
        )
    lines += [
        "",
        f"Stopped: {refine['stopped']}"
        + (f"; missing: {'; '.join(refine['missing'])}" if refine["missing"] else "")
        + ".",
        "",
    ]
    return lines


def modes_line(modes: dict | None) -> str:
    """The report's line on the modes of the check's emulator posterior."""
    if modes is None:
        return "The emulator posterior's modes were not weighed (a run from before they were)."
    weights = ", ".join(f"{w:.3f} +- {e:.3f}" for w, e in zip(modes["weight"], modes["weight_error"]))
    how = (
        "so the check compared the two posteriors mode by mode"
        if modes["n_modes"] > 1
        else "so the check is one comparison"
    )
    return (
        f"Modes of the emulator posterior on the check's problem (tempered SMC, {modes['sampler']['num_runs']} x "
        f"{modes['sampler']['num_particles']} particles): {modes['n_modes']}, weights {weights}, ln Z "
        f"{modes['log_evidence']:.3f} +- {modes['log_evidence_error']:.3f}; {how}."
    )


def _write_report(out: Path, summary: dict, state: dict) -> None:
    report = state["crossval"]
    check = summary["decisive_check"]
    meaning = {
        "PASS": "agrees with the exact one",
        "FAIL": "does NOT agree with the exact one",
        "INCONCLUSIVE": "could not be told apart from the exact one, nor shown to differ, within the budget",
    }
    lines = [
        "# sapphire quickstart report",
        "",
        f"Scale `{summary['scale']}`, seed {summary['seed']}, sapphire {summary['sapphire_version']}.",
        "",
        f"**Verdict: the emulator posterior {meaning[report.verdict]} ({report.verdict}; exit status {summary['exit_status']}).**",
    ]
    if report.advice:
        lines += [
            "",
            f"What would decide it: {report.advice} Rerun with a larger `--exact-budget` (seconds, "
            f"now {check['budget_s']:.0f}) to extend the chains where they stopped.",
        ]
    lines += [
        "",
        "## Where the mock truth lies",
        "",
        summary["cgm_regime"]["line"][0].upper() + summary["cgm_regime"]["line"][1:] + ".",
        "",
        *_refine_lines(summary.get("refine")),
        "## Stages",
        "",
        "| stage | seconds | outcome |",
        "| --- | ---: | --- |",
    ]
    lines += [
        f"| {r['stage']} | {r['seconds']:.1f}{' (earlier run)' if r.get('skipped') else ''} | {r['outcome']} |"
        for r in summary["stages"]
    ]
    lines += [
        "",
        "## Chains",
        "",
        "| run | chains x draws | ESS per parameter | max R-hat | divergences (sampling / warmup) | draws with failed halos |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in summary["chains"]:
        ess = ", ".join(f"{n} {e:.0f}" if e is not None else f"{n} n/a" for n, e in zip(row["names"], row["ess"]))
        r_hat = max((v for v in row["r_hat"] if v is not None), default=None)
        lines.append(
            f"| {row['run']} | {row['chains']} x {row['draws']} | {ess} | {'n/a' if r_hat is None else f'{r_hat:.3f}'} | "
            f"{row['n_divergent']} / {row['warmup_divergent']} | {row['draws_with_failed_halos']} |"
        )
    lines += [
        "",
        f"## The decisive check ({check['stopped']} after {len(check['rounds'])} round(s), "
        f"{check['spent_s']:.0f} s of a {check['budget_s']:.0f} s budget)",
        "",
        "Each round runs (or extends) both chains, then cross-validates with Monte-Carlo errors, and reweights the "
        "emulator's draws by the exact likelihood (a paired estimate of the same shifts, forecasts.reweight); an "
        "INCONCLUSIVE round extends the chains it names to the ESS that would decide it.",
        "",
        "| round | exact draws / chain | emulator draws / chain | shift +- MC error (sigma) | AUC | reweighted shift (verdict) "
        "| verdict | seconds so far |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in check["rounds"]:
        shifts = ", ".join(f"{s:+.3f} +- {e:.3f}" for s, e in zip(r["shift"], r["shift_se"]))
        rw = r.get("reweighting")
        paired = (
            "n/a"
            if rw is None
            else ", ".join(_plus_minus(s, e) for s, e in zip(rw["shift"], rw["shift_se"])) + f" ({rw['verdict']})"
        )
        lines.append(
            f"| {r['round']} | {r['exact_draws']} | {r['emulator_draws']} | {shifts} | {r['auc']:.3f} +- {r['auc_se']:.3f} | "
            f"{paired} | {r['verdict']} | {r['spent_s']:.0f} |"
        )
    lines += [
        "",
        f"Emulator MAP of the reduced problem: {summary['reduced_emulator_map']['line']}.",
        "",
        modes_line(summary.get("check_modes")),
        "",
        "## Emulator posterior versus exact HMC",
        "",
        report.to_markdown(),
        "",
    ]
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in state["crossval_figures"]]
    lines += [
        "",
        "## Emulator forecast, all parameters free",
        "",
        f"MAP: {summary['emulator_map']['line']}.",
        "",
        "![emulator posterior](emulator_posterior.png)",
        "",
        "## Emulator validation on the test set",
        "",
        summary["emulator_report"]["line"] + ".",
        "",
        "Figures and numbers in `emulator_report/` (value errors in units of the observational sigma per "
        "summary, Jacobian errors, Fisher comparison, calibration of the ensemble spread).",
        "",
        "![value errors](emulator_report/value_error.png)",
        "",
    ]
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
    """``sapphire quickstart``: exit status 0 PASS, 1 FAIL, 3 INCONCLUSIVE (:data:`EXIT_STATUS`)."""
    summary = run_quickstart(
        args.out, scale=args.scale, seed=args.seed, progress=not args.quiet, exact_budget_s=args.exact_budget
    )  # a ValueError: one line, exit 2 (run_command)
    return EXIT_STATUS[summary["verdict"]]


def register(sub) -> None:
    """Add the ``quickstart`` subcommand to the ``sapphire`` parser."""
    p = sub.add_parser(
        "quickstart",
        help="the whole pipeline on embedded defaults: training set, emulator, mock, "
        "emulator MAP/Fisher/HMC, exact-vs-emulator check run until decided, report",
        description="Exit status: 0 the emulator posterior agrees with the exact one (PASS); 1 it does not "
        "(FAIL); 3 undecided within the budget (INCONCLUSIVE: rerun with a larger --exact-budget "
        "to extend the chains); 2 a bad option.",
    )
    p.add_argument(
        "--out",
        type=output_dir,
        default="runs/quickstart",
        help="output directory (default runs/quickstart); rerun to resume",
    )
    p.add_argument(
        "--scale", default="small", choices=sorted(SCALES), help="small (laptop, default), tiny (CI), paper (GPU nodes)"
    )
    p.add_argument(
        "--seed",
        type=nonnegative_int,
        default=0,
        help="seed of every random draw of the run: halos, training design (the test design: seed + 1000), "
        "emulator training, MAP starts, HMC (default 0)",
    )
    p.add_argument(
        "--exact-budget",
        type=nonnegative_float,
        default=None,
        metavar="SECONDS",
        help="wall-clock budget of the decisive exact-vs-emulator check, first round included (default: the "
        "scale's, small 660); a rerun with a larger one extends the chains where the last run stopped",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_quickstart)
