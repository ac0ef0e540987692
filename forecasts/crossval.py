"""Cross-validation of two posteriors (e.g. emulator HMC against exact-model HMC), with
Monte-Carlo errors.

``cross_validate(reference, candidate)`` compares, per free parameter, the shift of the posterior
mean in units of the reference posterior sigma and the ratio of widths (candidate / reference),
and runs a classifier two-sample test: a scikit-learn classifier is trained to tell the two
sample sets apart; its cross-validated ROC AUC is 0.5 when they are indistinguishable.  Optional
Fisher (Laplace) results at the two MAPs are compared too (informational: not in the verdict).

Every statistic carries its Monte-Carlo standard error, from the effective sample sizes (ESS,
``numpyro.diagnostics.effective_sample_size``, chains kept apart) of BOTH sample sets:

* shift s = (m_c - m_r) / sd_r:  se^2 = (sd_c / sd_r)^2 / ESS_c + 1 / ESS_r + s^2 (se(sd_r) / sd_r)^2;
* log width ratio ln(sd_c / sd_r):  se^2 = (se(sd_c) / sd_c)^2 + (se(sd_r) / sd_r)^2, with
  se(sd) = sd((x - m)^2) / sqrt(ESS[(x - m)^2]) / (2 sd) (the standard error of the variance,
  from the ESS of the squared deviations: no Gaussian assumption);
* AUC: the larger of its spread across the classifier's folds (std / sqrt(folds); the folds are
  contiguous stretches of the chains, so that neighbouring correlated draws are not split
  between training and test) and the Mann-Whitney null spread at the sets' ESS,
  sqrt(1 / (12 ESS_r) + 1 / (12 ESS_c)).

Each criterion (|shift| < ``max_abs_shift`` (0.2), width ratio in [1/``max_width_ratio``,
``max_width_ratio``] ([0.8, 1.25]), AUC < ``max_auc`` (0.6)) is decided with ``mc_sigmas`` (2)
standard errors (widened as a Student t with ESS - 1 degrees of freedom when the ESS is small): "pass" when the whole interval value +- 2 se satisfies it, "fail" when the whole
interval violates it, "undecided" otherwise.  Verdict: FAIL if any criterion fails, PASS if all
pass, INCONCLUSIVE otherwise; an INCONCLUSIVE report names the chain to run longer and the ESS
that would decide each undecided criterion (if the estimate stays where it is).
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

__all__ = [
    "Thresholds",
    "CrossValidationReport",
    "cross_validate",
    "classifier_two_sample_auc",
    "classifier_two_sample_test",
    "ClassifierTest",
    "McMoments",
    "mc_moments",
    "extension_targets",
    "decide_interval",
    "fold_decisions",
    "VERDICT_OF_DECISION",
]


class Thresholds(NamedTuple):
    """Pass criteria of :func:`cross_validate`."""

    max_abs_shift: float = 0.2
    max_width_ratio: float = 1.25
    max_auc: float = 0.6
    mc_sigmas: float = 2.0  # Monte-Carlo standard errors a criterion must clear to be decided


def _as_chains(x, label: str) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """(chains, draws, d) float64 samples and names (None for arrays); (n, d) is one chain."""
    if isinstance(x, HmcResult):
        arr, names = np.asarray(x.samples, dtype=np.float64), x.names
    else:
        arr, names = np.asarray(x, dtype=np.float64), None
        if arr.ndim == 2:
            arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(
            f"{label} samples must be an HmcResult or an array (n, d) / (chains, draws, d); got shape {arr.shape}"
        )
    if arr.shape[1] < 4:
        raise ValueError(f"{label} samples: {arr.shape[1]} draws per chain; need >= 4 to estimate Monte-Carlo errors")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{label} samples contain non-finite values")
    return arr, names


class McMoments(NamedTuple):
    """Posterior mean and width of one sample set with their Monte-Carlo errors (all (d,)).

    mean, std: over all draws (std with ddof=1); ess_mean: ESS of the draws (for the mean);
    ess_sq: ESS of the squared deviations (for the variance); se_mean = std / sqrt(ess_mean);
    se_std = sd((x - mean)^2) / sqrt(ess_sq) / (2 std).  n: draws in all.
    """

    mean: np.ndarray
    std: np.ndarray
    ess_mean: np.ndarray
    ess_sq: np.ndarray
    se_mean: np.ndarray
    se_std: np.ndarray
    n: int


def mc_moments(samples) -> McMoments:
    """:class:`McMoments` of samples (chains, draws, d) (or (n, d): one chain), chains kept
    apart in the ESS (``numpyro.diagnostics.effective_sample_size``)."""
    from numpyro.diagnostics import effective_sample_size

    x, _ = _as_chains(samples, "")
    flat = x.reshape(-1, x.shape[-1])
    mean, std = flat.mean(axis=0), flat.std(axis=0, ddof=1)
    sq = (x - mean) ** 2
    ess_mean = np.asarray(effective_sample_size(x), dtype=np.float64)
    ess_sq = np.asarray(effective_sample_size(sq), dtype=np.float64)
    # a constant column (zero width) has an undefined ESS: count it as 1 draw
    ess_mean, ess_sq = (np.where(np.isfinite(e) & (e > 0), e, 1.0) for e in (ess_mean, ess_sq))
    sd_sq = sq.reshape(-1, x.shape[-1]).std(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        se_std = np.where(std > 0, sd_sq / np.sqrt(ess_sq) / (2.0 * std), 0.0)
    return McMoments(mean, std, ess_mean, ess_sq, std / np.sqrt(ess_mean), se_std, int(flat.shape[0]))


def _thin(samples: np.ndarray, n: int) -> np.ndarray:
    """n draws evenly spaced through the (chain-major) sample list: thinning, so that
    neighbouring, correlated MCMC draws rarely land in both a training and a test fold."""
    idx = np.linspace(0, samples.shape[0] - 1, n).round().astype(int)
    return samples[idx]


class ClassifierTest(NamedTuple):
    """What :func:`classifier_two_sample_test` returns: ``auc`` (mean over folds), ``fold_aucs``
    (n_folds,), ``n`` (draws per set given to the classifier) and ``se`` = std(fold_aucs) /
    sqrt(n_folds) (the spread across folds)."""

    auc: float
    fold_aucs: np.ndarray
    n: int

    @property
    def se(self) -> float:
        return float(np.std(self.fold_aucs, ddof=1) / np.sqrt(len(self.fold_aucs)))


def classifier_two_sample_test(
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    seed: int = 0,
    max_points: int = 2000,
    n_folds: int = 5,
    classifier: str = "mlp",
) -> ClassifierTest:
    """Cross-validated ROC AUC of a classifier separating two sample sets (n_a, d), (n_b, d).

    Balanced: min(n_a, n_b, max_points) thinned draws of each (evenly spaced through the
    chain-major list); features standardised by the reference mean and std; the folds are
    ``StratifiedKFold(n_folds)`` WITHOUT shuffling, i.e. contiguous stretches of the chains, so
    that correlated neighbouring draws do not sit on both sides of a split (with shuffled folds a
    classifier recognises a stuck chain's neighbourhood and finds a difference that is only
    Monte-Carlo noise).  ``classifier``: "mlp" (default: ``MLPClassifier`` with two hidden layers
    of 10 d units, early stopping, ``random_state=seed``, as in the C2ST literature) or
    "hist_gradient_boosting" (run on one thread: its OpenMP threads are slow on small shared
    machines; timings in docs/design.md s.11).
    Returns :class:`ClassifierTest` (AUC 0.5: indistinguishable; 1: disjoint).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

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
    folds = StratifiedKFold(n_splits=n_folds, shuffle=False)
    with threadpool_limits(limits=1):
        scores = np.asarray(cross_val_score(model, X, y, cv=folds, scoring="roc_auc"), dtype=np.float64)
    return ClassifierTest(float(np.mean(scores)), scores, n)


