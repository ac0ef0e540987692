"""Posterior-focused refinement of an emulator (issue 21, ``sapphire refine``).

Each wave, starting from the current emulator:

1. **Sample** the posterior under the emulator with its error in the likelihood
   (``EmulatorForward(include_emulator_error=True)``): MAP from several starts, then NUTS chains
   started at the MAP modes (``run_hmc``, checkpointed).
2. **Choose** ``points_per_wave`` design points (:func:`propose_points`): candidates drawn from
   the posterior broadened by ``broaden`` (each draw plus a Gaussian kick of covariance
   (broaden^2 - 1) Sigma, so a single mode's covariance becomes broaden^2 Sigma and separate
   modes stay separate), kept inside the prior box; a fraction ``spread_fraction`` of the points
   is chosen among the candidates where the ensemble spread (in sigma_obs) is largest, the rest
   among all candidates; both by greedy maximin in the unit cube of the prior box, counting the
   store's existing points, so new points are spread out and not piled on old ones.  Seeded.
3. **Evaluate** them exactly (summaries, standard errors, Jacobians) by appending them to the
   store as a design block of their own (``training_sets.append_design``: wave number and
   proposal recorded in the store's ``design`` attribute) and running
   ``training_sets.generate(..., resume=True)``: resumable block by block, bit-identical after a
   kill.
4. **Score** the emulator that chose them on the new points BEFORE it is retrained
   (:func:`score_points`): they were drawn from the posterior and never trained on, an honest
   held-out test where it matters.
5. **Retrain** on every valid point of the store (``emulator.train_emulator`` with the settings
   the starting emulator was trained with, from scratch: docs/design.md s.17 says why).
6. **Stop** when the held-out targets (:class:`Targets`) hold and the posterior moved less than
   ``Targets.shift`` sigma since the previous wave; else after ``waves`` waves, saying what is
   missing.

Files under ``out_dir``: ``refine_state.json`` (settings key, one record per finished wave),
``wave_K/`` (``posterior.npz``, ``hmc.ckpt.npz``, ``proposal.json``, ``scores.json``,
``emulator/``), ``emulator/`` (the latest emulator, with its refined region), and
``refine_report.md`` with figures.  A rerun with the same settings continues from the last
finished wave, and inside a wave from its last finished step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sapphire.jsonio import json_ready, write_json

__all__ = [
    "REFINE_STATE",
    "RefineResult",
    "RefineSettings",
    "Targets",
    "missing_targets",
    "posterior_change",
    "propose_points",
    "refine",
    "refined_region_entry",
    "score_points",
    "training_options",
]

#: The state file of a refinement directory.
REFINE_STATE = "refine_state.json"


@dataclasses.dataclass(frozen=True)
class Targets:
    """Held-out targets of a wave (issue 21): value error |emu - exact| / sigma_obs over every
    (point, summary) entry, median and 95th percentile; |Delta ln L| below ``dlogl`` for a
    fraction ``dlogl_fraction`` of the points; median Jacobian relative error; and the posterior
    moved less than ``shift`` (posterior sigmas, every free parameter) since the previous wave."""

    value_median: float = 0.05
    value_p95: float = 0.2
    dlogl: float = 0.5
    dlogl_fraction: float = 0.95
    jacobian_median: float = 0.05
    shift: float = 0.1


@dataclasses.dataclass(frozen=True)
class RefineSettings:
    """Sizes and choices of a refinement (recorded in ``refine_state.json``; a rerun with other
    settings into the same directory is refused).

    ``train``: keyword arguments of ``emulator.train_emulator`` for the retraining (default: the
    settings the starting emulator was trained with, :func:`training_options`).  ``jacobian``:
    False for value-only waves (no exact Jacobians; the retraining masks their Jacobian term)."""

    waves: int = 3
    points_per_wave: int = 128
    broaden: float = 1.5
    spread_fraction: float = 0.25
    candidates_per_point: int = 8
    chains: int = 4
    warmup: int = 300
    draws: int = 500
    map_starts: int = 8
    seed: int = 0
    include_emulator_error: bool = True
    jacobian: bool = True
    train: dict = dataclasses.field(default_factory=dict)
    targets: Targets = Targets()

    def __post_init__(self) -> None:
        for name in ("waves", "points_per_wave", "candidates_per_point", "chains", "warmup", "draws", "map_starts"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < (0 if name == "warmup" else 1):
                raise ValueError(f"refine: {name} must be a positive integer, got {value!r}")
        if not (np.isfinite(self.broaden) and self.broaden >= 1.0):
            raise ValueError(f"refine: broaden must be a number >= 1, got {self.broaden!r}")
        if not 0.0 <= self.spread_fraction <= 1.0:
            raise ValueError(f"refine: spread_fraction must lie in [0, 1], got {self.spread_fraction!r}")

    def to_dict(self) -> dict:
        return json_ready(dataclasses.asdict(self))


# ------------------------------------------------------------------------------------------------
# Scores
# ------------------------------------------------------------------------------------------------
def _predict(emu, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean (n, S), error (n, S), jacobian (n, S, 8)) of an emulator at theta (n, 8)."""
    if hasattr(emu, "predict_and_jacobian"):
        mean, error, jac = emu.predict_and_jacobian(theta)
    else:
        mean, error = emu.predict(theta)
        jac = emu.jacobian(theta)
    return (np.asarray(a, np.float64) for a in (mean, error, jac))


