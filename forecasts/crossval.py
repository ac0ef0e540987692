"""Cross-validation of two posteriors (e.g. emulator HMC against exact-model HMC).

``cross_validate(reference, candidate)`` compares, per free parameter, the shift of the posterior
mean in units of the reference posterior sigma and the ratio of widths (candidate / reference),
and runs a classifier two-sample test: a scikit-learn classifier is trained to tell the two
sample sets apart; its cross-validated ROC AUC is 0.5 when they are indistinguishable.  Optional
Fisher (Laplace) results at the two MAPs are compared too (informational: not in the verdict).

Verdict PASS iff every |shift| < ``max_abs_shift`` (0.2), every width ratio lies in
[1/``max_width_ratio``, ``max_width_ratio``] ([0.8, 1.25]) and AUC < ``max_auc`` (0.6).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .fisher import FisherResult
from .hmc import HmcResult

__all__ = ["Thresholds", "CrossValidationReport", "cross_validate", "classifier_two_sample_auc"]


class Thresholds(NamedTuple):
    """Pass criteria of :func:`cross_validate`."""

    max_abs_shift: float = 0.2
    max_width_ratio: float = 1.25
    max_auc: float = 0.6


def _as_samples(x, names=None) -> tuple[np.ndarray, tuple[str, ...] | None]:
    if isinstance(x, HmcResult):
        return x.flat, x.names
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 3:
        arr = arr.reshape(-1, arr.shape[-1])
    if arr.ndim != 2:
        raise ValueError(f"samples must be an HmcResult or an array (n, d) / (chains, draws, d); got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("samples contain non-finite values")
    return arr, names


def _thin(samples: np.ndarray, n: int) -> np.ndarray:
    """n draws evenly spaced through the (chain-major) sample list: thinning, so that
    neighbouring, correlated MCMC draws rarely land in both a training and a test fold."""
    idx = np.linspace(0, samples.shape[0] - 1, n).round().astype(int)
    return samples[idx]


def classifier_two_sample_auc(
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    seed: int = 0,
    max_points: int = 2000,
    n_folds: int = 5,
    classifier: str = "mlp",
) -> float:
    """Cross-validated ROC AUC of a classifier separating two sample sets (n_a, d), (n_b, d).

    Balanced: min(n_a, n_b, max_points) thinned draws of each; features standardised by the
    reference mean and std; ``StratifiedKFold(n_folds, shuffle, seed)``.  ``classifier``: "mlp"
    (default: ``MLPClassifier`` with two hidden layers of 10 d units, early stopping, as in the
    C2ST literature; ~1-8 s for 2 x 2000 draws) or "hist_gradient_boosting" (run on one thread:
    its OpenMP threads crawled on the shared 2-core machine, 100 s for the same job).
    Returns the mean AUC over folds (0.5: indistinguishable; 1: disjoint).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neural_network import MLPClassifier

    n = min(reference.shape[0], candidate.shape[0], int(max_points))
    if n < 2 * n_folds:
        raise ValueError(f"too few samples for the classifier test: {n} per set (need >= {2 * n_folds})")
    a, b = _thin(reference, n), _thin(candidate, n)
    mu, sd = reference.mean(axis=0), reference.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    X = (np.concatenate([a, b]) - mu) / sd
    y = np.concatenate([np.zeros(n, int), np.ones(n, int)])
    if classifier == "hist_gradient_boosting":
        model = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, random_state=seed)
    elif classifier == "mlp":
        d = X.shape[1]
        model = MLPClassifier(hidden_layer_sizes=(10 * d, 10 * d), max_iter=500, early_stopping=True, random_state=seed)
    else:
        raise ValueError(f"classifier must be 'hist_gradient_boosting' or 'mlp'; got {classifier!r}")
    from threadpoolctl import threadpool_limits

    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with threadpool_limits(limits=1):
        return float(np.mean(cross_val_score(model, X, y, cv=folds, scoring="roc_auc")))


