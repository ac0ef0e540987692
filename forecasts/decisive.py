"""Cross-validation that runs until its verdict is decided, within a wall-clock budget.

:func:`extend_until_decided` alternates two steps: run (or extend) the reference and candidate
chains to their current draw targets, then cross-validate them with Monte-Carlo errors
(:func:`forecasts.crossval.cross_validate`).  It stops at PASS or FAIL; while the verdict is
INCONCLUSIVE it raises the draw targets of the sample set(s) the report names to the ESS that
would decide it (:func:`forecasts.crossval.extension_targets`, plus a 20% margin), as far as the
budget affords at the reference's measured seconds per draw, and stops with INCONCLUSIVE when
the budget is spent, the draw caps are reached or the estimate sits on a threshold (no run
length decides it).

The runners are callables ``run(num_samples, time_limit_s) -> HmcResult``, normally
``run_hmc`` with a checkpoint, so extending a chain continues it (``num_samples`` raised) and a
killed check resumes: the loop's state (draw targets, rounds, seconds spent) is rewritten to
``state_path`` (JSON) after each round and read back on the next call.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from .crossval import CrossValidationReport, extension_targets
from .hmc import HmcResult

__all__ = ["DecisiveResult", "extend_until_decided"]

#: Extension margin: ESS estimates from a few hundred draws scatter by ~10-20%.
MARGIN = 1.2


@dataclasses.dataclass(frozen=True)
class DecisiveResult:
    """What :func:`extend_until_decided` returns.

    verdict: the last report's; report: the last :class:`CrossValidationReport`; reference,
    candidate: the last :class:`HmcResult`s; rounds: one dict per cross-validation (draws per
    chain of both sets, verdict, ESS, seconds); stopped: why the loop ended ("decided",
    "budget", "max draws", "on threshold"); spent_s: wall-clock seconds of the loop, over
    resumed calls; budget_s: the budget it ran under.
    """

    verdict: str
    report: CrossValidationReport
    reference: HmcResult
    candidate: HmcResult
    rounds: list
    stopped: str
    spent_s: float
    budget_s: float

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "stopped": self.stopped,
            "spent_s": round(self.spent_s, 1),
            "budget_s": self.budget_s,
            "rounds": list(self.rounds),
        }


def _read_state(path: Path | None, key: str) -> dict | None:
    if path is None or not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return state if state.get("key") == key else None


def _write_state(path: Path | None, state: dict) -> None:
    if path is None:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def _next_draws(draws: int, ask: dict | None, cap: int) -> int:
    """Draws per chain that would reach the asked ESS (ESS ~ draws), with the margin."""
    if ask is None:
        return draws
    factor = ask["needed"] / max(ask["now"], 1.0)
    return int(min(cap, max(draws + 1, math.ceil(draws * factor * MARGIN))))


def extend_until_decided(
    run_reference: Callable[[int, float | None], HmcResult],
    run_candidate: Callable[[int, float | None], HmcResult],
    compare: Callable[[HmcResult, HmcResult], CrossValidationReport],
    *,
    reference_draws: int,
    candidate_draws: int,
    budget_s: float,
    max_reference_draws: int,
    max_candidate_draws: int,
    state_path: str | os.PathLike | None = None,
    key: str = "",
    log: Callable[[str], None] = print,
) -> DecisiveResult:
    """Run both sample sets, cross-validate, extend the one(s) the report names; repeat until
    PASS/FAIL or the budget is spent (module docstring).

    Args:
        run_reference, run_candidate: ``run(num_samples, time_limit_s) -> HmcResult`` (draws
            per chain; the time limit None means "finish").
        compare: ``compare(reference, candidate) -> CrossValidationReport`` (labels: the
            report's, reference first).
        reference_draws, candidate_draws: first draw targets per chain (the first round always
            runs to them, outside the budget's control).
        budget_s: wall-clock seconds for the loop (first round included); extensions stop when
            it is spent.  max_reference_draws, max_candidate_draws: caps per chain.
        state_path: JSON file of the loop's state (resumed when its ``key`` matches).
        key: identifies the problem and settings (a state with another key is ignored).
        log: one line per round.
    """
    if budget_s < 0 or reference_draws < 4 or candidate_draws < 4:
        raise ValueError(
            f"need budget_s >= 0 and first draw targets >= 4; got {budget_s}, {reference_draws}, {candidate_draws}"
        )
    state_path = None if state_path is None else Path(state_path)
    state = _read_state(state_path, key) or {
        "key": key,
        "reference_draws": int(reference_draws),
        "candidate_draws": int(candidate_draws),
        "spent_s": 0.0,
        "rounds": [],
    }
    if state["rounds"]:
        log(f"[decisive] resuming after {len(state['rounds'])} round(s), {state['spent_s']:.0f} s spent")
    while True:
        started = time.perf_counter()
        first = not state["rounds"]
        remaining = budget_s - state["spent_s"]
        reference = run_reference(state["reference_draws"], None if first else max(remaining, 0.0))
        candidate = run_candidate(state["candidate_draws"], None)
        report = compare(reference, candidate)
        state["spent_s"] += time.perf_counter() - started
        labels = report.labels
        targets = extension_targets(report.needed, report.verdict)
        state["rounds"].append(
            {
                "round": len(state["rounds"]) + 1,
                f"{labels[0]}_draws": int(reference.samples.shape[1]),
                f"{labels[1]}_draws": int(candidate.samples.shape[1]),
                "verdict": report.verdict,
                f"{labels[0]}_ess": report.reference_ess.tolist(),
                f"{labels[1]}_ess": report.candidate_ess.tolist(),
                "shift": report.shift.tolist(),
                "shift_se": report.shift_se.tolist(),
                "auc": report.auc,
                "auc_se": report.auc_se,
                "reweighting": None
                if report.reweighting is None
                else {k: report.reweighting[k] for k in ("verdict", "shift", "shift_se", "width_ratio", "pareto_k")},
                "spent_s": round(state["spent_s"], 1),
                "asks": targets["ess"],
            }
        )
        log(
            f"[decisive] round {len(state['rounds'])}: {labels[0]} {reference.samples.shape[1]} / {labels[1]} "
            f"{candidate.samples.shape[1]} draws per chain -> {report.verdict} ({state['spent_s']:.0f} of {budget_s:.0f} s)"
        )
        stopped = None
        if report.verdict != "INCONCLUSIVE":
            stopped = "decided"
        elif not reference.complete:
            stopped = "budget"
        elif not targets["ess"]:
            stopped = "on threshold"
        else:
            ref_ask, cand_ask = targets["ess"].get(labels[0]), targets["ess"].get(labels[1])
            new_ref = _next_draws(state["reference_draws"], ref_ask, max_reference_draws)
            new_cand = _next_draws(state["candidate_draws"], cand_ask, max_candidate_draws)
            # what the rest of the budget affords at the reference's measured rate
            held = max(reference.samples.shape[1], 1)
            per_draw = reference.times.get("sampling", 0.0) / held
            remaining = budget_s - state["spent_s"]
            if ref_ask is not None and per_draw > 0:
                new_ref = min(new_ref, state["reference_draws"] + int(remaining / per_draw))
            if new_ref <= state["reference_draws"] and new_cand <= state["candidate_draws"]:
                capped = (ref_ask is not None and state["reference_draws"] >= max_reference_draws) or (
                    cand_ask is not None and state["candidate_draws"] >= max_candidate_draws
                )
                stopped = "max draws" if capped else "budget"
            elif remaining <= 0:
                stopped = "budget"
            else:
                state["reference_draws"], state["candidate_draws"] = (
                    max(new_ref, state["reference_draws"]),
                    max(new_cand, state["candidate_draws"]),
                )
        state["stopped"] = stopped
        _write_state(state_path, state)
        if stopped is not None:
            return DecisiveResult(
                report.verdict,
                report,
                reference,
                candidate,
                state["rounds"],
                stopped,
                state["spent_s"],
                float(budget_s),
            )