def _gaussian_log_likelihood(mean, variance, y, sigma) -> np.ndarray:
    """Per row: sum_i log N(y_i | mean_i, variance_i + sigma_i^2) (the convention of
    ``sapphire.likelihood.gaussian_log_likelihood``), in numpy."""
    var = variance + sigma**2
    return np.sum(-0.5 * ((mean - y) ** 2 / var + np.log(2.0 * np.pi * var)), axis=-1)


def score_points(
    emu,
    rows: dict[str, np.ndarray],
    observations,
    free_index: Sequence[int] | None = None,
    posterior: np.ndarray | None = None,
) -> dict:
    """How well ``emu`` predicts exact rows it was not trained on.

    ``rows``: theta (n, 8), summaries (n, S), summary_stderr (n, S), summary_jacobian (n, S, 8)
    (NaN rows of a value-only point are left out of the Jacobian score).  ``observations``: the
    data (y, sigma_obs) of the likelihood, with the emulator's S summaries.  ``emu``: anything
    with ``predict_and_jacobian`` or ``predict`` + ``jacobian`` on (n, 8).

    Returns per-point arrays (``value_error`` (n, S) in sigma_obs, ``jacobian_error`` (n,):
    ||J_emu - J_exact||_F / ||J_exact||_F with columns in prior widths and rows in sigma_obs, as
    the emulator report; ``jacobian_error_free`` the same over the ``free_index`` columns;
    ``dlogl`` (n,): ln L_emu - ln L_exact, the emulator's with its error^2 (plus its estimate of
    the exact standard error^2, ``emu.model_stderr``, when it has one: the likelihood
    ``EmulatorForward`` evaluates) as model variance, the exact model's with its standard
    error^2, both plus sigma_obs^2) and ``stats``, their summaries (JSON-ready).

    ``posterior`` (n_draws, n_free) draws of the free parameters (``free_index``): also the
    ``dlogl_tilt_shift`` (n_free,), the shift of the posterior mean, in posterior sds, that the
    linear trend of Delta ln L over the points would cause (Delta ln L ~ c + b . theta tilts a
    Gaussian posterior's mean by Sigma b): a systematic error that |Delta ln L| alone hides."""
    theta = np.atleast_2d(np.asarray(rows["theta"], np.float64))
    exact = np.asarray(rows["summaries"], np.float64)
    stderr = np.asarray(rows["summary_stderr"], np.float64)
    exact_jac = np.asarray(rows["summary_jacobian"], np.float64)
    mean, error, jac = _predict(emu, theta)
    y, sigma = np.asarray(observations.y, np.float64), np.asarray(observations.sigma, np.float64)
    if mean.shape != exact.shape or y.shape != (exact.shape[1],):
        raise ValueError(
            f"score_points: emulator gives {mean.shape[1:]} summaries, the rows hold {exact.shape[1:]} and "
            f"the observations {y.shape}"
        )
    value_error = np.abs(mean - exact) / sigma
    width = np.asarray(emu.prior.width, np.float64)
    scale = width[None, None, :] / sigma[None, :, None]

    def rel(columns) -> np.ndarray:
        diff = ((jac - exact_jac) * scale)[..., columns]
        ref = (exact_jac * scale)[..., columns]
        return np.linalg.norm(diff, axis=(1, 2)) / np.maximum(np.linalg.norm(ref, axis=(1, 2)), 1e-300)

    all_columns = list(range(theta.shape[1]))
    jac_error = rel(all_columns)
    jac_error_free = rel(list(free_index)) if free_index is not None else jac_error
    emu_variance = error**2
    if getattr(emu, "has_model_stderr", False):  # as EmulatorForward's likelihood adds it
        emu_variance = emu_variance + np.asarray(emu.model_stderr(theta), np.float64) ** 2
    dlogl = _gaussian_log_likelihood(mean, emu_variance, y, sigma) - _gaussian_log_likelihood(
        exact, stderr**2, y, sigma
    )
    has_jac = np.isfinite(exact_jac).all(axis=(1, 2))

    def q(values, p):
        values = np.asarray(values)[np.isfinite(values)]
        return float(np.quantile(values, p)) if values.size else None

    stats = {
        "n_points": int(theta.shape[0]),
        "n_with_jacobian": int(has_jac.sum()),
        "value_error_median": q(value_error, 0.5),
        "value_error_p95": q(value_error, 0.95),
        "value_error_max": q(value_error, 1.0),
        "worst_summary_median": float(np.max(np.median(value_error, axis=0))),
        "worst_summary_p95": float(np.max(np.quantile(value_error, 0.95, axis=0))),
        "jacobian_error_median": q(jac_error[has_jac], 0.5),
        "jacobian_error_median_free": q(jac_error_free[has_jac], 0.5),
        "dlogl_abs_median": q(np.abs(dlogl), 0.5),
        "dlogl_abs_p95": q(np.abs(dlogl), 0.95),
        "dlogl_mean": float(np.mean(dlogl)),
        "inside_2_error": float(np.mean(np.abs(mean - exact) <= 2.0 * error)),
    }
    if posterior is not None and free_index is not None and theta.shape[0] > len(free_index) + 1:
        draws = np.atleast_2d(np.asarray(posterior, np.float64))
        x = theta[:, list(free_index)] - draws.mean(axis=0)
        slope = np.linalg.lstsq(np.column_stack([np.ones(x.shape[0]), x]), dlogl, rcond=None)[0][1:]
        cov = np.atleast_2d(np.cov(draws, rowvar=False))
        stats["dlogl_tilt_shift"] = ((cov @ slope) / np.sqrt(np.diag(cov))).tolist()
    return {
        "value_error": value_error,
        "jacobian_error": jac_error,
        "jacobian_error_free": jac_error_free,
        "dlogl": dlogl,
        "stats": stats,
    }


