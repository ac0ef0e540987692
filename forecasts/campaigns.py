"""Forecast campaigns: mock parameter recovery and the error-scaling forecast.

Forward factories
-----------------
A campaign builds many forward models that differ in data, relations or error scale; it takes a
*forward factory* ``factory(obs, relations, sigma_scale) -> ForwardModel`` (``obs`` None: the
factory's default observations).  :func:`exact_factory` and :func:`emulator_factory` make them;
the free parameters and the fixed values of the others are the factory's.

``mock_recovery``
    random truths from the prior (a seeded Latin hypercube of the free box, kept ``truth_margin``
    away from its faces), mock data from the EXACT model at each truth (the summary means;
    optionally plus Gaussian noise of the observational errors), then for each combination of
    relations: MAP from several starts, Laplace errors at the MAP, normalised bias
    (MAP - truth) / sigma, failures (MAP not converged, Hessian not positive definite, or a
    |normalised bias| above ``failure_sigma``) and condition numbers.
``error_scaling_forecast``
    the marginal errors per parameter from Fisher (Laplace and Gauss-Newton) and optionally HMC
    with the observational errors scaled by 1, 1/2, 1/10.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

import sapphire
from sapphire.observations import RELATION_NAMES, Observations, Relation
from sapphire.prior import latin_hypercube

from .fisher import gauss_newton_fisher, laplace
from .forward import EmulatorForward, ExactForward, ForwardModel, resolve_fixed, resolve_free
from .hmc import run_hmc
from .optimize import MapOptions, find_map

__all__ = [
    "ALL_RELATION_SETS",
    "ForwardFactory",
    "exact_factory",
    "emulator_factory",
    "mock_observations",
    "RecoveryReport",
    "mock_recovery",
    "ErrorScalingReport",
    "error_scaling_forecast",
]

#: The 7 non-empty combinations of the three relations.
ALL_RELATION_SETS: tuple[tuple[str, ...], ...] = tuple(
    combo for r in range(1, 4) for combo in itertools.combinations(RELATION_NAMES, r)
)

ForwardFactory = Callable[..., ForwardModel]


def exact_factory(
    model: sapphire.Model, halos: sapphire.HaloPopulation, obs: Observations | None = None, *, free=None, fixed=None
) -> ForwardFactory:
    """``factory(obs=None, relations=None, sigma_scale=1.0) -> ExactForward(model, halos, ...)``."""
    default = Observations.default() if obs is None else obs

    def factory(obs: Observations | None = None, relations=None, sigma_scale=1.0) -> ForwardModel:
        return ExactForward(
            model,
            halos,
            default if obs is None else obs,
            free=free,
            fixed=fixed,
            relations=relations,
            sigma_scale=sigma_scale,
        )

    return factory


def emulator_factory(
    emu, obs: Observations | None = None, *, include_emulator_error: bool = True, free=None, fixed=None
) -> ForwardFactory:
    """``factory(obs=None, relations=None, sigma_scale=1.0) -> EmulatorForward(emu, ...)``."""

    default = obs

    def factory(obs: Observations | None = None, relations=None, sigma_scale=1.0) -> ForwardModel:
        chosen = default if obs is None else obs
        return EmulatorForward(
            emu, chosen, include_emulator_error, free=free, fixed=fixed, relations=relations, sigma_scale=sigma_scale
        )

    return factory


def mock_observations(
    model: sapphire.Model,
    halos: sapphire.HaloPopulation,
    obs: Observations | None,
    theta,
    *,
    noise_seed: int | None = None,
) -> Observations:
    """Observations with y replaced by the exact model's summary means at ``theta`` (8,) (plus
    N(0, sigma) noise if ``noise_seed`` is given); x and sigma unchanged.  ``ValueError`` if a
    summary is not finite (a relation left with < 2 solved halos)."""
    obs = Observations.default() if obs is None else obs
    s = model.summaries(theta, halos, obs)
    mean = np.asarray(s.mean, dtype=np.float64)
    if not np.all(np.isfinite(mean)):
        bad = s.names[int(np.flatnonzero(~np.isfinite(mean))[0])]
        raise ValueError(
            f"mock at theta={np.round(theta, 4).tolist()}: summary {bad} is not finite ({s.n_failed} halos failed)"
        )
    if noise_seed is not None:
        mean = mean + np.random.default_rng(noise_seed).normal(0.0, obs.sigma)
    theta_text = ", ".join(f"{v:.4g}" for v in np.asarray(theta))
    relations = []
    for rel in obs.relations:
        sl = obs.slices[rel.name]
        relations.append(
            Relation(
                name=rel.name,
                x=rel.x,
                y=mean[sl],
                sigma=rel.sigma,
                x_label=rel.x_label,
                y_label=rel.y_label,
                source=f"mock: exact model at theta = ({theta_text}), {halos.n_halos} halos ({halos.fingerprint()}), "
                f"{'noise seed ' + str(noise_seed) if noise_seed is not None else 'no noise'}; sigma of: {rel.source}",
                note=rel.note,
                detection_limit=rel.detection_limit,
                bandwidth=rel.bandwidth,
            )
        )
    return Observations(tuple(relations))


def _fin(v):
    return float(v) if v is not None and np.isfinite(v) else None


def _fin_list(a):
    return [_fin(v) for v in np.asarray(a, dtype=float).ravel()]


# ------------------------------------------------------------------------------------------------
class _JsonReport:
    """``to_json`` for report dataclasses that define ``to_dict``."""

    def to_json(self, path=None) -> str:
        """The report as JSON text; also written to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text


