"""The emulator-vs-exact check by importance reweighting: paired, so its Monte-Carlo error is small.

Two NUTS runs compared (:func:`forecasts.crossval.cross_validate`) carry the Monte-Carlo error
of both chains; the exact chain is the expensive one, and its error is what leaves a check
INCONCLUSIVE (docs/design.md s.14).  :func:`reweighted_check` measures the same shift and width
ratio with the candidate's own draws: n nearly independent draws x_i of the candidate posterior
(thinned by its ESS) get weights w_i ∝ exp(ln L_ref(x_i) - ln L_cand(x_i)) (both posteriors have
the same box prior), so that

* the reference posterior's mean and sd are the self-normalised weighted ones (importance
  sampling), and the candidate's are the plain ones over the *same* draws;
* shift = (mean_cand - mean_ref) / sd_ref and width ratio = sd_cand / sd_ref: where the two
  posteriors nearly agree the weights are nearly equal and most of the sampling noise cancels
  between the two means (paired estimates).  Their standard errors come from a bootstrap over
  the draws.

The reference model is evaluated once per draw (value only, no Jacobian): 400 exact ln L of 32
halos take ~30 s on the 2-core CPU, against ~600 s for exact NUTS to reach the same shift
error's tenfold.

Reweighting is trusted only where the weights say so (Vehtari et al. 2024, "Pareto smoothed
importance sampling"): the Pareto shape k-hat of the largest weights' tail (a generalized Pareto
fit, ``scipy.stats.genpareto``) must stay below min(1 - 1 / log10(n), 0.7), no reference
evaluation may fail (a failed halo gives -inf), and n >= 100.  Otherwise the check reports
itself unreliable and decides nothing.

:func:`combine` folds it into a NUTS cross-validation report: FAIL if either fails (a reliable
reweighting's FAIL counts), PASS if the reweighting passes and the NUTS report has no failing
criterion and a passing classifier AUC (the distribution-shape criterion that reweighting does
not test), INCONCLUSIVE otherwise (with the NUTS report's advice).
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from .crossval import (
    VERDICT_OF_DECISION,
    CrossValidationReport,
    Thresholds,
    decide_interval,
    fold_decisions,
    mc_moments,
)
from .forward import ForwardModel, log_likelihood_and_failures

__all__ = ["ReweightedCheck", "reweighted_check", "pareto_khat", "combine"]

#: Draws the check reweights by default (ESS-thinned draws of the candidate posterior).
DEFAULT_DRAWS = 400
#: Bootstrap resamples for the standard errors.
DEFAULT_BOOTSTRAP = 500
#: Fewer draws than this never decide.
MIN_DRAWS = 100
ARRAY_FIELDS = (
    "reference_mean",
    "reference_std",
    "candidate_mean",
    "candidate_std",
    "shift",
    "shift_se",
    "width_ratio",
    "width_ratio_se",
)

_jit_log_likelihood_and_failures = jax.jit(log_likelihood_and_failures, static_argnums=0)


def pareto_khat(log_weights) -> float:
    """Shape k-hat of a generalized Pareto fit to the largest importance weights (n,): the
    M = min(n / 5, 3 sqrt(n)) largest weights' exceedances over the next one
    (``scipy.stats.genpareto.fit`` with location 0).  k-hat < 0.5: the weights have a finite
    variance; > 0.7: importance sampling is unreliable.  inf when any weight is not finite."""
    from scipy.stats import genpareto

    lw = np.asarray(log_weights, np.float64)
    if not np.all(np.isfinite(lw)):
        return math.inf
    n = lw.size
    m = int(min(n // 5, math.ceil(3.0 * math.sqrt(n))))
    if m < 5:
        return math.inf
    w = np.sort(np.exp(lw - lw.max()))
    tail, threshold = w[-m:], w[-m - 1]
    exceed = tail - threshold
    if np.all(exceed <= 0):
        return -math.inf  # a flat tail: all the largest weights are equal
    shape, _, _ = genpareto.fit(exceed, floc=0.0)
    return float(shape)


def khat_limit(n: int) -> float:
    """The largest trustworthy k-hat for n draws: min(1 - 1 / log10(n), 0.7)."""
    return float(min(1.0 - 1.0 / math.log10(max(n, 11)), 0.7))


@dataclasses.dataclass(frozen=True)
class ReweightedCheck:
    """What :func:`reweighted_check` returns; all arrays (d,) over the free parameters.

    names: parameters; n_draws: draws reweighted; stride: thinning of the candidate chains;
    reference_mean/std: the reweighted (reference) posterior's; candidate_mean/std: the same
    draws' plain ones; shift = (candidate - reference mean) / reference std and width_ratio =
    candidate / reference std, each with its bootstrap standard error (``*_se``);
    weights_ess: 1 / sum(w^2) of the normalised weights; pareto_k, pareto_k_limit: k-hat and
    its limit; n_failed: draws whose reference evaluation had failed halos; delta_lnl_sd: sd
    of ln L_ref - ln L_cand over the draws; reliable: the weights may decide; decisions:
    per criterion "pass" / "fail" / "undecided"; verdict: PASS, FAIL, INCONCLUSIVE or
    UNRELIABLE; seconds: wall-clock seconds of the reference evaluations.
    """

    names: tuple[str, ...]
    n_draws: int
    stride: int
    reference_mean: np.ndarray
    reference_std: np.ndarray
    candidate_mean: np.ndarray
    candidate_std: np.ndarray
    shift: np.ndarray
    shift_se: np.ndarray
    width_ratio: np.ndarray
    width_ratio_se: np.ndarray
    weights_ess: float
    pareto_k: float
    pareto_k_limit: float
    n_failed: int
    delta_lnl_sd: float
    reliable: bool
    decisions: dict
    verdict: str
    seconds: float
    thresholds: Thresholds = Thresholds()

    def to_dict(self) -> dict:
        """JSON-ready view (reloads with :meth:`from_dict`; ``sapphire.jsonio`` writes non-finite
        numbers as null)."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, np.ndarray):
                value = value.tolist()
            elif field.name == "thresholds":
                value = value._asdict()
            elif field.name == "names":
                value = list(value)
            out[field.name] = value
        return out

    @classmethod
    def from_dict(cls, d: dict) -> ReweightedCheck:
        kw = dict(d)
        kw.pop("line", None)
        for key in ARRAY_FIELDS:
            kw[key] = np.asarray(kw[key], np.float64)
        kw["names"] = tuple(kw["names"])
        kw["thresholds"] = Thresholds(**kw["thresholds"])
        for key in ("pareto_k", "pareto_k_limit", "weights_ess", "delta_lnl_sd"):
            kw[key] = math.nan if kw[key] is None else float(kw[key])  # JSON stores non-finite as null
        return cls(**kw)

    def line(self) -> str:
        """One line for logs and reports."""
        shifts = ", ".join(f"{n} {s:+.3f} +- {e:.3f}" for n, s, e in zip(self.names, self.shift, self.shift_se))
        ratios = ", ".join(f"{r:.3f} +- {e:.3f}" for r, e in zip(self.width_ratio, self.width_ratio_se))
        return (
            f"reweighting of {self.n_draws} emulator draws by the exact likelihood: {self.verdict}; "
            f"shifts {shifts} sigma; width ratios {ratios}; weights ESS {self.weights_ess:.0f}, "
            f"Pareto k {self.pareto_k:.2f} (limit {self.pareto_k_limit:.2f}), {self.n_failed} failed; "
            f"{self.seconds:.0f} s"
        )