def posterior_change(previous: dict | None, current: dict) -> dict | None:
    """Shift (current mean - previous mean) / previous sd and width ratio current sd / previous
    sd per free parameter, from two ``{"mean": [...], "std": [...]}`` summaries; None without a
    previous posterior."""
    if previous is None:
        return None
    m0, s0 = np.asarray(previous["mean"], float), np.asarray(previous["std"], float)
    m1, s1 = np.asarray(current["mean"], float), np.asarray(current["std"], float)
    shift = (m1 - m0) / s0
    return {"shift": shift.tolist(), "width_ratio": (s1 / s0).tolist(), "max_abs_shift": float(np.max(np.abs(shift)))}


def missing_targets(stats: dict, change: dict | None, dlogl: np.ndarray, targets: Targets) -> list[str]:
    """The targets a wave's held-out scores (and the posterior's move) do not meet, one phrase
    each; empty when every target holds."""
    missing = []
    if stats["value_error_median"] is None or stats["value_error_median"] > targets.value_median:
        missing.append(f"value error median {_fmt(stats['value_error_median'])} > {targets.value_median} sigma_obs")
    if stats["value_error_p95"] is None or stats["value_error_p95"] > targets.value_p95:
        missing.append(f"value error p95 {_fmt(stats['value_error_p95'])} > {targets.value_p95} sigma_obs")
    within = float(np.mean(np.abs(np.asarray(dlogl)) <= targets.dlogl)) if np.size(dlogl) else 0.0
    if within < targets.dlogl_fraction:
        missing.append(
            f"|Delta ln L| <= {targets.dlogl} for {100 * within:.0f}% of the points (target {100 * targets.dlogl_fraction:.0f}%)"
        )
    jac = stats["jacobian_error_median"]
    if jac is not None and jac > targets.jacobian_median:
        missing.append(f"Jacobian error median {100 * jac:.1f}% > {100 * targets.jacobian_median:.0f}%")
    if change is None:
        missing.append("no previous wave to measure the posterior's move against")
    elif change["max_abs_shift"] >= targets.shift:
        missing.append(f"posterior moved {change['max_abs_shift']:.2f} sigma (target < {targets.shift})")
    return missing


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# ------------------------------------------------------------------------------------------------
# Choosing the points
# ------------------------------------------------------------------------------------------------
def _full(fixed: np.ndarray, free_index: Sequence[int], free_values: np.ndarray) -> np.ndarray:
    full = np.broadcast_to(np.asarray(fixed, np.float64), (free_values.shape[0], fixed.shape[0])).copy()
    full[:, list(free_index)] = free_values
    return full


def _greedy_maximin(candidates: np.ndarray, dmin: np.ndarray, pool: np.ndarray, n: int) -> list[int]:
    """Pick ``n`` of the ``pool`` rows of ``candidates`` (unit cube) one by one, each the one
    farthest from the points already there (``dmin``: each candidate's distance to them, updated
    in place)."""
    chosen: list[int] = []
    available = np.zeros(candidates.shape[0], bool)
    available[pool] = True
    for _ in range(min(n, int(available.sum()))):
        j = int(np.argmax(np.where(available, dmin, -np.inf)))
        chosen.append(j)
        available[j] = False
        dmin[:] = np.minimum(dmin, np.linalg.norm(candidates - candidates[j], axis=1))
    return chosen