@dataclasses.dataclass(frozen=True)
class RecoveryReport(_JsonReport):
    """What :func:`mock_recovery` returns.

    Attributes:
        free: free parameter names; truths: (n_truths, n_free); mock_failures: truths whose mock
            could not be made (non-finite summaries), as (index, message).
        relation_sets: one dict per relation set with arrays over truths: ``map`` (n_truths,
            n_free), ``sigma`` (Laplace marginal errors, NaN if not positive definite),
            ``normalised_bias`` ((map - truth)/sigma), ``converged`` (the best start's),
            ``map_converged_fraction`` and ``map_modes`` (of all starts), ``positive_definite``,
            ``condition_number``, ``failed`` and ``failure_reasons``, plus ``failure_rate``,
            the mean and std of the normalised bias per parameter (over successes), and the
            median condition number.
        settings, wall_time.
    """

    free: tuple[str, ...]
    truths: np.ndarray
    mock_failures: list
    relation_sets: list
    settings: dict
    wall_time: float

    def to_dict(self) -> dict:
        sets = []
        for entry in self.relation_sets:
            sets.append(
                {
                    "relations": list(entry["relations"]),
                    "failure_rate": entry["failure_rate"],
                    "n_failed": int(np.sum(entry["failed"])),
                    "bias_mean": _fin_list(entry["bias_mean"]),
                    "bias_std": _fin_list(entry["bias_std"]),
                    "median_condition_number": _fin(entry["median_condition_number"]),
                    "map": [_fin_list(row) for row in entry["map"]],
                    "sigma": [_fin_list(row) for row in entry["sigma"]],
                    "normalised_bias": [_fin_list(row) for row in entry["normalised_bias"]],
                    "converged": [bool(v) for v in entry["converged"]],
                    "map_converged_fraction": _fin_list(entry["map_converged_fraction"]),
                    "map_modes": [int(v) for v in entry["map_modes"]],
                    "positive_definite": [bool(v) for v in entry["positive_definite"]],
                    "condition_number": _fin_list(entry["condition_number"]),
                    "failure_reasons": entry["failure_reasons"],
                }
            )
        return {
            "free": list(self.free),
            "truths": [list(map(float, t)) for t in self.truths],
            "mock_failures": self.mock_failures,
            "relation_sets": sets,
            "settings": self.settings,
            "wall_time_s": self.wall_time,
        }

    def plot(self, path) -> Path:
        from .plots import recovery_figure

        return recovery_figure(self.to_dict(), path)


