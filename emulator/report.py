"""Validation of an emulator on held-out design points: values, Jacobians, Fisher matrices,
spread calibration; learning curves (Sobolev vs values-only vs a Gaussian process).

Definitions (all on the TEST split unless ``test_indices`` says otherwise)
-----------------------------------------------------------------------
* Value error of summary i at test point p: ``|mean_pi - exact_pi| / sigma_obs_i``.  Reported
  per summary: median and 95th percentile over points (acceptance: every median <= 0.1, every
  95th percentile <= 0.3).
* Jacobian relative error (primary), per test point::

      || J~_emu - J~_exact ||_F / || J~_exact ||_F,   J~ = diag(1 / sigma_obs) J diag(prior width)

  i.e. the change of each summary in units of its observational sigma across the full prior
  range of each parameter.  This weighting is the one a Fisher forecast feels (F = J^T C^-1 J),
  makes the norm dimensionless, and the Frobenius norm over the whole matrix does not blow up
  on entries that happen to be near zero (a per-entry relative error does).  Acceptance: median
  over test points <= 5%.  Also reported: the same per summary (row norms).
* Fisher matrices at each test point: ``F = J^T C^-1 J + P``, ``C = diag(sigma_obs^2 +
  stderr^2)`` (stderr: the exact summaries' standard error at that point), ``P = diag(12 /
  width^2)`` the precision of the uniform prior box seen as a Gaussian (keeps directions that
  the data do not constrain finite; both matrices get the same P).  Compared through the
  generalised eigenvalues r_k of (F_emu, F_exact) (all 1 when equal): their spread, the
  Kullback-Leibler divergence KL(N(0, F_emu^-1) || N(0, F_exact^-1)) = 1/2 sum_k (1/r_k - 1 +
  ln r_k), and the Bhattacharyya overlap of the two Gaussian ellipsoids, prod_k r_k^(1/4) /
  sqrt((1 + r_k)/2) (1: identical ellipses).
* Spread calibration: fraction of test errors |mean - exact| inside +-2 ``error`` (calibrated)
  and +-2 raw ensemble spread (target 90-99%).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sapphire.jsonio import json_ready, write_json
from sapphire.likelihood import gauss_newton_fisher_matrix

from .artifact import SobolevEmulator
from .data import as_training_set, exclusion_counts, explicit_split, split_design
from .train import train_emulator

VALUE_MEDIAN_TARGET = 0.1
VALUE_P95_TARGET = 0.3
JACOBIAN_TARGET = 0.05


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------
def fisher_matrices(jacobian, stderr, sigma_obs, prior_width) -> np.ndarray:
    """F = J^T diag(1/(sigma_obs^2 + stderr^2)) J + diag(12/width^2): (n, S, 8) -> (n, 8, 8)
    (``sapphire.likelihood.gauss_newton_fisher_matrix`` with the prior term)."""
    variance = np.asarray(sigma_obs) ** 2 + np.asarray(stderr) ** 2  # (n, S)
    return gauss_newton_fisher_matrix(jacobian, variance, prior_width)


def fisher_comparison(fisher_emu: np.ndarray, fisher_exact: np.ndarray) -> dict[str, np.ndarray]:
    """Per point: generalised eigenvalues r (n, 8) of (F_emu, F_exact), KL divergence and
    Bhattacharyya overlap of the two zero-mean Gaussians with these precisions."""
    ratios = []
    for f_emu, f_exact in zip(fisher_emu, fisher_exact):
        chol = np.linalg.cholesky(f_exact)
        inv = np.linalg.inv(chol)
        ratios.append(np.linalg.eigvalsh(inv @ f_emu @ inv.T))
    r = np.clip(np.asarray(ratios), 1e-300, None)
    kl = 0.5 * np.sum(1.0 / r - 1.0 + np.log(r), axis=1)
    overlap = np.exp(np.sum(0.25 * np.log(r) - 0.5 * np.log(0.5 * (1.0 + r)), axis=1))
    return {"eigenvalue_ratios": r, "kl": kl, "overlap": overlap}


def evaluate_predictions(
    mean, jacobian, rows: Mapping[str, np.ndarray], observations, prior, error=None, raw_error=None
) -> dict[str, Any]:
    """All per-point metrics of predictions (mean (n, S), jacobian (n, S, 8), optional error
    (n, S)) against exact ``rows`` (theta, summaries, summary_stderr, summary_jacobian).
    Returns numpy arrays (see the module docstring for the definitions)."""
    sigma = np.asarray(observations.sigma)
    width = np.asarray(prior.width)
    mean, jacobian = np.asarray(mean), np.asarray(jacobian)
    exact, exact_jac = np.asarray(rows["summaries"]), np.asarray(rows["summary_jacobian"])
    value_error = np.abs(mean - exact) / sigma  # (n, S)
    scale = width[None, None, :] / sigma[None, :, None]
    diff, ref = (jacobian - exact_jac) * scale, exact_jac * scale
    jac_rel = np.linalg.norm(diff, axis=(1, 2)) / np.linalg.norm(ref, axis=(1, 2))
    row_rel = np.linalg.norm(diff, axis=2) / np.maximum(np.linalg.norm(ref, axis=2), 1e-300)
    fisher = fisher_comparison(
        fisher_matrices(jacobian, rows["summary_stderr"], sigma, width),
        fisher_matrices(exact_jac, rows["summary_stderr"], sigma, width),
    )
    out = {"value_error": value_error, "jacobian_rel_error": jac_rel, "jacobian_row_rel_error": row_rel, **fisher}
    abs_err = np.abs(mean - exact)
    if error is not None:
        out["inside_2_error"] = abs_err <= 2.0 * np.asarray(error)
        out["error_over_sigma"] = np.asarray(error) / sigma
    if raw_error is not None:
        out["inside_2_raw_spread"] = abs_err <= 2.0 * np.asarray(raw_error)
    return out


def summarise(metrics: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, Any]:
    """JSON-ready summary of :func:`evaluate_predictions` with the acceptance checks."""
    ve = metrics["value_error"]
    med, p95 = np.median(ve, axis=0), np.percentile(ve, 95, axis=0)
    jac = metrics["jacobian_rel_error"]
    log_r = np.abs(np.log(metrics["eigenvalue_ratios"]))
    out: dict[str, Any] = {
        "n_test": int(ve.shape[0]),
        "value_error_sigma_obs": {
            "per_summary": {n: {"median": float(a), "p95": float(b)} for n, a, b in zip(names, med, p95)},
            "worst_median": float(med.max()),
            "worst_median_summary": names[int(med.argmax())],
            "worst_p95": float(p95.max()),
            "worst_p95_summary": names[int(p95.argmax())],
            "median_all": float(np.median(ve)),
        },
        "jacobian_rel_error": {
            "definition": "per point ||(J_emu - J_exact) W||_F / ||J_exact W||_F, W = diag(1/sigma_obs) . diag(prior width)",
            "median": float(np.median(jac)),
            "p75": float(np.percentile(jac, 75)),
            "p95": float(np.percentile(jac, 95)),
            "per_summary_median": {
                n: float(v) for n, v in zip(names, np.median(metrics["jacobian_row_rel_error"], axis=0))
            },
        },
        "fisher": {
            "definition": "F = J^T diag(1/(sigma_obs^2 + stderr^2)) J + diag(12/width^2); r = generalised eigenvalues of (F_emu, F_exact)",
            "eigenvalue_ratio_median": float(np.median(metrics["eigenvalue_ratios"])),
            "eigenvalue_ratio_p05_p95": [
                float(np.percentile(metrics["eigenvalue_ratios"], 5)),
                float(np.percentile(metrics["eigenvalue_ratios"], 95)),
            ],
            "max_abs_log_ratio_median": float(np.median(log_r.max(axis=1))),
            "kl_median": float(np.median(metrics["kl"])),
            "kl_p95": float(np.percentile(metrics["kl"], 95)),
            "overlap_median": float(np.median(metrics["overlap"])),
            "overlap_p05": float(np.percentile(metrics["overlap"], 5)),
        },
        "acceptance": {
            "value_median_le_0.1_sigma_every_summary": bool(med.max() <= VALUE_MEDIAN_TARGET),
            "value_p95_le_0.3_sigma_every_summary": bool(p95.max() <= VALUE_P95_TARGET),
            "jacobian_median_rel_error_le_5pct": bool(np.median(jac) <= JACOBIAN_TARGET),
            "n_summaries_failing_median": int(np.sum(med > VALUE_MEDIAN_TARGET)),
            "n_summaries_failing_p95": int(np.sum(p95 > VALUE_P95_TARGET)),
        },
    }
    if "inside_2_error" in metrics:
        cov = metrics["inside_2_error"]
        out["calibration"] = {
            "fraction_inside_2_error": float(np.mean(cov)),
            "per_summary": {n: float(v) for n, v in zip(names, np.mean(cov, axis=0))},
            "target": [0.90, 0.99],
            "within_target": bool(0.90 <= np.mean(cov) <= 0.99),
            "median_error_over_sigma_obs": float(np.median(metrics["error_over_sigma"])),
        }
        if "inside_2_raw_spread" in metrics:
            out["calibration"]["fraction_inside_2_raw_spread"] = float(np.mean(metrics["inside_2_raw_spread"]))
    return out


def error_by_parameter_half(theta, metrics, prior) -> dict[str, dict[str, float]]:
    """Where the errors are: for each parameter, the median over test points in the lower and
    upper half of its prior range of the worst-summary value error [sigma_obs] (and its 95th
    percentile) and of the Jacobian relative error."""
    worst = metrics["value_error"].max(axis=1)
    jac = metrics["jacobian_rel_error"]
    unit = prior.to_unit(np.asarray(theta))
    out = {}
    for j, name in enumerate(prior.names):
        lower = unit[:, j] < 0.5
        pick = lambda a, m: float(np.median(a[m])) if m.any() else None
        p95 = lambda a, m: float(np.percentile(a[m], 95)) if m.any() else None
        out[name] = {
            "value_worst_lower": pick(worst, lower),
            "value_worst_upper": pick(worst, ~lower),
            "value_worst_p95_lower": p95(worst, lower),
            "value_worst_p95_upper": p95(worst, ~lower),
            "jacobian_lower": pick(jac, lower),
            "jacobian_upper": pick(jac, ~lower),
        }
    return out


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------
def _test_rows(emu: SobolevEmulator, ts, test_indices) -> tuple[np.ndarray, str]:
    if test_indices is not None:
        idx = np.sort(np.asarray(test_indices, np.int64))
        valid = np.asarray(ts.valid_mask())
        if not np.all(valid[idx]):
            raise ValueError(
                f"test_indices include {int(np.sum(~valid[idx]))} design points that are not valid (failed or non-finite)"
            )
        return idx, "given"
    if ts.fingerprint == emu.store_fingerprint:
        idx = np.sort(np.asarray(emu.training.get("split", {}).get("test", []), np.int64))
        if idx.size == 0:
            raise ValueError("the emulator has no test split (trained with test fraction 0): pass test_indices")
        return idx, "the emulator's held-out test split"
    # An independent test store (the documented use): every valid point is a test point.
    return exclusion_counts(ts)[0], "every valid point of a store the emulator was not trained on"


def check_store_matches(emu: SobolevEmulator, ts) -> None:
    """``ValueError`` unless the store's summaries and prior are the emulator's."""
    emu.check_observations(ts.observations)
    if tuple(ts.summary_names) != tuple(emu.summary_names):
        raise ValueError(
            f"store summaries {len(ts.summary_names)} ({ts.summary_names[:3]}...) differ from the emulator's "
            f"{len(emu.summary_names)} ({emu.summary_names[:3]}...)"
        )
    if ts.prior.to_dict() != emu.prior.to_dict():
        raise ValueError(f"store prior {ts.prior.to_dict()} differs from the emulator's {emu.prior.to_dict()}")


def emulator_report(
    emu: SobolevEmulator | str | os.PathLike,
    source,
    out_dir: str | os.PathLike,
    test_indices=None,
    *,
    figures: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Validate ``emu`` (an emulator or an artifact path) against exact store rows and write
    ``out_dir/emulator_report.json`` and figures (``value_error.png``, ``jacobian_error.png``,
    ``fisher.png``, ``calibration.png``, ``error_map.png``, ``training_history.png``).

    Test points: ``test_indices`` if given; else the emulator's own test split when ``source``
    is its training store (same fingerprint); else every valid point of ``source``.  Returns the
    report dict (also written as JSON); see the module docstring for the definitions."""
    if not isinstance(emu, SobolevEmulator):
        emu = SobolevEmulator.load(emu)
    ts = as_training_set(source)
    check_store_matches(emu, ts)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = _steps(progress, 3 + (6 if figures else 0))
    idx, test_source = _test_rows(emu, ts, test_indices)
    rows = ts.load(idx)
    steps.update(1)
    mean, error = (np.asarray(a) for a in emu.predict(rows["theta"]))
    _, raw = (np.asarray(a) for a in emu.predict(rows["theta"], calibrated=False))
    jac = np.asarray(emu.jacobian(rows["theta"]))
    steps.update(1)
    metrics = evaluate_predictions(mean, jac, rows, emu.observations, emu.prior, error=error, raw_error=raw)
    report = summarise(metrics, emu.summary_names)
    report["error_by_parameter_half"] = error_by_parameter_half(rows["theta"], metrics, emu.prior)
    _, store_excluded = exclusion_counts(ts)
    report.update(
        {
            "test_points": test_source,
            "store": {"fingerprint": ts.fingerprint, "excluded": store_excluded, "n_points": int(ts.n_points)},
            "emulator": {
                "ensemble_size": emu.ensemble_size,
                "architecture": emu.architecture.to_dict(),
                "gradient_weight": emu.training.get("gradient_weight"),
                "store_fingerprint": emu.store_fingerprint,
                "calibration_factor": emu.calibration_factor,
                "n_train": len(emu.training.get("split", {}).get("train", [])),
                "epochs_run": emu.training.get("epochs_run"),
                "train_seconds": emu.training.get("train_seconds"),
                "excluded_at_training": emu.training.get("excluded"),
                "validation_calibration": emu.training.get("calibration"),
            },
        }
    )
    steps.update(1)
    if figures:
        plot_value_error(report, out_dir / "value_error.png")
        steps.update(1)
        plot_jacobian_error(metrics, emu.summary_names, out_dir / "jacobian_error.png")
        steps.update(1)
        plot_fisher(metrics, out_dir / "fisher.png")
        steps.update(1)
        plot_calibration(mean, error, raw, rows["summaries"], out_dir / "calibration.png")
        steps.update(1)
        plot_error_map(rows["theta"], metrics, emu.prior, out_dir / "error_map.png")
        steps.update(1)
        plot_history(emu.training.get("history"), out_dir / "training_history.png")
        steps.update(1)
        report["figures"] = sorted(p.name for p in out_dir.glob("*.png"))
    steps.close()
    write_json(out_dir / "emulator_report.json", report)
    return report