def propose_points(
    samples: np.ndarray,
    *,
    prior_full,
    free_index: Sequence[int],
    fixed: np.ndarray,
    n_points: int,
    existing: np.ndarray,
    seed: int,
    broaden: float = 1.5,
    spread_fraction: float = 0.25,
    candidates_per_point: int = 8,
    spread: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, dict]:
    """New design points (n_points, 8) from posterior ``samples`` (n, n_free) of the free
    parameters (the others at ``fixed``, (8,)); see the module docstring, step 2.

    ``existing`` (N, 8): points already in the store (the maximin distances count them);
    ``spread(theta (m, 8)) -> (m,)``: the emulator's error at candidates (e.g. RMS of error /
    sigma_obs), None to skip the spread-chosen points.  Returns the points and a JSON-ready
    description of the proposal."""
    from scipy.spatial import cKDTree

    samples = np.atleast_2d(np.asarray(samples, np.float64))
    free_index = list(free_index)
    fixed = np.asarray(fixed, np.float64)
    rng = np.random.default_rng(seed)
    n_candidates = max(int(candidates_per_point) * int(n_points), int(n_points))
    d = samples.shape[1]
    cov = np.atleast_2d(np.cov(samples, rowvar=False)) if samples.shape[0] > 1 else np.eye(d) * 1e-4
    low = np.asarray(prior_full.low, np.float64)[free_index]
    high = np.asarray(prior_full.high, np.float64)[free_index]
    kick = (broaden**2 - 1.0) * cov + 1e-12 * np.diag((high - low) ** 2)
    chol = np.linalg.cholesky(kick)
    kept = np.zeros((0, d))
    for _ in range(100):  # rejection: candidates outside the prior box are redrawn
        draw = (
            samples[rng.integers(samples.shape[0], size=n_candidates)] + rng.standard_normal((n_candidates, d)) @ chol.T
        )
        inside = np.all((draw >= low) & (draw <= high), axis=1)
        kept = np.concatenate([kept, draw[inside]])[:n_candidates]
        if kept.shape[0] >= n_candidates:
            break
    if kept.shape[0] < n_candidates:  # a posterior pressed against the box: clip the rest
        draw = np.clip(samples[rng.integers(samples.shape[0], size=n_candidates - kept.shape[0])], low, high)
        kept = np.concatenate([kept, draw])
    full = _full(fixed, free_index, kept)
    unit = np.asarray(prior_full.to_unit(full), np.float64)
    existing = np.atleast_2d(np.asarray(existing, np.float64)).reshape(-1, full.shape[1])
    if existing.shape[0]:
        dmin = cKDTree(np.asarray(prior_full.to_unit(existing), np.float64)).query(unit)[0]
    else:
        dmin = np.full(unit.shape[0], np.inf)
    n_spread = int(round(spread_fraction * n_points)) if spread is not None else 0
    chosen: list[int] = []
    spread_values = None
    if n_spread:
        spread_values = np.asarray(spread(full), np.float64).reshape(-1)
        order = np.argsort(-spread_values, kind="stable")
        pool = order[: max(n_spread, n_candidates // 4)]
        chosen += _greedy_maximin(unit, dmin, pool, n_spread)
    chosen += _greedy_maximin(unit, dmin, np.arange(unit.shape[0]), n_points - len(chosen))
    theta = full[chosen]
    info = {
        "kind": "broadened posterior + ensemble spread, greedy maximin",
        "broaden": float(broaden),
        "n_candidates": int(n_candidates),
        "n_spread": int(n_spread),
        "spread_fraction": float(spread_fraction),
        "seed": int(seed),
        "posterior_mean": samples.mean(axis=0).tolist(),
        "posterior_std": samples.std(axis=0, ddof=1).tolist() if samples.shape[0] > 1 else None,
        "spread_of_chosen_median": None if spread_values is None else float(np.median(spread_values[chosen])),
        "spread_of_candidates_median": None if spread_values is None else float(np.median(spread_values)),
    }
    return theta, info


def refined_region_entry(samples: np.ndarray, free_names, free_index, fixed, broaden: float, wave: int) -> dict:
    """The region a wave refined: the ellipsoid of the broadened posterior of the free
    parameters (mean, broaden^2 x covariance, radius sqrt(chi^2_0.99(n_free))), the others at
    ``fixed``.  JSON-ready; recorded in the emulator (``SobolevEmulator.refined_region``)."""
    from scipy.stats import chi2

    samples = np.atleast_2d(np.asarray(samples, np.float64))
    cov = np.atleast_2d(np.cov(samples, rowvar=False)) * broaden**2
    return {
        "wave": int(wave),
        "free": list(free_names),
        "free_index": [int(i) for i in free_index],
        "fixed": np.asarray(fixed, np.float64).tolist(),
        "mean": samples.mean(axis=0).tolist(),
        "covariance": cov.tolist(),
        "radius": float(np.sqrt(chi2.ppf(0.99, samples.shape[1]))),
    }


def training_options(emu) -> dict:
    """``train_emulator`` keyword arguments that retrain ``emu`` as it was trained (settings
    recorded in its artifact, architecture, PCA components), except the split's ``n_train``."""
    settings = dict(emu.training.get("settings", {}))
    keep = (
        "gradient_weight",
        "huber_delta",
        "value_huber_delta",
        "summary_weighting",
        "ensemble",
        "epochs",
        "patience",
        "batch_size",
        "learning_rate",
        "final_learning_rate",
        "weight_decay",
        "warmup_epochs",
        "split",
        "seed",
    )
    out = {k: settings[k] for k in keep if k in settings}
    if "split" in out:
        out["split"] = tuple(out["split"])
    out["hidden"] = tuple(emu.architecture.hidden)
    out["activation"] = emu.architecture.activation
    n_summary = len(emu.summary_names)
    if emu.architecture.n_out < n_summary:
        out["pca_components"] = int(emu.architecture.n_out)
    return out


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RefineResult:
    """What :func:`refine` did: the wave records (scores, posterior, points, seconds), why it
    stopped (``"targets met"``, ``"waves"``), what is still missing, the refined emulator and
    its path, and the report's path."""

    waves: list[dict]
    stopped: str
    missing: list[str]
    emulator: Any
    emulator_path: Path
    report_path: Path

    @property
    def converged(self) -> bool:
        return self.stopped == "targets met"

    def summary_line(self) -> str:
        if not self.waves:
            return "no wave run"
        s = self.waves[-1]["scores"]
        head = (
            f"{len(self.waves)} wave(s), {sum(w['n_points'] for w in self.waves)} new points; last wave held-out: "
            f"value error median {_fmt(s['value_error_median'])} / p95 {_fmt(s['value_error_p95'])} sigma_obs, "
            f"|dlnL| median {_fmt(s['dlogl_abs_median'])} / p95 {_fmt(s['dlogl_abs_p95'])}, Jacobian median "
            f"{_fmt(s['jacobian_error_median'])}"
        )
        change = self.waves[-1].get("posterior_change")
        if change is not None:
            head += f", posterior moved {change['max_abs_shift']:.2f} sigma"
        return head + (
            "; targets met"
            if self.converged
            else f"; stopped after {len(self.waves)} wave(s): " + "; ".join(self.missing)
        )


def _atomic_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(json_ready(data), indent=1))
    os.replace(tmp, path)


def _wave_seed(seed: int, wave: int, what: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(wave), int(what)]).generate_state(1)[0] % (2**31))