def mock_recovery(
    model: sapphire.Model,
    halos: sapphire.HaloPopulation,
    obs: Observations | None = None,
    n_truths: int = 10,
    seed: int = 0,
    *,
    forward_factory: ForwardFactory | None = None,
    relation_sets: Sequence[Sequence[str]] = ALL_RELATION_SETS,
    free=None,
    fixed=None,
    n_starts: int = 4,
    noise: bool = False,
    truth_margin: float = 0.1,
    failure_sigma: float = 3.0,
    map_options: MapOptions | None = None,
    hessian_method: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> RecoveryReport:
    """Mock parameter recovery (module docstring).

    Args:
        model, halos, obs: the exact model and data layout that make the mocks (``obs`` default:
            ``Observations.default()``; its sigma are the mock errors).
        n_truths, seed: truths from a seeded Latin hypercube of the free box shrunk by
            ``truth_margin`` (a fraction of the width) on every side.
        forward_factory: the forward model fitted to the mocks (default: the exact model,
            ``exact_factory(model, halos, free=free, fixed=fixed)``; e.g. ``emulator_factory(emu,
            free=..., fixed=...)``).  Its free parameters and fixed values must match ``free``
            and ``fixed``.
        relation_sets: the combinations fitted (default all 7).
        free, fixed: free parameter names (default all 8) and the values of the others (default
            the prior centre); the truths vary the free ones only.
        n_starts: MAP starts per fit (seeded by ``seed`` and the truth index).
        noise: add N(0, sigma) noise to each mock (seeded by ``seed`` and the truth index).
        failure_sigma: a |normalised bias| above this counts as a failure.
        map_options: ``MapOptions`` of the MAP.
        hessian_method: of ``laplace`` (default: the forward model's).
        progress: called with a line of text after each fit.
    """
    obs = Observations.default() if obs is None else obs
    t0 = time.perf_counter()
    factory = forward_factory or exact_factory(model, halos, obs, free=free, fixed=fixed)
    probe = factory(obs, None, 1.0)
    free_names, free_index, fixed_full = probe.free_names, list(probe.free_index), np.array(probe.fixed)
    if free is not None and resolve_free(free, probe.parameter_names) != probe.free_index:
        wanted = tuple(probe.parameter_names[i] for i in resolve_free(free, probe.parameter_names))
        raise ValueError(f"forward_factory frees {probe.free_names}, but free = {wanted}")
    if fixed is not None:
        wanted = resolve_fixed(fixed, probe.full_prior, probe.free_index)
        held = [i for i in range(len(fixed_full)) if i not in free_index]
        if not np.allclose(wanted[held], fixed_full[held], rtol=0, atol=1e-12):
            names = [probe.parameter_names[i] for i in held]
            raise ValueError(
                f"forward_factory holds {dict(zip(names, fixed_full[held].tolist()))}, but fixed gives {dict(zip(names, wanted[held].tolist()))}"
            )
    if not 0 <= truth_margin < 0.5:
        raise ValueError(f"truth_margin must lie in [0, 0.5); got {truth_margin}")
    unit = latin_hypercube(
        sapphire.Prior(probe.prior.names, (0.0,) * probe.n_free, (1.0,) * probe.n_free), int(n_truths), seed=seed
    )
    truths = probe.prior.from_unit(truth_margin + (1 - 2 * truth_margin) * unit)
    relation_sets = [tuple(r) for r in relation_sets]
    n_free = len(free_names)
    entries = [
        {
            "relations": rels,
            "map": np.full((n_truths, n_free), np.nan),
            "sigma": np.full((n_truths, n_free), np.nan),
            "normalised_bias": np.full((n_truths, n_free), np.nan),
            "converged": np.zeros(n_truths, bool),
            "map_converged_fraction": np.full(n_truths, np.nan),
            "map_modes": np.zeros(n_truths, int),
            "positive_definite": np.zeros(n_truths, bool),
            "condition_number": np.full(n_truths, np.nan),
            "failed": np.ones(n_truths, bool),
            "failure_reasons": [["no mock"] for _ in range(n_truths)],
        }
        for rels in relation_sets
    ]
    mock_failures = []
    for k, truth in enumerate(truths):
        theta8 = fixed_full.copy()
        theta8[free_index] = truth
        try:
            mock = mock_observations(model, halos, obs, theta8, noise_seed=(seed * 100003 + k) if noise else None)
        except ValueError as exc:
            mock_failures.append((k, str(exc)))
            continue
        for entry in entries:
            fm = factory(mock, entry["relations"], 1.0)
            result = find_map(fm, n_starts, seed=seed * 100003 + k, options=map_options)
            best = result.best
            fisher = laplace(fm, best, method=hessian_method)
            reasons = []
            converged = bool(result.converged[result.best_index])
            if not converged:  # best_index prefers converged starts: none of them converged
                reasons.append(
                    f"MAP not converged (0/{len(result.converged)} starts; {result.polish_message[result.best_index] if result.polish_message else 'no polish'})"
                )
            if not fisher.positive_definite:
                reasons.append(fisher.message)
            entry["map"][k] = best
            entry["converged"][k] = converged
            entry["map_converged_fraction"][k] = result.converged_fraction
            entry["map_modes"][k] = len(result.modes)
            entry["positive_definite"][k] = fisher.positive_definite
            entry["condition_number"][k] = fisher.condition_number
            if fisher.sigmas is not None:
                bias = (best - truth) / fisher.sigmas
                entry["sigma"][k] = fisher.sigmas
                entry["normalised_bias"][k] = bias
                if np.any(np.abs(bias) > failure_sigma):
                    worst = int(np.argmax(np.abs(bias)))
                    reasons.append(f"|bias| {abs(bias[worst]):.2f} > {failure_sigma} sigma in {free_names[worst]}")
            entry["failed"][k] = bool(reasons)
            entry["failure_reasons"][k] = reasons
            if progress is not None:
                progress(
                    f"truth {k + 1}/{n_truths} {'+'.join(entry['relations'])}: MAP {np.round(best, 4).tolist()} "
                    f"bias {np.round(entry['normalised_bias'][k], 2).tolist()} {'FAILED: ' + '; '.join(reasons) if reasons else 'ok'}"
                )
    for entry in entries:
        ok = ~entry["failed"]
        entry["failure_rate"] = float(np.mean(entry["failed"])) if n_truths else float("nan")
        good = entry["normalised_bias"][ok]
        entry["bias_mean"] = good.mean(axis=0) if good.size else np.full(n_free, np.nan)
        entry["bias_std"] = good.std(axis=0, ddof=1) if good.shape[0] > 1 else np.full(n_free, np.nan)
        finite = entry["condition_number"][np.isfinite(entry["condition_number"])]
        entry["median_condition_number"] = float(np.median(finite)) if finite.size else float("nan")
    settings = {
        "n_truths": int(n_truths),
        "seed": int(seed),
        "n_starts": int(n_starts),
        "noise": bool(noise),
        "truth_margin": float(truth_margin),
        "failure_sigma": float(failure_sigma),
        "map_options": (map_options or MapOptions())._asdict(),
        "forward": probe.describe(),
        "fixed": dict(zip(probe.parameter_names, map(float, fixed_full))),
        "n_halos": int(halos.n_halos),
    }
    return RecoveryReport(free_names, truths, mock_failures, entries, settings, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ErrorScalingReport(_JsonReport):
    """What :func:`error_scaling_forecast` returns: ``free`` names, ``theta`` and one row per
    scale (``sigma_scale``, ``fisher_sigma`` (Laplace), ``gauss_newton_sigma``, ``hmc_std``,
    ``hmc_mean``, ``hmc_r_hat_max``, ``hmc_divergent``, ``hmc_warmup_divergent``, ``positive_definite``,
    ``condition_number``, ``message``, ``precision_gain`` = sigma(scale 1st) / sigma)."""

    free: tuple[str, ...]
    theta: np.ndarray
    rows: list
    wall_time: float

    def to_dict(self) -> dict:
        return {
            "free": list(self.free),
            "theta": self.theta.tolist(),
            "scales": self.rows,
            "wall_time_s": self.wall_time,
        }

    def plot(self, path) -> Path:
        from .plots import error_scaling_figure

        return error_scaling_figure(self.to_dict(), path)


def error_scaling_forecast(
    forward_factory: ForwardFactory,
    theta=None,
    scales: Sequence[float] = (1.0, 0.5, 0.1),
    *,
    obs: Observations | None = None,
    relations=None,
    with_hmc: bool = False,
    hmc_options: dict | None = None,
    n_starts: int = 4,
    seed: int = 0,
    hessian_method: str | None = None,
) -> ErrorScalingReport:
    """Precision per parameter as the observational errors shrink.

    For each scale s: ``fm = forward_factory(obs, relations, s)``; Laplace and Gauss-Newton
    Fisher errors at ``theta`` (free parameters; for a noise-free mock made at theta this is the
    MAP) or, if ``theta`` is None, at each scale's MAP (``n_starts`` starts); with ``with_hmc``,
    NUTS (``run_hmc(fm, **hmc_options)``) posterior standard deviations too.
    """
    t0 = time.perf_counter()
    rows = []
    first_sigma = None
    free_names, theta_out = None, None
    for s in scales:
        fm = forward_factory(obs, relations, float(s))
        free_names = fm.free_names
        point = np.asarray(fm.check_theta(theta)) if theta is not None else find_map(fm, n_starts, seed=seed).best
        theta_out = point
        fisher = laplace(fm, point, method=hessian_method)
        gn = gauss_newton_fisher(fm, point)
        row = {
            "sigma_scale": float(s),
            "theta": point.tolist(),
            "fisher_sigma": None if fisher.sigmas is None else fisher.sigmas.tolist(),
            "gauss_newton_sigma": None if gn.sigmas is None else gn.sigmas.tolist(),
            "positive_definite": fisher.positive_definite,
            "condition_number": _fin(fisher.condition_number),
            "message": fisher.message,
        }
        if with_hmc:
            # chains start at the point (the MAP, or the mock's truth): no warmup spent finding the
            # posterior from random starts across the box (``hmc_options["init"]`` overrides)
            result = run_hmc(fm, **({"init": point} | (hmc_options or {})))
            if result.n_divergent:
                warnings.warn(
                    f"error_scaling_forecast: HMC at sigma scale {s:g} had {result.n_divergent} divergent "
                    f"transitions after warmup ({result.warmup_divergent} during warmup)",
                    RuntimeWarning,
                    stacklevel=2,
                )
            row.update(
                {
                    "hmc_std": result.std.tolist(),
                    "hmc_mean": result.mean.tolist(),
                    "hmc_r_hat_max": _fin(np.nanmax(result.r_hat)),
                    "hmc_divergent": result.n_divergent,
                    "hmc_warmup_divergent": result.warmup_divergent,
                    "hmc_seconds": result.times.get("total_this_call"),
                }
            )
        if first_sigma is None and fisher.sigmas is not None:
            first_sigma = fisher.sigmas
        row["precision_gain"] = (
            None if (fisher.sigmas is None or first_sigma is None) else (first_sigma / fisher.sigmas).tolist()
        )
        rows.append(row)
    return ErrorScalingReport(free_names, np.asarray(theta_out), rows, time.perf_counter() - t0)