# ----------------------------------------------------------------------------------------------
# Learning curves (slow: trains one emulator per size and gradient weight, and GPs)
# ----------------------------------------------------------------------------------------------
def learning_curve(
    source,
    sizes: Sequence[int],
    *,
    gradient_weights: Sequence[float] = (1.0, 0.0),
    gp_sizes: Sequence[int] = (50, 100, 200, 400),
    ensemble: int = 1,
    seed: int = 0,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    split_indices: Mapping[str, Sequence[int]] | None = None,
    progress: bool = True,
    out_dir: str | os.PathLike | None = None,
    **train_kwargs,
) -> dict[str, Any]:
    """Test-split accuracy versus training-set size for each ``gradient_weight`` (same
    architecture, same split, same seed: the first n points of the seeded training split) and
    for :class:`~emulator.gp.GaussianProcessBaseline` at ``gp_sizes``.  Writes
    ``learning_curve.json``/``.png`` to ``out_dir`` if given.  Entries per (method, n):
    worst-summary median and 95th-percentile value error [sigma_obs], median value error, median
    Jacobian relative error, median Fisher overlap and KL, train seconds, and the medians split
    by halves of each parameter's prior range (:func:`error_by_parameter_half`).
    ``split_indices``: explicit train/val/test rows instead of the seeded ``split``
    (:func:`emulator.data.explicit_split`)."""
    from .gp import GaussianProcessBaseline

    ts = as_training_set(source)
    valid, _ = exclusion_counts(ts)
    splits = split_design(valid, split, seed) if split_indices is None else explicit_split(split_indices, valid)
    n_max = splits["train"].size
    rows = ts.load(splits["test"])
    names = tuple(ts.summary_names)
    curves: dict[str, list] = {}

    def record(method, n, mean, jac, seconds, extra=None):
        metrics = evaluate_predictions(mean, jac, rows, ts.observations, ts.prior)
        s = summarise(metrics, names)
        entry = {
            "n_train": int(n),
            "train_seconds": float(seconds),
            "value_worst_median": s["value_error_sigma_obs"]["worst_median"],
            "value_worst_p95": s["value_error_sigma_obs"]["worst_p95"],
            "value_median_all": s["value_error_sigma_obs"]["median_all"],
            "jacobian_rel_error_median": s["jacobian_rel_error"]["median"],
            "fisher_overlap_median": s["fisher"]["overlap_median"],
            "fisher_kl_median": s["fisher"]["kl_median"],
            "error_by_parameter_half": error_by_parameter_half(rows["theta"], metrics, ts.prior),
            **(extra or {}),
        }
        curves.setdefault(method, []).append(entry)
        if progress:
            print(
                f"learning curve {method} n={n}: value worst median {entry['value_worst_median']:.3f} sigma, "
                f"jacobian {entry['jacobian_rel_error_median']:.3f}, overlap {entry['fisher_overlap_median']:.3f} "
                f"({seconds:.0f} s)",
                flush=True,
            )

    for n in sorted(int(s) for s in sizes if int(s) <= n_max):
        for lam in gradient_weights:
            t0 = time.perf_counter()
            emu = train_emulator(
                ts,
                gradient_weight=lam,
                ensemble=ensemble,
                seed=seed,
                split=split,
                split_indices=split_indices,
                n_train=n,
                progress=False,
                **train_kwargs,
            )
            mean, _ = emu.predict(rows["theta"])
            record(
                f"sobolev_lambda_{lam:g}",
                n,
                np.asarray(mean),
                np.asarray(emu.jacobian(rows["theta"])),
                time.perf_counter() - t0,
                {"epochs_run": emu.training["epochs_run"]},
            )
    train_rows = None
    for n in sorted(int(s) for s in gp_sizes if int(s) <= n_max):
        if train_rows is None:
            train_rows = ts.load(splits["train"])  # sorted; take the seeded order below
            order = np.searchsorted(np.sort(splits["train"]), splits["train"])
        t0 = time.perf_counter()
        pick = order[:n]
        gp = GaussianProcessBaseline(ts.prior, seed=seed).fit(train_rows["theta"][pick], train_rows["summaries"][pick])
        mean, _ = gp.predict(rows["theta"])
        record("gaussian_process", n, mean, gp.jacobian(rows["theta"]), time.perf_counter() - t0)
    result = {
        "n_test": int(splits["test"].size),
        "n_train_max": int(n_max),
        "ensemble": int(ensemble),
        "seed": int(seed),
        "train_kwargs": json_ready(dict(train_kwargs)),
        "curves": curves,
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "learning_curve.json", result)
        plot_learning_curve(result, out_dir / "learning_curve.png")
    return result


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def plot_value_error(report: Mapping[str, Any], path: Path) -> None:
    plt = _pyplot()
    per = report["value_error_sigma_obs"]["per_summary"]
    names = list(per)
    med = [per[n]["median"] for n in names]
    p95 = [per[n]["p95"] for n in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(8, 0.32 * len(names)), 4.2))
    ax.bar(x - 0.2, med, 0.4, label="median")
    ax.bar(x + 0.2, p95, 0.4, label="95th percentile")
    ax.axhline(VALUE_MEDIAN_TARGET, color="C0", ls="--", lw=1, label="target median 0.1")
    ax.axhline(VALUE_P95_TARGET, color="C1", ls="--", lw=1, label="target p95 0.3")
    ax.set_xticks(x, names, rotation=90, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("|emulator - exact| / sigma_obs")
    ax.set_title(f"value error on {report['n_test']} test points")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_jacobian_error(metrics, names, path: Path) -> None:
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 2]})
    jac = metrics["jacobian_rel_error"]
    a.hist(np.log10(np.clip(jac, 1e-6, None)), bins=30)
    a.axvline(np.log10(JACOBIAN_TARGET), color="k", ls="--", label="5%")
    a.axvline(np.log10(np.median(jac)), color="C3", label=f"median {np.median(jac):.3f}")
    a.set_xlabel("log10 Jacobian relative error (per test point, sigma_obs/prior-width weighted)")
    a.legend(fontsize=8)
    rows = np.median(metrics["jacobian_row_rel_error"], axis=0)
    b.bar(np.arange(len(names)), rows)
    b.axhline(JACOBIAN_TARGET, color="k", ls="--", lw=1)
    b.set_xticks(np.arange(len(names)), names, rotation=90, fontsize=7)
    b.set_ylabel("median row relative error")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_fisher(metrics, path: Path) -> None:
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    r = metrics["eigenvalue_ratios"]
    a.hist(np.log10(r).ravel(), bins=40)
    a.set_xlabel("log10 generalised eigenvalue of (F_emu, F_exact)")
    a.set_title("Fisher eigenvalue ratios (all test points)")
    b.hist(metrics["overlap"], bins=30, range=(min(0.5, float(metrics["overlap"].min())), 1.0))
    b.set_xlabel("Bhattacharyya overlap of the Fisher ellipsoids")
    b.set_title(f"median overlap {np.median(metrics['overlap']):.4f}, median KL {np.median(metrics['kl']):.2e}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_calibration(mean, error, raw, exact, path: Path) -> None:
    plt = _pyplot()
    from math import erf, sqrt

    err = np.abs(np.asarray(mean) - np.asarray(exact))
    k = np.linspace(0, 5, 101)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.plot(k, [np.mean(err <= kk * error) for kk in k], label="calibrated error")
    if np.all(raw > 0):
        ax.plot(k, [np.mean(err <= kk * raw) for kk in k], label="raw ensemble spread")
    ax.plot(k, [erf(kk / sqrt(2)) for kk in k], "k--", label="Gaussian")
    ax.axvline(2, color="gray", lw=0.8)
    ax.set_xlabel("k")
    ax.set_ylabel("fraction of test errors inside +-k error")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_error_map(theta, metrics, prior, path: Path) -> None:
    plt = _pyplot()
    worst = metrics["value_error"].max(axis=1)
    fig, axes = plt.subplots(2, 4, figsize=(14, 6), sharey=True)
    for j, ax in enumerate(axes.ravel()):
        sc = ax.scatter(
            theta[:, j], worst, c=np.log10(np.clip(metrics["jacobian_rel_error"], 1e-4, None)), s=10, cmap="viridis"
        )
        ax.set_xlabel(prior.names[j])
        ax.set_yscale("log")
    for ax in axes[:, 0]:
        ax.set_ylabel("max_i |emu - exact| / sigma_obs")
    fig.colorbar(sc, ax=axes, label="log10 Jacobian relative error")
    fig.suptitle("test errors versus each parameter")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_history(history, path: Path) -> None:
    if not history or not history.get("val_loss"):
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    train, val = np.asarray(history["train_loss"]), np.asarray(history["val_loss"])
    for k in range(val.shape[1]):
        ax.plot(train[:, k], color="C0", alpha=0.5, lw=0.8, label="train" if k == 0 else None)
        ax.plot(val[:, k], color="C1", alpha=0.7, lw=0.8, label="validation" if k == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Sobolev loss (per member)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_learning_curve(result: Mapping[str, Any], path: Path) -> None:
    plt = _pyplot()
    panels = [
        ("value_worst_median", "worst-summary median |err| / sigma_obs", VALUE_MEDIAN_TARGET),
        ("value_worst_p95", "worst-summary p95 |err| / sigma_obs", VALUE_P95_TARGET),
        ("jacobian_rel_error_median", "median Jacobian relative error", JACOBIAN_TARGET),
        ("fisher_overlap_median", "median Fisher-ellipse overlap", None),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    for (key, label, target), ax in zip(panels, axes):
        for method, entries in result["curves"].items():
            n = [e["n_train"] for e in entries]
            ax.plot(n, [e[key] for e in entries], "o-", label=method)
        if target is not None:
            ax.axhline(target, color="k", ls="--", lw=0.8)
        ax.set_xscale("log")
        if key != "fisher_overlap_median":
            ax.set_yscale("log")
        ax.set_xlabel("training design points")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"learning curves on {result['n_test']} test points (ensemble {result['ensemble']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class _NoSteps:
    def update(self, *_):
        pass

    def close(self):
        pass


def _steps(progress: bool, total: int):
    if not progress:
        return _NoSteps()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="emulator report", unit="step", dynamic_ncols=True)