def classifier_two_sample_auc(reference: np.ndarray, candidate: np.ndarray, **kwargs) -> float:
    """The mean AUC of :func:`classifier_two_sample_test` (same arguments)."""
    return classifier_two_sample_test(reference, candidate, **kwargs).auc


@dataclasses.dataclass(frozen=True)
class CrossValidationReport:
    """What :func:`cross_validate` returns.

    Attributes:
        names: parameter names.
        reference_mean/std, candidate_mean/std: (d,) posterior means and standard deviations.
        shift: (d,) (candidate mean - reference mean) / reference std; shift_se: (d,) its
            Monte-Carlo standard error (module docstring).
        width_ratio: (d,) candidate std / reference std; width_ratio_se: (d,) its MC error.
        reference_ess, candidate_ess: (d,) effective sample sizes of the two sets' means.
        auc: classifier two-sample ROC AUC (cross-validated, mean over folds); auc_folds: the
            per-fold AUCs; auc_se: max(fold spread, Mann-Whitney null spread at the ESS).
        n_classifier: draws per set given to the classifier.
        fisher: None or per-parameter comparison of the Fisher results (sigma ratios, MAP shifts
            in reference Fisher sigmas, positive definiteness).
        thresholds: the :class:`Thresholds` used.
        checks: per criterion, whether the point estimate meets it (bool, as before MC errors).
        decisions: per criterion ("shift", "width_ratio", "auc"): "pass", "fail" or "undecided"
            with ``thresholds.mc_sigmas`` MC standard errors accounted for; per-parameter ones in
            ``to_dict()``.
        verdict: "PASS" (all pass), "FAIL" (any fails) or "INCONCLUSIVE".
        needed: one dict per undecided criterion and parameter: which sample sets to extend
            ("extend": labels) and the ESS each would need ("ess_needed"; None when the estimate
            sits on the threshold) against the ESS now ("ess_now").
        advice: one line saying what to run longer (empty unless INCONCLUSIVE).
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
    shift_se: np.ndarray
    width_ratio_se: np.ndarray
    reference_ess: np.ndarray
    candidate_ess: np.ndarray
    auc_se: float
    auc_folds: np.ndarray
    decisions: dict
    parameter_decisions: dict
    needed: list
    advice: str
    reweighting: dict | None = None
    _samples: tuple = dataclasses.field(repr=False, compare=False, default=())
    _fishers: tuple = dataclasses.field(repr=False, compare=False, default=())

    @property
    def passed(self) -> bool:
        return self.verdict == "PASS"

    def to_dict(self) -> dict:
        """JSON-ready view."""
        return {
            "verdict": self.verdict,
            "advice": self.advice,
            "decisions": dict(self.decisions),
            "needed": list(self.needed),
            "thresholds": self.thresholds._asdict()
            | {"width_ratio_range": [1 / self.thresholds.max_width_ratio, self.thresholds.max_width_ratio]},
            "checks": self.checks,
            "labels": list(self.labels),
            "auc": self.auc,
            "auc_se": self.auc_se,
            "auc_folds": self.auc_folds.tolist(),
            "n_classifier": self.n_classifier,
            "parameters": [
                {
                    "name": name,
                    "reference_mean": float(self.reference_mean[k]),
                    "reference_std": float(self.reference_std[k]),
                    "candidate_mean": float(self.candidate_mean[k]),
                    "candidate_std": float(self.candidate_std[k]),
                    "shift_in_reference_sigma": float(self.shift[k]),
                    "width_ratio": float(self.width_ratio[k]),
                    "shift_se": float(self.shift_se[k]),
                    "width_ratio_se": float(self.width_ratio_se[k]),
                    "reference_ess": float(self.reference_ess[k]),
                    "candidate_ess": float(self.candidate_ess[k]),
                    "shift_decision": self.parameter_decisions["shift"][k],
                    "width_ratio_decision": self.parameter_decisions["width_ratio"][k],
                }
                for k, name in enumerate(self.names)
            ],
            "fisher": self.fisher,
            "reweighting": self.reweighting,
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
        z = t.mc_sigmas
        mark = {"pass": "", "fail": " !", "undecided": " ?"}
        lines = [
            f"## Cross-validation: {cand} vs {ref}: **{self.verdict}**",
            "",
            f"Thresholds: |mean shift| < {t.max_abs_shift} {ref} sigma; width ratio in [{1 / t.max_width_ratio:.3g}, {t.max_width_ratio:.3g}]; "
            f"classifier AUC < {t.max_auc}; each decided with {z:g} Monte-Carlo standard errors (se, from the effective sample "
            f"sizes of both sample sets): pass when value +- {z:g} se meets the criterion, fail when it misses it, "
            "undecided (?) otherwise.",
            f"Classifier two-sample AUC = {self.auc:.3f} +- {self.auc_se:.3f} ({self.n_classifier} draws per set, "
            f"{len(self.auc_folds)} contiguous folds): {self.decisions['auc']}.",
            "",
            f"| parameter | {ref} mean | {ref} sigma | {cand} mean | {cand} sigma | shift / sigma | width ratio | ESS {ref} | ESS {cand} |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for k, name in enumerate(self.names):
            lines.append(
                f"| {name} | {self.reference_mean[k]:.4g} | {self.reference_std[k]:.3g} | {self.candidate_mean[k]:.4g} | "
                f"{self.candidate_std[k]:.3g} | {self.shift[k]:+.3f} +- {self.shift_se[k]:.3f}{mark[self.parameter_decisions['shift'][k]]} | "
                f"{self.width_ratio[k]:.3f} +- {self.width_ratio_se[k]:.3f}{mark[self.parameter_decisions['width_ratio'][k]]} | "
                f"{self.reference_ess[k]:.0f} | {self.candidate_ess[k]:.0f} |"
            )
        if self.reweighting is not None:
            lines += [
                "",
                f"Paired check (forecasts.reweight): {self.reweighting['line']}.  The verdict combines it with the "
                "two chains': FAIL if either fails; PASS if the reweighting passes and the chains' criteria do not "
                "fail and their classifier AUC passes.",
            ]
        if self.advice:
            lines += ["", f"**{self.verdict}**: {self.advice}"]
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
        paths = [
            corner_overlay(
                list(self._samples),
                list(self.labels),
                self.names,
                outdir / f"{prefix}_corner.png",
                truths=truths,
                title=f"{self.labels[1]} vs {self.labels[0]}: {self.verdict} (AUC {self.auc:.3f} +- {self.auc_se:.3f})",
            )
        ]
        if self._fishers and all(f is not None for f in self._fishers):
            paths.append(
                fisher_ellipses(
                    list(self._fishers), [f"{lab} Fisher" for lab in self.labels], outdir / f"{prefix}_fisher.png"
                )
            )
        return paths


def decide_interval(value: float, se: float, low: float, high: float, z: float) -> str:
    """ "pass" if [value - z se, value + z se] lies inside (low, high), "fail" if it lies wholly
    outside, "undecided" otherwise."""
    if low < value - z * se and value + z * se < high:
        return "pass"
    if value - z * se > high or value + z * se < low:
        return "fail"
    return "undecided"


#: The verdict a folded decision gives.
VERDICT_OF_DECISION = {"fail": "FAIL", "pass": "PASS", "undecided": "INCONCLUSIVE"}


def fold_decisions(decisions) -> str:
    """One decision from several ("pass" / "fail" / "undecided"): "fail" if any fails, "pass" if
    all pass, "undecided" otherwise (per parameter -> criterion, criteria -> verdict)."""
    decisions = list(decisions)
    if "fail" in decisions:
        return "fail"
    return "pass" if all(v == "pass" for v in decisions) else "undecided"


def _small_sample_z(z: float, ess: float) -> float:
    """``z`` normal standard errors as the same tail probability of a Student t with ESS - 1
    degrees of freedom: the MC standard errors of sets with a handful of effective draws are
    themselves uncertain (ESS 6: 2 -> 2.75)."""
    from scipy.stats import norm, t

    return float(t.ppf(norm.cdf(z), df=max(float(ess) - 1.0, 1.0)))


def _ess_needed(value, var, ess, low, high, z, labels) -> dict:
    """What would decide an undecided criterion if the estimate stayed at ``value``.

    ``var``, ``ess``: (reference, candidate) variance contributions to the statistic and the ESS
    they come from (each contribution scales as 1 / ESS).  The set with the larger contribution
    is extended alone when that suffices, else both by the same factor.  ``z`` is the normal
    multiplier; the decision inflates it at small ESS (``_small_sample_z`` of the smaller ESS),
    so the ask is the fixed point of that inflation at the extended ESS: without it a criterion
    undecided at ESS 3 asked for ESS 2."""
    margin = min(abs(value - low), abs(value - high))
    now = {lab: float(e) for lab, e in zip(labels, ess)}
    if margin <= 0.0:
        return {"extend": list(labels), "ess_needed": {lab: None for lab in labels}, "ess_now": now}
    ess = np.asarray(ess, dtype=float)
    big = int(np.argmax(var))
    other = 1 - big

    def extended(target):
        """(labels extended, ESS of both sets after the extension) for a variance ``target``."""
        if var[other] < 0.95 * target:
            after = ess.copy()
            after[big] = max(np.ceil(ess[big] * var[big] / (target - var[other])), ess[big])
            return [labels[big]], after
        return list(labels), np.maximum(np.ceil(ess * (var[0] + var[1]) / target), ess)

    # Fixed-point iteration of "the ESS that decides with z inflated at the ESS reached"; an
    # extension computed with the z of a smaller ESS than it reaches is sufficient: keep the
    # smallest such one (the first always is).
    best, after = None, ess
    for _ in range(50):
        extend, new = extended((margin / _small_sample_z(z, after.min())) ** 2)
        if new.min() >= after.min() and (best is None or new.sum() < best[1].sum()):
            best = (extend, new)
        if np.array_equal(new, after):
            break
        after = new
    extend, after = best
    return {
        "extend": extend,
        "ess_needed": {lab: float(e) for lab, e in zip(labels, after) if lab in extend},
        "ess_now": now,
    }


def extension_targets(needed: list, verdict: str) -> dict:
    """What would decide an INCONCLUSIVE verdict, from a report's ``needed`` list.

    If an undecided criterion's estimate violates it, the first such one to be decided (the
    smallest extension) would decide the verdict (FAIL); otherwise every undecided one must be
    (PASS).  Returns ``{"outcome": "FAIL" | "PASS" | None, "ess": {label: {"needed", "now",
    "for"}}, "on_threshold": [criteria no run length decides]}``; per label the largest
    extension asked for (ESS values; "for" names the criterion).  Empty unless INCONCLUSIVE."""
    if verdict != "INCONCLUSIVE":
        return {"outcome": None, "ess": {}, "on_threshold": []}

    def cost(item):
        factors = [
            item["ess_needed"][lab] / max(item["ess_now"][lab], 1.0)
            for lab in item["extend"]
            if item["ess_needed"][lab] is not None
        ]
        return max(factors) if len(factors) == len(item["extend"]) else np.inf

    violating = [item for item in needed if not item["estimate_meets"]]
    deciding = [min(violating, key=cost)] if violating else needed
    asks: dict[str, dict] = {}
    on_threshold = []
    for item in deciding:
        where = item["criterion"] + (f" of {item['parameter']}" if item["parameter"] else "")
        for lab in item["extend"]:
            need = item["ess_needed"][lab]
            if need is None:
                on_threshold.append(where)
            elif lab not in asks or need / item["ess_now"][lab] > asks[lab]["needed"] / asks[lab]["now"]:
                asks[lab] = {"needed": need, "now": item["ess_now"][lab], "for": where}
    return {"outcome": "FAIL" if violating else "PASS", "ess": asks, "on_threshold": sorted(set(on_threshold))}


def _advice(needed: list, verdict: str) -> str:
    """One line for an INCONCLUSIVE verdict: which sets to run longer, to which ESS
    (:func:`extension_targets`)."""
    if verdict != "INCONCLUSIVE":
        return ""
    targets = extension_targets(needed, verdict)
    parts = [
        f"run the {lab} chains longer, to an ESS of ~{a['needed']:.0f} (now {a['now']:.0f}, ~{a['needed'] / max(a['now'], 1.0):.1f}x the draws; "
        f"for the {a['for']})"
        for lab, a in targets["ess"].items()
    ]
    if targets["on_threshold"]:
        parts.append(f"the {', '.join(targets['on_threshold'])} sits on its threshold: no run length decides it")
    return (
        f"the Monte-Carlo errors are too large to decide; if the estimates stay where they are, {targets['outcome']} needs: "
        + "; ".join(parts)
        + "."
    )


def _fisher_comparison(ref: FisherResult, cand: FisherResult) -> dict:
    out = {
        "reference_theta": ref.theta.tolist(),
        "candidate_theta": cand.theta.tolist(),
        "reference_positive_definite": ref.positive_definite,
        "candidate_positive_definite": cand.positive_definite,
        "reference_sigma": None if ref.sigmas is None else ref.sigmas.tolist(),
        "candidate_sigma": None if cand.sigmas is None else cand.sigmas.tolist(),
        "reference_condition_number": ref.condition_number if np.isfinite(ref.condition_number) else None,
        "candidate_condition_number": cand.condition_number if np.isfinite(cand.condition_number) else None,
        "sigma_ratio": None,
        "map_shift": None,
        "reference_message": ref.message,
        "candidate_message": cand.message,
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
        reference, candidate: ``HmcResult`` or sample arrays (n, d) (one chain) / (chains, draws,
            d) of the same parameters in the same order; chains are kept apart in the ESS.
        names: parameter names (default: from the HmcResults, else ``p0, p1, ...``).
        fisher_reference, fisher_candidate: optional ``FisherResult`` (e.g. Laplace at each MAP).
        thresholds: :class:`Thresholds` (defaults 0.2, 1.25, 0.6, decided at 2 MC standard errors).
        labels: names of the two posteriors in the text and plots.
        seed, max_classifier_points, classifier: of :func:`classifier_two_sample_auc`.
    """
    ref_chains, ref_names = _as_chains(reference, "reference")
    cand_chains, cand_names = _as_chains(candidate, "candidate")
    if ref_chains.shape[-1] != cand_chains.shape[-1]:
        raise ValueError(f"reference has {ref_chains.shape[-1]} parameters, candidate {cand_chains.shape[-1]}")
    if ref_names is not None and cand_names is not None and tuple(ref_names) != tuple(cand_names):
        raise ValueError(f"parameter names differ: reference {ref_names}, candidate {cand_names}")
    d = ref_chains.shape[-1]
    names = tuple(names) if names is not None else (ref_names or cand_names or tuple(f"p{i}" for i in range(d)))
    if len(names) != d:
        raise ValueError(f"{len(names)} names for {d} parameters")
    if thresholds.mc_sigmas < 0:
        raise ValueError(f"thresholds.mc_sigmas must be >= 0; got {thresholds.mc_sigmas}")
    ref, cand = ref_chains.reshape(-1, d), cand_chains.reshape(-1, d)
    r, c = mc_moments(ref_chains), mc_moments(cand_chains)
    if np.any(r.std <= 0):
        raise ValueError(f"reference posterior has zero width in {names[int(np.argmin(r.std))]}")
    z = float(thresholds.mc_sigmas)
    shift = (c.mean - r.mean) / r.std
    ratio = c.std / r.std
    # variance contributions (reference, candidate) of each statistic, per parameter (d,)
    shift_var = (1.0 / r.ess_mean + shift**2 * (r.se_std / r.std) ** 2, (c.std / r.std) ** 2 / c.ess_mean)
    log_ratio_var = ((r.se_std / r.std) ** 2, np.where(c.std > 0, c.se_std / np.where(c.std > 0, c.std, 1.0), 0.0) ** 2)
    shift_se = np.sqrt(shift_var[0] + shift_var[1])
    log_ratio_se = np.sqrt(log_ratio_var[0] + log_ratio_var[1])
    c2st = classifier_two_sample_test(ref, cand, seed=seed, max_points=max_classifier_points, classifier=classifier)
    ess_auc = (min(float(r.ess_mean.min()), c2st.n), min(float(c.ess_mean.min()), c2st.n))
    auc_var = np.array([1.0 / (12.0 * ess_auc[0]), 1.0 / (12.0 * ess_auc[1])])
    if c2st.se**2 > auc_var.sum():  # the folds scatter more than the null: scale both parts up
        auc_var *= c2st.se**2 / auc_var.sum()
    auc_se = float(np.sqrt(auc_var.sum()))

    bound = np.log(thresholds.max_width_ratio)
    with np.errstate(divide="ignore"):
        log_ratio = np.log(ratio)
    z_mean = [_small_sample_z(z, min(r.ess_mean[k], c.ess_mean[k])) for k in range(d)]
    z_sq = [_small_sample_z(z, min(r.ess_sq[k], c.ess_sq[k])) for k in range(d)]
    per_param = {
        "shift": [
            decide_interval(shift[k], shift_se[k], -thresholds.max_abs_shift, thresholds.max_abs_shift, z_mean[k])
            for k in range(d)
        ],
        "width_ratio": [decide_interval(log_ratio[k], log_ratio_se[k], -bound, bound, z_sq[k]) for k in range(d)],
    }
    decisions = {
        "shift": fold_decisions(per_param["shift"]),
        "width_ratio": fold_decisions(per_param["width_ratio"]),
        "auc": decide_interval(c2st.auc, auc_se, -np.inf, thresholds.max_auc, _small_sample_z(z, min(ess_auc))),
    }
    verdict = VERDICT_OF_DECISION[fold_decisions(decisions.values())]
    labels = tuple(labels)
    needed = []
    for k in range(d):
        if per_param["shift"][k] == "undecided":
            needed.append(
                {
                    "criterion": "shift",
                    "parameter": names[k],
                    "value": float(shift[k]),
                    "se": float(shift_se[k]),
                    "estimate_meets": bool(abs(shift[k]) < thresholds.max_abs_shift),
                    **_ess_needed(
                        shift[k],
                        (shift_var[0][k], shift_var[1][k]),
                        (r.ess_mean[k], c.ess_mean[k]),
                        -thresholds.max_abs_shift,
                        thresholds.max_abs_shift,
                        z,
                        labels,
                    ),
                }
            )
        if per_param["width_ratio"][k] == "undecided":
            needed.append(
                {
                    "criterion": "width ratio",
                    "parameter": names[k],
                    "value": float(ratio[k]),
                    "se": float(ratio[k] * log_ratio_se[k]),
                    "estimate_meets": bool(abs(log_ratio[k]) < bound),
                    **_ess_needed(
                        log_ratio[k],
                        (log_ratio_var[0][k], log_ratio_var[1][k]),
                        (r.ess_sq[k], c.ess_sq[k]),
                        -bound,
                        bound,
                        z,
                        labels,
                    ),
                }
            )
    if decisions["auc"] == "undecided":
        needed.append(
            {
                "criterion": "classifier AUC",
                "parameter": None,
                "value": c2st.auc,
                "se": auc_se,
                "estimate_meets": bool(c2st.auc < thresholds.max_auc),
                **_ess_needed(c2st.auc, tuple(auc_var), ess_auc, -np.inf, thresholds.max_auc, z, labels),
            }
        )
    checks = {
        "shift": bool(np.all(np.abs(shift) < thresholds.max_abs_shift)),
        "width_ratio": bool(np.all((ratio >= 1 / thresholds.max_width_ratio) & (ratio <= thresholds.max_width_ratio))),
        "auc": bool(c2st.auc < thresholds.max_auc),
    }
    fisher = None
    if fisher_reference is not None and fisher_candidate is not None:
        fisher = _fisher_comparison(fisher_reference, fisher_candidate)
    return CrossValidationReport(
        names=names,
        reference_mean=r.mean,
        reference_std=r.std,
        candidate_mean=c.mean,
        candidate_std=c.std,
        shift=shift,
        width_ratio=ratio,
        auc=c2st.auc,
        n_classifier=c2st.n,
        fisher=fisher,
        thresholds=thresholds,
        checks=checks,
        verdict=verdict,
        labels=labels,
        shift_se=shift_se,
        width_ratio_se=ratio * log_ratio_se,
        reference_ess=r.ess_mean,
        candidate_ess=c.ess_mean,
        auc_se=auc_se,
        auc_folds=c2st.fold_aucs,
        decisions=decisions,
        parameter_decisions=per_param,
        needed=needed,
        advice=_advice(needed, verdict),
        _samples=(ref, cand),
        _fishers=(fisher_reference, fisher_candidate),
    )