def _thinned_draws(samples: np.ndarray, n_draws: int, seed: int) -> tuple[np.ndarray, int]:
    """Up to n_draws nearly independent draws of samples (chains, draws, d): every
    stride-th draw of each chain, stride = ceil(total draws / min ESS), then a random subset."""
    x = np.asarray(samples, np.float64)
    if x.ndim == 2:
        x = x[None]
    total = x.shape[0] * x.shape[1]
    ess = float(np.min(mc_moments(x).ess_mean))
    stride = max(1, int(math.ceil(total / max(ess, 1.0))))
    thinned = x[:, ::stride].reshape(-1, x.shape[-1])
    if thinned.shape[0] > n_draws:
        pick = np.random.default_rng(seed).choice(thinned.shape[0], n_draws, replace=False)
        thinned = thinned[np.sort(pick)]
    return thinned, stride


def _moments(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(weighted mean, weighted sd, plain mean, plain sd) of x (n, d) with weights w (n,)."""
    w = w / w.sum()
    mean_w = w @ x
    sd_w = np.sqrt(w @ (x - mean_w) ** 2)
    return mean_w, sd_w, x.mean(axis=0), x.std(axis=0)


def reweighted_check(
    reference: ForwardModel,
    candidate: ForwardModel,
    samples,
    *,
    n_draws: int = DEFAULT_DRAWS,
    thresholds: Thresholds = Thresholds(),
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    progress: bool = False,
) -> ReweightedCheck:
    """Reweight draws of the candidate's posterior by the reference likelihood (module docstring).

    Args:
        reference, candidate: forward models with the same free parameters and prior box
            (normally ``ExactForward`` and ``EmulatorForward``).
        samples: the candidate posterior's draws, (chains, draws, n_free) or (n, n_free).
        n_draws: draws to reweight after ESS thinning; thresholds: as in ``cross_validate``
            (shift and width ratio, decided at ``mc_sigmas`` bootstrap standard errors).
        n_bootstrap: resamples for the standard errors; seed: draw subset and bootstrap.
        progress: show a progress bar over the reference evaluations.
    """
    if reference.free_names != candidate.free_names:
        raise ValueError(
            f"reference and candidate must share their free parameters; got {reference.free_names} and {candidate.free_names}"
        )
    if n_draws < 2 or n_bootstrap < 10:
        raise ValueError(f"need n_draws >= 2 and n_bootstrap >= 10; got {n_draws}, {n_bootstrap}")
    x, stride = _thinned_draws(samples, n_draws, seed)
    n, d = x.shape
    started = time.perf_counter()
    ln_ref, failed = np.empty(n), np.zeros(n, np.int64)
    for i, theta in enumerate(tqdm(x, desc="exact reweighting", unit="draw", disable=not progress)):
        value, n_failed = _jit_log_likelihood_and_failures(reference.spec, reference.data, reference.check_theta(theta))
        ln_ref[i], failed[i] = float(value), int(n_failed)
    seconds = time.perf_counter() - started
    ln_cand = np.asarray(
        jax.vmap(lambda t: log_likelihood_and_failures(candidate.spec, candidate.data, t)[0])(x), np.float64
    )
    log_w = ln_ref - ln_cand
    finite = np.isfinite(log_w)
    n_failed = int(np.sum((failed > 0) | ~finite))
    lw = np.where(finite, log_w, -np.inf)
    w = np.exp(lw - np.max(lw[finite])) if np.any(finite) else np.ones(n)
    mean_r, sd_r, mean_c, sd_c = _moments(x, w)
    shift, log_ratio = (mean_c - mean_r) / sd_r, np.log(sd_c / sd_r)
    rng = np.random.default_rng(seed + 1)
    boot_shift, boot_ratio = np.empty((n_bootstrap, d)), np.empty((n_bootstrap, d))
    for b in range(n_bootstrap):
        idx = rng.integers(0, n, n)
        mr, sr, mc, sc = _moments(x[idx], w[idx] if w[idx].sum() > 0 else np.ones(n))
        boot_shift[b], boot_ratio[b] = (mc - mr) / sr, np.log(sc / sr)
    shift_se, log_ratio_se = boot_shift.std(axis=0, ddof=1), boot_ratio.std(axis=0, ddof=1)
    wn = w / w.sum()
    khat, limit = pareto_khat(lw), khat_limit(n)
    reliable = bool(n >= MIN_DRAWS and n_failed == 0 and khat < limit)
    z = float(thresholds.mc_sigmas)
    bound = math.log(thresholds.max_width_ratio)
    per = {
        "shift": [
            decide_interval(s, e, -thresholds.max_abs_shift, thresholds.max_abs_shift, z)
            for s, e in zip(shift, shift_se)
        ],
        "width_ratio": [decide_interval(r, e, -bound, bound, z) for r, e in zip(log_ratio, log_ratio_se)],
    }
    decisions = {k: fold_decisions(v) for k, v in per.items()}
    verdict = VERDICT_OF_DECISION[fold_decisions(decisions.values())] if reliable else "UNRELIABLE"
    ratio = np.exp(log_ratio)
    return ReweightedCheck(
        names=tuple(reference.free_names),
        n_draws=int(n),
        stride=int(stride),
        reference_mean=mean_r,
        reference_std=sd_r,
        candidate_mean=mean_c,
        candidate_std=sd_c,
        shift=shift,
        shift_se=shift_se,
        width_ratio=ratio,
        width_ratio_se=ratio * log_ratio_se,
        weights_ess=float(1.0 / np.sum(wn**2)),
        pareto_k=khat,
        pareto_k_limit=limit,
        n_failed=n_failed,
        delta_lnl_sd=float(np.std(log_w[finite])) if np.any(finite) else math.inf,
        reliable=reliable,
        decisions={"overall": decisions, "per_parameter": per},
        verdict=verdict,
        seconds=float(seconds),
        thresholds=thresholds,
    )


def combine(report: CrossValidationReport, check: ReweightedCheck) -> CrossValidationReport:
    """The NUTS cross-validation ``report`` with ``check`` folded into its verdict (module
    docstring) and recorded as ``report.reweighting``."""
    verdict, needed, advice = report.verdict, report.needed, report.advice
    nuts_fails = report.verdict == "FAIL"
    if not nuts_fails and check.reliable and check.verdict == "FAIL":
        verdict, needed, advice = "FAIL", [], ""
    elif not nuts_fails and check.reliable and check.verdict == "PASS":
        if report.decisions.get("auc") == "pass":
            verdict, needed, advice = "PASS", [], ""
        else:  # only the classifier is left to decide
            needed = [item for item in report.needed if item.get("criterion") == "auc"]
            advice = f"the reweighting passed; the classifier AUC is undecided: {report.advice}"
    return dataclasses.replace(
        report, verdict=verdict, needed=needed, advice=advice, reweighting=check.to_dict() | {"line": check.line()}
    )