@dataclasses.dataclass(frozen=True)
class CrossValidationReport:
    """What :func:`cross_validate` returns.

    Attributes:
        names: parameter names.
        reference_mean/std, candidate_mean/std: (d,) posterior means and standard deviations.
        shift: (d,) (candidate mean - reference mean) / reference std.
        width_ratio: (d,) candidate std / reference std.
        auc: classifier two-sample ROC AUC (cross-validated).
        n_classifier: draws per set given to the classifier.
        fisher: None or per-parameter comparison of the Fisher results (sigma ratios, MAP shifts
            in reference Fisher sigmas, positive definiteness).
        thresholds: the :class:`Thresholds` used; checks: which criteria passed; verdict: "PASS"/"FAIL".
        labels: (reference, candidate) names used in plots and text.
    """

    names: tuple[str, ...]
    reference_mean: np.ndarray
    reference_std: np.ndarray
    candidate_mean: np.ndarray
    candidate_std: np.ndarray
    shift: np.ndarray
    width_ratio: np.ndarray
    auc: float
    n_classifier: int
    fisher: dict | None
    thresholds: Thresholds
    checks: dict
    verdict: str
    labels: tuple[str, str]
    _samples: tuple = dataclasses.field(repr=False, compare=False, default=())
    _fishers: tuple = dataclasses.field(repr=False, compare=False, default=())

    @property
    def passed(self) -> bool:
        return self.verdict == "PASS"

    def to_dict(self) -> dict:
        """JSON-ready view."""
        return {
            "verdict": self.verdict,
            "thresholds": self.thresholds._asdict() | {"width_ratio_range": [1 / self.thresholds.max_width_ratio, self.thresholds.max_width_ratio]},
            "checks": self.checks,
            "labels": list(self.labels),
            "auc": self.auc,
            "n_classifier": self.n_classifier,
            "parameters": [
                {
                    "name": name,
                    "reference_mean": float(self.reference_mean[k]), "reference_std": float(self.reference_std[k]),
                    "candidate_mean": float(self.candidate_mean[k]), "candidate_std": float(self.candidate_std[k]),
                    "shift_in_reference_sigma": float(self.shift[k]), "width_ratio": float(self.width_ratio[k]),
                }
                for k, name in enumerate(self.names)
            ],
            "fisher": self.fisher,
        }

    def to_json(self, path=None, indent: int = 2) -> str:
        """JSON text; also written to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_markdown(self) -> str:
        """A short Markdown report: verdict, thresholds, per-parameter table."""
        t = self.thresholds
        ref, cand = self.labels
        lines = [
            f"## Cross-validation: {cand} vs {ref}: **{self.verdict}**",
            "",
            f"Thresholds: |mean shift| < {t.max_abs_shift} {ref} sigma; width ratio in [{1 / t.max_width_ratio:.3g}, {t.max_width_ratio:.3g}]; "
            f"classifier AUC < {t.max_auc}.",
            f"Classifier two-sample AUC = {self.auc:.3f} ({self.n_classifier} draws per set): {'pass' if self.checks['auc'] else 'FAIL'}.",
            "",
            f"| parameter | {ref} mean | {ref} sigma | {cand} mean | {cand} sigma | shift / sigma | width ratio |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for k, name in enumerate(self.names):
            lines.append(
                f"| {name} | {self.reference_mean[k]:.4g} | {self.reference_std[k]:.3g} | {self.candidate_mean[k]:.4g} | "
                f"{self.candidate_std[k]:.3g} | {self.shift[k]:+.3f}{'' if abs(self.shift[k]) < t.max_abs_shift else ' !'} | "
                f"{self.width_ratio[k]:.3f}{'' if 1 / t.max_width_ratio <= self.width_ratio[k] <= t.max_width_ratio else ' !'} |"
            )
        if self.fisher is not None:
            lines += ["", "Fisher (Laplace) at the MAPs (informational):", ""]
            lines.append(f"| parameter | {ref} sigma | {cand} sigma | ratio | MAP shift / {ref} sigma |")
            lines.append("| --- | --- | --- | --- | --- |")
            f = self.fisher
            for k, name in enumerate(self.names):
                fmt = lambda v, spec=".3g": "n/a" if v is None else format(v, spec)  # noqa: E731
                lines.append(
                    f"| {name} | {fmt(f['reference_sigma'][k] if f['reference_sigma'] else None)} | "
                    f"{fmt(f['candidate_sigma'][k] if f['candidate_sigma'] else None)} | "
                    f"{fmt(f['sigma_ratio'][k] if f['sigma_ratio'] else None, '.3f')} | "
                    f"{fmt(f['map_shift'][k] if f['map_shift'] else None, '+.3f')} |"
                )
            for key in ("reference_message", "candidate_message"):
                if f.get(key):
                    lines.append(f"\n{key.split('_')[0]}: {f[key]}")
        return "\n".join(lines) + "\n"

    def plot(self, outdir, *, truths=None, prefix: str = "crossval") -> list[Path]:
        """Write ``<prefix>_corner.png`` (both posteriors overlaid) and, with Fisher results,
        ``<prefix>_fisher.png`` (their ellipses); returns the paths."""
        from .plots import corner_overlay, fisher_ellipses

        outdir = Path(outdir)
        paths = [corner_overlay(list(self._samples), list(self.labels), self.names, outdir / f"{prefix}_corner.png", truths=truths,
                                title=f"{self.labels[1]} vs {self.labels[0]}: {self.verdict} (AUC {self.auc:.3f})")]
        if self._fishers and all(f is not None for f in self._fishers):
            paths.append(fisher_ellipses(list(self._fishers), [f"{lab} Fisher" for lab in self.labels], outdir / f"{prefix}_fisher.png"))
        return paths


def _fisher_comparison(ref: FisherResult, cand: FisherResult) -> dict:
    out = {
        "reference_theta": ref.theta.tolist(), "candidate_theta": cand.theta.tolist(),
        "reference_positive_definite": ref.positive_definite, "candidate_positive_definite": cand.positive_definite,
        "reference_sigma": None if ref.sigmas is None else ref.sigmas.tolist(),
        "candidate_sigma": None if cand.sigmas is None else cand.sigmas.tolist(),
        "reference_condition_number": ref.condition_number if np.isfinite(ref.condition_number) else None,
        "candidate_condition_number": cand.condition_number if np.isfinite(cand.condition_number) else None,
        "sigma_ratio": None, "map_shift": None,
        "reference_message": ref.message, "candidate_message": cand.message,
    }
    if ref.sigmas is not None:
        out["map_shift"] = ((cand.theta - ref.theta) / ref.sigmas).tolist()
        if cand.sigmas is not None:
            out["sigma_ratio"] = (cand.sigmas / ref.sigmas).tolist()
    return out


def cross_validate(
    reference,
    candidate,
    *,
    names: Sequence[str] | None = None,
    fisher_reference: FisherResult | None = None,
    fisher_candidate: FisherResult | None = None,
    thresholds: Thresholds = Thresholds(),
    labels: tuple[str, str] = ("exact", "emulator"),
    seed: int = 0,
    max_classifier_points: int = 2000,
    classifier: str = "mlp",
) -> CrossValidationReport:
    """Compare a candidate posterior with a reference one.

    Args:
        reference, candidate: ``HmcResult`` or sample arrays (n, d) / (chains, draws, d) of the
            same parameters in the same order.
        names: parameter names (default: from the HmcResults, else ``p0, p1, ...``).
        fisher_reference, fisher_candidate: optional ``FisherResult`` (e.g. Laplace at each MAP).
        thresholds: :class:`Thresholds` (defaults 0.2, 1.25, 0.6).
        labels: names of the two posteriors in the text and plots.
        seed, max_classifier_points, classifier: of :func:`classifier_two_sample_auc`.
    """
    ref, ref_names = _as_samples(reference)
    cand, cand_names = _as_samples(candidate)
    if ref.shape[1] != cand.shape[1]:
        raise ValueError(f"reference has {ref.shape[1]} parameters, candidate {cand.shape[1]}")
    if ref_names is not None and cand_names is not None and tuple(ref_names) != tuple(cand_names):
        raise ValueError(f"parameter names differ: reference {ref_names}, candidate {cand_names}")
    names = tuple(names) if names is not None else (ref_names or cand_names or tuple(f"p{i}" for i in range(ref.shape[1])))
    if len(names) != ref.shape[1]:
        raise ValueError(f"{len(names)} names for {ref.shape[1]} parameters")
    ref_mean, ref_std = ref.mean(axis=0), ref.std(axis=0, ddof=1)
    cand_mean, cand_std = cand.mean(axis=0), cand.std(axis=0, ddof=1)
    if np.any(ref_std <= 0):
        raise ValueError(f"reference posterior has zero width in {names[int(np.argmin(ref_std))]}")
    shift = (cand_mean - ref_mean) / ref_std
    ratio = cand_std / ref_std
    auc = classifier_two_sample_auc(ref, cand, seed=seed, max_points=max_classifier_points, classifier=classifier)
    checks = {
        "shift": bool(np.all(np.abs(shift) < thresholds.max_abs_shift)),
        "width_ratio": bool(np.all((ratio >= 1 / thresholds.max_width_ratio) & (ratio <= thresholds.max_width_ratio))),
        "auc": bool(auc < thresholds.max_auc),
    }
    fisher = None
    if fisher_reference is not None and fisher_candidate is not None:
        fisher = _fisher_comparison(fisher_reference, fisher_candidate)
    return CrossValidationReport(
        names=names, reference_mean=ref_mean, reference_std=ref_std, candidate_mean=cand_mean, candidate_std=cand_std,
        shift=shift, width_ratio=ratio, auc=auc, n_classifier=min(ref.shape[0], cand.shape[0], max_classifier_points),
        fisher=fisher, thresholds=thresholds, checks=checks, verdict="PASS" if all(checks.values()) else "FAIL",
        labels=tuple(labels), _samples=(ref, cand), _fishers=(fisher_reference, fisher_candidate),
    )