def refine(
    store: str | os.PathLike,
    emulator,
    out_dir: str | os.PathLike,
    observations,
    *,
    free: Sequence[str] | None = None,
    fixed: np.ndarray | None = None,
    settings: RefineSettings | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> RefineResult:
    """Refine ``emulator`` (a ``SobolevEmulator`` or its path) where the posterior of
    ``observations`` lives, appending exact points to ``store``; see the module docstring.

    ``free``: the free parameters (default all 8); ``fixed`` (8,): the others' values (default
    the prior centre).  Returns a :class:`RefineResult`; the refined emulator is also saved as
    ``out_dir/emulator``."""
    import training_sets
    from emulator import SobolevEmulator, train_emulator
    from training_sets.generate import model_from_attrs
    from training_sets.store import store_identity

    from .forward import EmulatorForward
    from .hmc import CheckpointMismatch, HmcResult, progress_bar, run_hmc
    from .optimize import find_map

    settings = settings or RefineSettings()
    out = Path(out_dir)
    store = Path(store)
    ts = training_sets.open_training_set(store)
    emu0 = SobolevEmulator.load(emulator) if isinstance(emulator, (str, os.PathLike)) else emulator
    emu0.check_observations(observations)
    if emu0.observations.fingerprint() != ts.observations.fingerprint():
        emu0.check_observations(ts.observations)
    fm0 = EmulatorForward(emu0, observations, settings.include_emulator_error, free=free, fixed=fixed)
    free_names, free_index, fixed_full = fm0.free_names, fm0.free_index, np.asarray(fm0.fixed)
    train_kwargs = dict(training_options(emu0), **settings.train)
    identity = {
        # ``waves`` is a limit, not part of what a wave computes: a rerun with more continues
        "settings": {k: v for k, v in settings.to_dict().items() if k != "waves"},
        "train": train_kwargs,
        "free": list(free_names),
        "fixed": fixed_full.tolist(),
        "observations": observations.fingerprint(),
        "store_identity": {k: ts.attrs.get(k) for k in ("halos", "solver", "model_config", "prior")},
        "emulator": emu0.store_fingerprint,
    }
    key = hashlib.sha256(json.dumps(json_ready(identity), sort_keys=True).encode()).hexdigest()[:16]
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / REFINE_STATE
    state = {"key": key, "identity": identity, "waves": [], "stopped": None, "missing": []}
    if state_path.exists():
        saved = json.loads(state_path.read_text())
        if saved.get("key") != key:
            raise ValueError(
                f"{out} holds a refinement with other settings, store, emulator or observations "
                f"({state_path}); choose another --out"
            )
        state = saved
        if state["stopped"] == "waves" and settings.waves > len(state["waves"]):
            state["stopped"], state["missing"] = None, []  # more waves allowed now: continue
        elif state["stopped"] is None and state["waves"] and len(state["waves"]) >= settings.waves:
            state["stopped"], state["missing"] = "waves", state["waves"][-1]["missing"]
    model = model_from_attrs(ts.attrs)
    halos = ts.halos()
    expected = store_identity(model, halos, ts.observations, ts.chunk, bool(ts.attrs.get("save_states", False)))

    current = emu0 if not state["waves"] else SobolevEmulator.load(out / f"wave_{len(state['waves'])}" / "emulator")
    if state["stopped"] is not None:
        log(f"[refine] finished in an earlier run ({state['stopped']}): nothing to do")
    for wave in range(len(state["waves"]) + 1, settings.waves + 1):
        if state["stopped"] is not None:
            break
        wave_dir = out / f"wave_{wave}"
        wave_dir.mkdir(exist_ok=True)
        record: dict[str, Any] = {"wave": wave, "seconds": {}}
        fm = EmulatorForward(current, observations, settings.include_emulator_error, free=free_names, fixed=fixed_full)

        # 1. the posterior under the current emulator
        t0 = time.perf_counter()
        post_path = wave_dir / "posterior.npz"
        if post_path.exists():
            post = HmcResult.load(post_path)
        else:
            log(f"[refine] wave {wave}/{settings.waves}: posterior under the current emulator ...")
            fit = find_map(fm, n_starts=settings.map_starts, seed=_wave_seed(settings.seed, wave, 0))
            starts = [m.theta for m in fit.modes if m.loss - fit.best_loss < 10.0] or [fit.best]
            init = np.asarray([starts[c % len(starts)] for c in range(settings.chains)])
            options = dict(
                num_chains=settings.chains,
                num_warmup=settings.warmup,
                num_samples=settings.draws,
                seed=_wave_seed(settings.seed, wave, 1),
                init=init,
                progress=progress_bar(f"refine wave {wave}: HMC", settings.warmup + settings.draws)
                if progress
                else None,
            )
            checkpoint = wave_dir / "hmc.ckpt.npz"
            try:
                post = run_hmc(fm, checkpoint=checkpoint, **options)
            except CheckpointMismatch as err:
                log(f"[refine] {err}: starting this HMC afresh")
                checkpoint.unlink()
                post = run_hmc(fm, checkpoint=checkpoint, **options)
            post.save(post_path)
        record["posterior"] = {"names": list(post.names), "mean": post.mean.tolist(), "std": post.std.tolist()}
        record["hmc"] = {
            "chains": int(post.samples.shape[0]),
            "draws": int(post.samples.shape[1]),
            "ess": np.asarray(post.ess).tolist(),
            "r_hat": np.asarray(post.r_hat).tolist(),
            "n_divergent": int(post.n_divergent),
        }
        previous = state["waves"][-1]["posterior"] if state["waves"] else None
        record["posterior_change"] = posterior_change(previous, record["posterior"])
        record["seconds"]["posterior"] = round(time.perf_counter() - t0, 1)

        # 2. choose the points (deterministic: recomputed identically on a resume)
        t0 = time.perf_counter()
        ts = training_sets.open_training_set(store)
        sigma = np.asarray(current.observations.sigma, np.float64)

        def spread(theta: np.ndarray, emu=current) -> np.ndarray:
            _, error = emu.predict(theta)
            return np.sqrt(np.mean((np.asarray(error) / sigma) ** 2, axis=-1))

        existing_rows = [
            b for b in ts.attrs["design"]["batches"] if not (b.get("kind") == "refine" and b.get("wave") == wave)
        ]
        n_existing = sum(int(b["n_points"]) for b in existing_rows)
        theta_new, proposal = propose_points(
            post.flat,
            prior_full=current.prior,
            free_index=free_index,
            fixed=fixed_full,
            n_points=settings.points_per_wave,
            existing=np.asarray(ts.theta[:n_existing]),
            seed=_wave_seed(settings.seed, wave, 2),
            broaden=settings.broaden,
            spread_fraction=settings.spread_fraction,
            candidates_per_point=settings.candidates_per_point,
            spread=spread,
        )
        write_json(wave_dir / "proposal.json", dict(proposal, theta=theta_new.tolist()))
        record["proposal"] = proposal
        record["seconds"]["choose"] = round(time.perf_counter() - t0, 1)

        # 3. append and evaluate exactly (resumable, bit-identical after a kill)
        batch = {"kind": "refine", "wave": wave, "seed": proposal["seed"], "free": list(free_names)}
        if not settings.jacobian:
            batch["jacobian"] = False  # value-only points
        start, stop = training_sets.append_design(store, theta_new, batch, expected=expected)
        record.update(rows=[int(start), int(stop)], n_points=int(stop - start))
        log(f"[refine] wave {wave}: exact summaries + Jacobians at {stop - start} new points (rows {start}-{stop - 1})")
        report = training_sets.generate(
            store,
            model=model,
            halos=halos,
            observations=ts.observations,
            chunk=ts.chunk,
            save_states=bool(ts.attrs.get("save_states", False)),
            resume=True,
            progress=progress,
        )
        record["seconds"]["exact"] = round(report.seconds, 1)
        record["exact_failed_points"] = int(report.failed_points)

        # 4. score the current emulator on the new points, before retraining
        ts = training_sets.open_training_set(store)
        rows = np.arange(start, stop)
        valid = np.asarray(ts.valid_mask())[rows]
        loaded = ts.load(rows[valid])
        scored = score_points(current, loaded, observations, free_index=free_index, posterior=post.flat)
        np.savez(
            wave_dir / "scores.npz",
            **{k: v for k, v in scored.items() if k != "stats"},
            theta=loaded["theta"],
        )
        record["scores"] = scored["stats"]
        record["n_scored"] = int(valid.sum())
        missing = missing_targets(scored["stats"], record["posterior_change"], scored["dlogl"], settings.targets)
        record["missing"] = missing
        log(
            f"[refine] wave {wave}: held-out value error median {_fmt(scored['stats']['value_error_median'])} / p95 "
            f"{_fmt(scored['stats']['value_error_p95'])} sigma_obs, |dlnL| p95 {_fmt(scored['stats']['dlogl_abs_p95'])}, "
            f"Jacobian median {_fmt(scored['stats']['jacobian_error_median'])}"
            + (
                f"; posterior moved {record['posterior_change']['max_abs_shift']:.2f} sigma"
                if record["posterior_change"]
                else ""
            )
        )

        # 5. retrain on every point
        t0 = time.perf_counter()
        emu_path = wave_dir / "emulator"
        if emu_path.exists():
            new = SobolevEmulator.load(emu_path)
            if new.store_fingerprint != ts.fingerprint:
                new = None
        else:
            new = None
        if new is None:
            log(f"[refine] wave {wave}: retraining on {ts.n_points} points ...")
            new = train_emulator(ts, progress=progress, **train_kwargs)
            regions = list(getattr(current, "refined_region", None) or [])
            regions.append(refined_region_entry(post.flat, free_names, free_index, fixed_full, settings.broaden, wave))
            new.refined_region = regions
            new.save(emu_path)
        record["seconds"]["train"] = round(time.perf_counter() - t0, 1)
        current = new
        state["waves"].append(record)
        if not missing:
            state["stopped"], state["missing"] = "targets met", []
        elif wave == settings.waves:
            state["stopped"], state["missing"] = "waves", missing
        _atomic_json(state_path, state)
        current.save(out / "emulator")

    if state["waves"] and not (out / "emulator").exists():
        current.save(out / "emulator")
    report_path = write_refine_report(out, state, store)
    return RefineResult(
        waves=state["waves"],
        stopped=state["stopped"] or "not run",
        missing=state["missing"],
        emulator=current,
        emulator_path=out / "emulator",
        report_path=report_path,
    )


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def write_refine_report(out: Path, state: dict, store: Path) -> Path:
    """``refine_report.md`` with the per-wave table and figures (error per wave, where the new
    points went); returns its path."""
    waves = state["waves"]
    figures = _figures(out, state, store) if waves else []
    lines = [
        "# sapphire refine report",
        "",
        f"Store `{store}`; free parameters {', '.join(state['identity']['free'])}; "
        f"{len(waves)} wave(s) run; stopped: {state['stopped'] or 'not yet'}.",
        "",
        "Scores are held-out: each wave's new points are scored with the emulator that chose them, before it is "
        "retrained on them. Value error |emu - exact| / sigma_obs over every (point, summary); Jacobian relative "
        "error (Frobenius, columns in prior widths, rows in sigma_obs); |Delta ln L| between the emulator's "
        "likelihood (its error in the variance) and the exact one.",
        "",
        "| wave | points | value error median / p95 | worst summary median / p95 | Jacobian median (free) | "
        "\\|dlnL\\| median / p95 | shift from the dlnL trend [sd] | inside 2 err | posterior shift (max, sigma) | "
        "width ratios | exact s | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for w in waves:
        s, c = w["scores"], w.get("posterior_change")
        shift_text = "-" if c is None else f"{c['max_abs_shift']:.3f}"
        width_text = "-" if c is None else ", ".join(f"{r:.2f}" for r in c["width_ratio"])
        tilt_text = ", ".join(f"{t:+.2f}" for t in s.get("dlogl_tilt_shift") or []) or "-"
        lines.append(
            f"| {w['wave']} | {w['n_points']} | {_fmt(s['value_error_median'])} / {_fmt(s['value_error_p95'])} | "
            f"{_fmt(s['worst_summary_median'])} / {_fmt(s['worst_summary_p95'])} | "
            f"{_fmt(s['jacobian_error_median'])} ({_fmt(s['jacobian_error_median_free'])}) | "
            f"{_fmt(s['dlogl_abs_median'])} / {_fmt(s['dlogl_abs_p95'])} | {tilt_text} | {100 * s['inside_2_error']:.0f}% | "
            f"{shift_text} | {width_text} | "
            f"{w['seconds'].get('exact', 0):.0f} | {w['seconds'].get('train', 0):.0f} |"
        )
    if waves:
        lines += ["", "Posterior (mean +- sd) per wave:", ""]
        names = waves[0]["posterior"]["names"]
        lines += ["| wave | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
        for w in waves:
            p = w["posterior"]
            lines.append(
                f"| {w['wave']} | " + " | ".join(f"{m:.3f} +- {s:.3f}" for m, s in zip(p["mean"], p["std"])) + " |"
            )
    if state["missing"]:
        lines += ["", "Still missing after the last wave: " + "; ".join(state["missing"]) + "."]
    lines += [""] + [f"![{Path(p).stem}]({Path(p).name})" for p in figures]
    path = out / "refine_report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _figures(out: Path, state: dict, store: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import training_sets

    waves = state["waves"]
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [w["wave"] for w in waves]
    for key, label in (
        ("value_error_median", "value error median [sigma_obs]"),
        ("value_error_p95", "value error p95 [sigma_obs]"),
        ("jacobian_error_median", "Jacobian error median"),
        ("dlogl_abs_p95", "|dlnL| p95"),
    ):
        ax.plot(x, [w["scores"][key] if w["scores"][key] is not None else np.nan for w in waves], "o-", label=label)
    targets = state["identity"]["settings"]["targets"]
    ax.axhline(targets["value_median"], color="C0", ls=":", lw=0.8)
    ax.axhline(targets["value_p95"], color="C1", ls=":", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("wave")
    ax.set_ylabel("held-out error (before retraining)")
    ax.set_xticks(x)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "refine_errors.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    ts = training_sets.open_training_set(store)
    theta = np.asarray(ts.theta)
    names = list(ts.prior.names)
    free = state["identity"]["free"]
    pair = [names.index(n) for n in (free[:2] if len(free) >= 2 else [free[0], names[(names.index(free[0]) + 1) % 8]])]
    fig, ax = plt.subplots(figsize=(5, 5))
    refine_rows = np.zeros(theta.shape[0], bool)
    for w in waves:
        refine_rows[w["rows"][0] : w["rows"][1]] = True
    ax.scatter(theta[~refine_rows, pair[0]], theta[~refine_rows, pair[1]], s=4, c="0.7", label="earlier design")
    for k, w in enumerate(waves):
        r = slice(*w["rows"])
        ax.scatter(theta[r, pair[0]], theta[r, pair[1]], s=8, color=f"C{k}", label=f"wave {w['wave']}")
        posterior = out / f"wave_{w['wave']}" / "posterior.npz"
        if posterior.exists() and len(free) >= 2:  # the posterior each wave sampled: its 2-sigma ellipse
            from .hmc import HmcResult

            draws = HmcResult.load(posterior).flat[:, :2]
            mean, cov = draws.mean(axis=0), np.cov(draws, rowvar=False)
            vals, vecs = np.linalg.eigh(cov)
            angle = np.linspace(0, 2 * np.pi, 100)
            ring = mean + 2.0 * (vecs @ (np.sqrt(np.maximum(vals, 0))[:, None] * [np.cos(angle), np.sin(angle)])).T
            ax.plot(ring[:, 0], ring[:, 1], color=f"C{k}", lw=1.2)
    ax.set_xlabel(names[pair[0]])
    ax.set_ylabel(names[pair[1]])
    ax.set_xlim(ts.prior.low[pair[0]], ts.prior.high[pair[0]])
    ax.set_ylim(ts.prior.low[pair[1]], ts.prior.high[pair[1]])
    ax.legend(fontsize=7)
    ax.set_title("new points and each wave's posterior (2 sigma)")
    fig.tight_layout()
    paths.append(out / "refine_points.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
