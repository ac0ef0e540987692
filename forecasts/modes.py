"""Posteriors with several modes: find them, weigh them, refine each with NUTS (issue 19).

``weigh_modes`` runs adaptive tempered sequential Monte Carlo (blackjax ``adaptive_tempered_smc``)
from the uniform prior box to the posterior: particles drawn from the prior are reweighted by
``L^(beta_t+1 - beta_t)`` (each increment chosen so that the effective sample size falls to
``target_ess`` of the particles), resampled, and moved by ``num_mcmc_steps`` random-walk
Metropolis steps (proposal covariance: the particles' covariance times a scale adapted to an
acceptance rate of ~0.25).  The product of the mean weights is the evidence
``Z = int L(theta) pi(theta) d theta`` (pi = 1 / box volume).  Reweighting moves mass between
separated modes correctly, so the final particles weigh the modes; the random walk itself never
has to cross between them.  ``num_runs`` independent seeded runs give the evidence error (their
standard deviation of ln Z divided by sqrt(num_runs)) and the mode-weight errors.  Chosen over
nested sampling by measurement (``benchmarks/modes_sampler.py``, docs/design_notes_modes.md).

The final particles are clustered into modes (``cluster_modes``): a Gaussian mixture on
prior-width-standardised samples, its number of components chosen by BIC, then components
merged when the log-likelihood along the straight segment between their best points never dips
by more than ``valley_nats`` below the lower end (a log-concave mode has no dip at all, separated
modes dip deeply).

``refine_modes`` starts NUTS chains (``forecasts.run_hmc``) inside each mode and reports per-mode
R-hat and ESS; ``group_chains`` sorts the chains of any multi-chain run into modes, so that
chains sitting in different modes read as "k modes" while poor mixing inside a mode is still a
failure.  ``mode_table`` and ``modes_summary`` report them (markdown and JSON), and
``forecasts.plots.modes_corner`` draws them.

Failed likelihood evaluations (-inf or NaN inside the box) are never data: such a particle has
zero weight (a proposal there is rejected); every one is counted (``n_failed``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin
from scipy.cluster.hierarchy import DisjointSet

from sapphire.prior import Prior

from .forward import ForwardModel

__all__ = [
    "Mode",
    "ModesResult",
    "ModeChains",
    "ChainGroups",
    "weigh_modes",
    "cluster_modes",
    "refine_modes",
    "group_chains",
    "mode_table",
    "modes_summary",
    "GaussianMixtureTarget",
    "mode_starts",
    "chi2_at",
    "outside_training",
    "mode_maps",
    "mode_evidence",
    "mode_weights_from_chains",
    "ModesCrossValidation",
    "cross_validate_modes",
    "merge_mixing_modes",
]

#: Clustering defaults shared by :func:`weigh_modes` and :func:`cluster_modes`: at most this many
#: Gaussian-mixture components, and two clusters are one mode when ln L dips by less than
#: ``VALLEY_NATS`` along the segment joining their best points.
MAX_MODES = 6
VALLEY_NATS = 2.0


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Mode:
    """One mode of a posterior.

    Attributes:
        weight: posterior mass of the mode (the modes' weights sum to 1); weight_error: standard
            error over the independent runs (NaN with one run).
        mean, std: (n_free,); cov: (n_free, n_free); weighted over the mode's samples.
        best_theta: (n_free,) the mode's sample of highest log-likelihood; best_log_likelihood.
        n_samples: particles assigned to the mode.
    """

    weight: float
    weight_error: float
    mean: np.ndarray
    cov: np.ndarray
    std: np.ndarray
    best_theta: np.ndarray
    best_log_likelihood: float
    n_samples: int


@dataclasses.dataclass(frozen=True)
class ModesResult:
    """Output of :func:`weigh_modes`.

    Attributes:
        names: free parameter names.
        samples: (N, n_free) particles of all runs; weights: (N,) importance weights summing to
            1 (each run carries 1 / num_runs); log_likelihood: (N,).
        labels: (N,) mode index of each particle; modes: the modes, heaviest first.
        log_evidence: ln of the mean of the runs' evidences; log_evidence_error: standard
            deviation of the runs' ln Z over sqrt(num_runs) (NaN with one run);
            log_evidence_runs: (num_runs,).
        n_failed: likelihood evaluations inside the box that gave -inf or NaN (prior draws and
            proposals); n_evaluations: all likelihood evaluations.
        n_steps: tempering steps per run; acceptance: (num_runs,) mean random-walk acceptance.
        times: seconds (``sampling``, ``clustering``, ``total``); settings: sampler settings.
        outside_training: for an emulator with ``in_training_range``, the final particles
            outside its training box: ``{"n_particles", "weight"}`` (a warning is issued when
            there are any); None for other targets.
    """

    names: tuple[str, ...]
    samples: np.ndarray
    weights: np.ndarray
    log_likelihood: np.ndarray
    labels: np.ndarray
    modes: tuple[Mode, ...]
    log_evidence: float
    log_evidence_error: float
    log_evidence_runs: np.ndarray
    n_failed: int
    n_evaluations: int
    n_steps: tuple[int, ...]
    acceptance: np.ndarray
    times: dict
    settings: dict
    outside_training: dict | None = None

    @property
    def n_modes(self) -> int:
        return len(self.modes)

    def resample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` equally weighted draws (systematic resampling, seeded): (samples (n, n_free),
        labels (n,))."""
        rng = np.random.default_rng(seed)
        cumulative = np.cumsum(self.weights)
        idx = np.searchsorted(cumulative, (rng.random() + np.arange(n)) / n * cumulative[-1])
        idx = np.minimum(idx, self.weights.size - 1)
        return self.samples[idx], self.labels[idx]


@dataclasses.dataclass(frozen=True)
class ModeChains:
    """NUTS inside one mode (:func:`refine_modes`).

    Attributes:
        mode: mode index; chains: indices of this mode's chains in ``hmc`` (the one run of all
            modes' chains, a ``forecasts.HmcResult`` whose own ``r_hat`` mixes modes: do not use it).
        samples: (chains_per_mode, draws, n_free); r_hat, ess: (n_free,) over these chains only.
        start: (chains_per_mode, n_free) starting points.
    """

    mode: int
    chains: tuple[int, ...]
    samples: np.ndarray
    r_hat: np.ndarray
    ess: np.ndarray
    start: np.ndarray
    hmc: object

    @property
    def mean(self) -> np.ndarray:
        return self.samples.reshape(-1, self.samples.shape[-1]).mean(axis=0)

    @property
    def std(self) -> np.ndarray:
        return self.samples.reshape(-1, self.samples.shape[-1]).std(axis=0, ddof=1)


@dataclasses.dataclass(frozen=True)
class ChainGroups:
    """Chains of one run sorted into modes (:func:`group_chains`).

    Attributes:
        labels: (chains,) mode index of each chain; groups: chain indices per mode.
        means: (k, n_free) per-mode means; r_hat, ess: (k, n_free) within each mode (split
            R-hat, so a lone chain that drifts still fails).
        converged: (k,) max R-hat <= threshold in that mode; threshold.
        verdict: one line, e.g. "2 modes (chains [0] | [1, 2, 3]), each converged (max R-hat 1.004)".
    """

    labels: np.ndarray
    groups: tuple[tuple[int, ...], ...]
    means: np.ndarray
    r_hat: np.ndarray
    ess: np.ndarray
    converged: np.ndarray
    threshold: float
    verdict: str

    @property
    def n_modes(self) -> int:
        return len(self.groups)

    @property
    def failed(self) -> bool:
        """True if any mode's chains have not converged."""
        return not bool(np.all(self.converged))


# ------------------------------------------------------------------------------------------------
# Target
# ------------------------------------------------------------------------------------------------
def _target(target, prior: Prior | None) -> tuple[Callable, Prior, tuple[str, ...], int]:
    """(log_likelihood (n_free,) -> scalar, box, names, batch_size hint) of a ForwardModel or
    of a callable with its ``prior``."""
    if isinstance(target, ForwardModel):
        if prior is not None and tuple(prior.names) != target.free_names:
            raise ValueError(
                f"prior names {prior.names} differ from the forward model's free parameters {target.free_names}"
            )
        box = target.prior if prior is None else prior
        return target.log_likelihood, box, target.free_names, 0 if target.vectorizable else 1
    if not callable(target):
        raise ValueError(
            f"target must be a forecasts.ForwardModel or a callable theta -> log-likelihood; got {type(target).__name__}"
        )
    if not isinstance(prior, Prior):
        raise ValueError(f"a callable target needs prior=sapphire.Prior (the box); got {type(prior).__name__}")
    return target, prior, tuple(prior.names), 0


def _check_positive_int(name: str, value, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


# ------------------------------------------------------------------------------------------------
# Tempered SMC
# ------------------------------------------------------------------------------------------------
def _smc_functions(
    log_likelihood: Callable, low: np.ndarray, high: np.ndarray, num_mcmc_steps: int, target_ess: float, batch_size: int
):
    """Jitted (init, step) of adaptive tempered SMC with a random-walk mutation on the box."""
    from blackjax.mcmc import random_walk
    from blackjax.smc import adaptive_tempered, resampling

    low_j, high_j = jnp.asarray(low), jnp.asarray(high)

    def inside(theta):
        return jnp.all((theta >= low_j) & (theta <= high_j))

    def loglik(theta):
        # Evaluated only inside the box (a clipped point elsewhere; its value is then discarded);
        # NaN -> -inf: such a particle has zero weight and is counted, never used.
        value = log_likelihood(jnp.clip(theta, low_j, high_j))
        value = jnp.where(jnp.isnan(value), -jnp.inf, value)
        return jnp.where(inside(theta), value, -jnp.inf)

    def logprior(theta):
        return jnp.where(inside(theta), 0.0, -jnp.inf)

    rw_kernel = random_walk.build_additive_step()

    def mcmc_step(rng_key, state, logdensity_fn, cholesky):
        return rw_kernel(rng_key, state, logdensity_fn, random_walk.normal(cholesky))

    # the raw kernel (not blackjax.adaptive_tempered_smc, which binds the MCMC parameters once):
    # the proposal covariance is re-estimated from the particles at every step
    raw = adaptive_tempered.build_kernel(
        logprior, loglik, mcmc_step, random_walk.init, resampling.systematic, target_ess, batch_size=batch_size
    )

    @jax.jit
    def step(key, state, cholesky):
        new, info = raw(key, state, num_mcmc_steps, {"cholesky": cholesky[None]})
        rw = info.update_info  # RWInfo with leaves (particles, num_mcmc_steps)
        proposed = rw.proposal.position
        in_box = jnp.all((proposed >= low_j) & (proposed <= high_j), axis=-1)
        # a proposal inside the box whose tempered log-density is not finite: a failed likelihood
        failed = jnp.sum(in_box & ~jnp.isfinite(rw.proposal.logdensity))
        return new, info.log_likelihood_increment, jnp.mean(rw.acceptance_rate), failed, jnp.sum(in_box)

    batched_loglik = jax.jit(
        jax.vmap(loglik) if batch_size == 0 else (lambda x: jax.lax.map(loglik, x, batch_size=batch_size))
    )
    return adaptive_tempered.init, step, batched_loglik


def _weighted_cholesky(particles: np.ndarray, weights: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Cholesky factor of the particles' weighted covariance (floored at 1e-6 prior widths)."""
    cov = np.atleast_2d(np.cov(particles, rowvar=False, aweights=np.maximum(weights, 0.0) + 1e-300))
    cov = cov + np.diag((1e-6 * width) ** 2)
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return np.diag(np.sqrt(np.maximum(np.diag(cov), (1e-6 * width) ** 2)))


def _one_run(init, step, batched_loglik, box: Prior, num_particles: int, key, max_steps: int, progress) -> dict:
    low, high = np.asarray(box.low, float), np.asarray(box.high, float)
    width = high - low
    key, k0 = jax.random.split(key)
    particles = jnp.asarray(
        low + width * np.asarray(jax.random.uniform(k0, (num_particles, low.size), dtype=jnp.float64))
    )
    ll0 = np.asarray(batched_loglik(particles))
    n_failed, n_eval = int(np.sum(~np.isfinite(ll0))), num_particles
    if n_failed == num_particles:
        raise ValueError(f"the log-likelihood is -inf or NaN at all {num_particles} prior draws: nothing to sample")
    state = init(particles)
    log_z, scale, acc_all, n_steps = 0.0, 2.38 / math.sqrt(low.size), [], 0
    while float(state.tempering_param) < 1.0:
        if n_steps >= max_steps:
            raise RuntimeError(
                f"tempered SMC did not reach beta = 1 in {max_steps} steps (beta = {float(state.tempering_param):.3g}); raise max_steps or num_particles"
            )
        chol = scale * _weighted_cholesky(np.asarray(state.particles), np.asarray(state.weights), width)
        key, sub = jax.random.split(key)
        state, increment, acceptance, failed, in_box = step(sub, state, jnp.asarray(chol))
        log_z += float(increment)
        acceptance = float(acceptance)
        acc_all.append(acceptance)
        n_failed += int(failed)
        n_eval += int(in_box)
        n_steps += 1
        # keep the random walk's acceptance near 0.25 (Roberts, Gelman & Gilks 1997)
        scale *= float(np.clip(np.exp(2.0 * (acceptance - 0.25)), 0.5, 2.0))
        if progress is not None:
            progress.set_postfix(beta=f"{float(state.tempering_param):.3g}", acc=f"{acceptance:.2f}")
            progress.update(1)
    particles = np.asarray(state.particles)
    ll = np.asarray(batched_loglik(state.particles))
    return {
        "particles": particles,
        "weights": np.asarray(state.weights, float),
        "log_likelihood": ll,
        "log_z": log_z,
        "n_failed": n_failed,
        "n_eval": n_eval + num_particles,
        "n_steps": n_steps,
        "acceptance": float(np.mean(acc_all)),
    }


def weigh_modes(
    target,
    *,
    prior: Prior | None = None,
    num_particles: int = 1000,
    num_runs: int = 8,
    num_mcmc_steps: int = 25,
    target_ess: float = 0.5,
    max_steps: int = 500,
    max_modes: int = MAX_MODES,
    valley_nats: float = VALLEY_NATS,
    min_weight: float = 0.01,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = True,
) -> ModesResult:
    """Weighted posterior samples, evidence and modes by adaptive tempered SMC (module docstring).

    Args:
        target: a ``ForwardModel`` (its ``log_likelihood`` over its ``prior`` box) or a callable
            ``theta (n_free,) -> ln L`` (pure JAX, vmappable) with ``prior``.
        prior: the uniform box (``sapphire.Prior``); default the forward model's.
        num_particles: particles per run; num_runs: independent runs (>= 2 for error bars).
        num_mcmc_steps: random-walk steps per tempering step; target_ess: fraction of the
            particles kept effective by each tempering increment (0 < target_ess < 1).
        max_steps: tempering steps after which a run is refused (RuntimeError).
        max_modes, valley_nats, min_weight: clustering (:func:`cluster_modes`).
        seed: run r uses ``random.split(PRNGKey(seed), num_runs)[r]``; the clustering ``seed``.
        batch_size: particles per ``lax.map`` batch (0: vmap all); default 0, or 1 for a
            forward model that is not vectorizable (the exact model).
        progress: a tqdm bar over tempering steps.

    Returns:
        :class:`ModesResult`.
    """
    log_likelihood, box, names, batch_hint = _target(target, prior)
    num_particles = _check_positive_int("num_particles", num_particles, 10)
    num_runs = _check_positive_int("num_runs", num_runs)
    num_mcmc_steps = _check_positive_int("num_mcmc_steps", num_mcmc_steps)
    max_steps = _check_positive_int("max_steps", max_steps)
    if not (0.0 < float(target_ess) < 1.0):
        raise ValueError(f"target_ess must lie in (0, 1); got {target_ess!r}")
    batch_size = batch_hint if batch_size is None else _check_positive_int("batch_size", batch_size, 0)
    t0 = time.perf_counter()
    init, step, batched_loglik = _smc_functions(
        log_likelihood,
        np.asarray(box.low, float),
        np.asarray(box.high, float),
        num_mcmc_steps,
        float(target_ess),
        batch_size,
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="tempered SMC", unit="step")
    runs = []
    try:
        for r, key in enumerate(jax.random.split(jax.random.PRNGKey(seed), num_runs)):
            if bar is not None:
                bar.set_description(f"tempered SMC run {r + 1}/{num_runs}")
            runs.append(_one_run(init, step, batched_loglik, box, num_particles, key, max_steps, bar))
    finally:
        if bar is not None:
            bar.close()
    t_sampling = time.perf_counter() - t0
    samples = np.concatenate([r["particles"] for r in runs])
    weights = np.concatenate([r["weights"] / num_runs for r in runs])
    loglik = np.concatenate([r["log_likelihood"] for r in runs])
    run_index = np.repeat(np.arange(num_runs), num_particles)
    log_z_runs = np.array([r["log_z"] for r in runs])
    log_z = float(np.logaddexp.reduce(log_z_runs) - math.log(num_runs))
    log_z_err = float(np.std(log_z_runs, ddof=1) / math.sqrt(num_runs)) if num_runs > 1 else math.nan

    t1 = time.perf_counter()
    labels, modes = cluster_modes(
        samples,
        weights,
        loglik,
        box,
        log_likelihood=log_likelihood,
        run_index=run_index,
        max_modes=max_modes,
        valley_nats=valley_nats,
        min_weight=min_weight,
        seed=seed,
        batch_size=batch_size,
    )
    t_cluster = time.perf_counter() - t1
    outside = outside_training(target, samples, weights)
    return ModesResult(
        names=names,
        samples=samples,
        weights=weights,
        log_likelihood=loglik,
        labels=labels,
        modes=modes,
        log_evidence=log_z,
        log_evidence_error=log_z_err,
        log_evidence_runs=log_z_runs,
        n_failed=int(sum(r["n_failed"] for r in runs)),
        n_evaluations=int(sum(r["n_eval"] for r in runs)),
        n_steps=tuple(r["n_steps"] for r in runs),
        acceptance=np.array([r["acceptance"] for r in runs]),
        times={"sampling": t_sampling, "clustering": t_cluster, "total": time.perf_counter() - t0},
        settings={
            "sampler": "blackjax adaptive tempered SMC, random-walk mutation",
            "num_particles": num_particles,
            "num_runs": num_runs,
            "num_mcmc_steps": num_mcmc_steps,
            "target_ess": float(target_ess),
            "seed": int(seed),
            "max_modes": int(max_modes),
            "valley_nats": float(valley_nats),
            "min_weight": float(min_weight),
            "log_evidence_error": "std of ln Z over the independent runs / sqrt(num_runs)",
        },
        outside_training=outside,
    )


def outside_training(target, samples: np.ndarray, weights: np.ndarray) -> dict | None:
    """Weighted samples (N, n_free) of an emulator forward model that lie outside the emulator's
    training box (``emu.in_training_range``): ``{"n_particles", "weight"}``, with a warning when
    there are any; None if ``target`` is not such a forward model."""
    emu = getattr(target, "emulator", None)
    if not isinstance(target, ForwardModel) or not callable(getattr(emu, "in_training_range", None)):
        return None
    full = np.tile(np.asarray(target.fixed, float), (samples.shape[0], 1))
    full[:, list(target.free_index)] = samples
    outside = ~np.asarray(emu.in_training_range(full), bool)
    result = {"n_particles": int(outside.sum()), "weight": float(weights[outside].sum())}
    if result["n_particles"]:
        import warnings

        warnings.warn(
            f"{result['n_particles']} of {samples.shape[0]} SMC particles (posterior weight {result['weight']:.3g}) lie "
            "outside the emulator's training box: extend the design (sapphire generate --extend)",
            stacklevel=3,
        )
    return result


# ------------------------------------------------------------------------------------------------
# Clustering
# ------------------------------------------------------------------------------------------------
def _valley_depth(batched_log_likelihood: Callable, a: np.ndarray, b: np.ndarray, n_points: int = 25) -> float:
    """How far (nats) ln L along the segment a -> b falls below the lower of its two ends
    (``batched_log_likelihood``: (n_points, n_free) -> (n_points,))."""
    t = np.linspace(0.0, 1.0, n_points)[:, None]
    path = jnp.asarray(a[None] * (1.0 - t) + b[None] * t)
    values = np.asarray(batched_log_likelihood(path), dtype=float)
    values = np.where(np.isfinite(values), values, -np.inf)
    ends = min(values[0], values[-1])
    return float(ends - values.min()) if np.isfinite(ends) else math.inf


def cluster_modes(
    samples: np.ndarray,
    weights: np.ndarray,
    log_likelihood_values: np.ndarray,
    box: Prior,
    *,
    log_likelihood: Callable | None = None,
    run_index: np.ndarray | None = None,
    max_modes: int = MAX_MODES,
    valley_nats: float = VALLEY_NATS,
    min_weight: float = 0.01,
    n_fit: int = 3000,
    seed: int = 0,
    batch_size: int = 0,
) -> tuple[np.ndarray, tuple[Mode, ...]]:
    """Cluster weighted samples into modes.

    A ``sklearn`` GaussianMixture (full covariances, ``random_state=seed``) is fitted to
    ``n_fit`` equally weighted draws of the samples divided by the prior widths, for 1 ..
    ``max_modes`` components; the lowest BIC wins.  Components lighter than ``min_weight`` join
    their nearest neighbour (Mahalanobis); if ``log_likelihood`` is given, two components whose
    best points are joined by a segment along which ln L dips by less than ``valley_nats`` are
    one mode.

    Args:
        samples: (N, n_free); weights: (N,) >= 0; log_likelihood_values: (N,).
        box: the prior box (widths standardise the samples).
        log_likelihood: optional JAX function theta -> ln L for the valley test.
        run_index: optional (N,) run of each sample (mode-weight errors across runs).
        batch_size: 0 to vmap ``log_likelihood`` over the segment's points, else ``lax.map``
            batches of this size (the exact model).

    Returns:
        (labels (N,), modes heaviest first).
    """
    from sklearn.mixture import GaussianMixture

    samples = np.asarray(samples, float)
    weights = np.asarray(weights, float)
    loglik = np.asarray(log_likelihood_values, float)
    if samples.ndim != 2 or weights.shape != (samples.shape[0],) or loglik.shape != weights.shape:
        raise ValueError(
            f"samples (N, n_free), weights (N,), log_likelihood_values (N,) needed; got {samples.shape}, {weights.shape}, {loglik.shape}"
        )
    if not (np.all(weights >= 0) and weights.sum() > 0):
        raise ValueError("weights must be >= 0 with a positive sum")
    max_modes = _check_positive_int("max_modes", max_modes)
    width = np.asarray(box.width, float)
    z = samples / width
    rng = np.random.default_rng(seed)
    p = weights / weights.sum()
    fit = z[rng.choice(z.shape[0], size=min(n_fit, max(10 * z.shape[1], z.shape[0])), p=p)]
    best, best_bic, worse = None, math.inf, 0
    for k in range(1, max_modes + 1):
        if k * (z.shape[1] + 1) >= fit.shape[0] or worse >= 2:  # stop after two rises of the BIC
            break
        gmm = GaussianMixture(k, covariance_type="full", random_state=seed, n_init=1, reg_covar=1e-8).fit(fit)
        bic = gmm.bic(fit)
        best, best_bic, worse = (gmm, bic, 0) if bic < best_bic else (best, best_bic, worse + 1)
    labels = best.predict(z)
    k = best.n_components

    # merges of components; each merged set is named by its smallest component
    merges = DisjointSet(range(k))

    def find(i):
        return min(merges.subset(i))

    mass = np.array([p[labels == c].sum() for c in range(k)])
    precisions = best.precisions_
    for c in np.argsort(mass):
        if mass[c] < min_weight and k > 1:
            others = [o for o in range(k) if o != c and mass[o] >= min_weight] or [o for o in range(k) if o != c]
            d = [
                float((best.means_[o] - best.means_[c]) @ precisions[c] @ (best.means_[o] - best.means_[c]))
                for o in others
            ]
            merges.merge(c, others[int(np.argmin(d))])
    if log_likelihood is not None:
        batched = jax.jit(
            jax.vmap(log_likelihood)
            if batch_size == 0
            else (lambda x: jax.lax.map(log_likelihood, x, batch_size=batch_size))
        )

        def best_point(members):
            idx = np.flatnonzero(members)
            return samples[idx[np.argmax(loglik[idx])]] if idx.size else None

        changed = True
        while changed:
            changed = False
            roots = sorted({find(c) for c in range(k)})
            members = {r: np.isin(labels, [c for c in range(k) if find(c) == r]) for r in roots}
            for i, ri in enumerate(roots):
                for rj in roots[i + 1 :]:
                    a, b = best_point(members[ri]), best_point(members[rj])
                    if a is None or b is None or _valley_depth(batched, a, b) < valley_nats:
                        merges.merge(ri, rj)
                        changed = True
                        break
                if changed:
                    break
    roots = [find(c) for c in range(k)]
    merged = np.array([roots[c] for c in labels])
    uniq = np.unique(merged)
    order = sorted(uniq, key=lambda r: -p[merged == r].sum())
    labels = np.array([order.index(r) for r in merged])

    n_runs = 1 if run_index is None else int(np.max(run_index)) + 1
    modes = []
    for m in range(len(order)):
        sel = labels == m
        w = p[sel]
        weight = float(w.sum())
        mean = np.average(samples[sel], axis=0, weights=w) if weight > 0 else samples[sel].mean(axis=0)
        cov = (
            np.atleast_2d(np.cov(samples[sel], rowvar=False, aweights=w + 1e-300))
            if sel.sum() > 1
            else np.zeros((z.shape[1],) * 2)
        )
        if run_index is not None and n_runs > 1:
            per_run = np.array([p[sel & (run_index == r)].sum() / p[run_index == r].sum() for r in range(n_runs)])
            weight_error = float(per_run.std(ddof=1) / math.sqrt(n_runs))
        else:
            weight_error = math.nan
        i_best = np.flatnonzero(sel)[np.argmax(loglik[sel])]
        modes.append(
            Mode(
                weight=weight,
                weight_error=weight_error,
                mean=mean,
                cov=cov,
                std=np.sqrt(np.diag(cov)),
                best_theta=samples[i_best].copy(),
                best_log_likelihood=float(loglik[i_best]),
                n_samples=int(sel.sum()),
            )
        )
    return labels, tuple(modes)


# ------------------------------------------------------------------------------------------------
# Known answer
# ------------------------------------------------------------------------------------------------
class GaussianMixtureTarget:
    """A known-answer target: ln L(theta) = ln sum_k w_k N(theta | mu_k, diag(sigma^2)) inside a
    uniform box, whose evidence (prior density 1 / volume) and mode weights are analytic.

    ``GaussianMixtureTarget(weights (K,), means (K, n), sigma (n,) or (K, n), low (n,), high (n,))``.
    ``log_evidence`` = ln(sum_k w_k P_k) - ln(volume) with P_k the exact Gaussian mass of
    component k inside the box (products of normal CDFs); ``mode_weights`` = w_k P_k / sum.
    """

    def __init__(self, weights, means, sigma, low, high, names: Sequence[str] | None = None) -> None:
        from scipy.stats import norm

        w = np.asarray(weights, float)
        mu = np.atleast_2d(np.asarray(means, float))
        n = mu.shape[1]
        sig = np.broadcast_to(np.asarray(sigma, float), mu.shape).copy()
        lo, hi = np.asarray(low, float), np.asarray(high, float)
        if w.ndim != 1 or mu.shape[0] != w.size or lo.shape != (n,) or hi.shape != (n,):
            raise ValueError(
                f"weights (K,), means (K, n), low and high (n,) needed; got {w.shape}, {mu.shape}, {lo.shape}, {hi.shape}"
            )
        if not (np.all(w > 0) and np.all(sig > 0) and np.all(hi > lo)):
            raise ValueError("weights and sigma must be > 0 and high > low")
        w = w / w.sum()
        names = tuple(names) if names is not None else tuple(f"theta_{i}" for i in range(n))
        self.prior = Prior(names=names, low=tuple(lo.tolist()), high=tuple(hi.tolist()))
        self.weights, self.means, self.sigma = w, mu, sig
        mass = np.prod(norm.cdf((hi - mu) / sig) - norm.cdf((lo - mu) / sig), axis=1)
        self.mode_weights = w * mass / np.sum(w * mass)
        self.log_evidence = float(np.log(np.sum(w * mass)) - np.sum(np.log(hi - lo)))
        self._log_w = jnp.asarray(np.log(w))
        self._norm = jnp.asarray(-0.5 * n * np.log(2 * np.pi) - np.sum(np.log(sig), axis=1))

    def log_likelihood(self, theta) -> jax.Array:
        """ln L at theta (n,): pure JAX."""
        r = (jnp.asarray(theta)[None, :] - jnp.asarray(self.means)) / jnp.asarray(self.sigma)
        return jax.scipy.special.logsumexp(self._log_w + self._norm - 0.5 * jnp.sum(r**2, axis=1))

    @classmethod
    def two_modes(
        cls, n: int = 8, weights=(0.7, 0.3), separation: float = 10.0, half_width: float = 12.0
    ) -> GaussianMixtureTarget:
        """The issue-19 problem: two Gaussians (sigma_i from 0.5 to 2 over the n parameters,
        geometric), weights 0.7 / 0.3, means at -+ separation/2 sigma_0 along theta_0, in the box
        +- half_width sigma_i."""
        sig = np.geomspace(0.5, 2.0, n)
        means = np.zeros((2, n))
        means[:, 0] = [-0.5 * separation * sig[0], 0.5 * separation * sig[0]]
        return cls(weights, means, sig, -half_width * sig, half_width * sig)

    @classmethod
    def one_mode(cls, n: int = 8, half_width: float = 12.0) -> GaussianMixtureTarget:
        """A single Gaussian (sigma_i from 0.5 to 2, mean 0.1 sigma_i) in the box +- half_width sigma_i."""
        sig = np.geomspace(0.5, 2.0, n)
        return cls([1.0], 0.1 * sig[None], sig, -half_width * sig, half_width * sig)


# ------------------------------------------------------------------------------------------------
# NUTS per mode
# ------------------------------------------------------------------------------------------------
def _mode_list(modes) -> tuple[Mode, ...]:
    modes = modes.modes if isinstance(modes, ModesResult) else tuple(modes)
    if not modes or not all(isinstance(m, Mode) for m in modes):
        raise ValueError("modes must be a ModesResult or a non-empty sequence of Mode")
    return modes


def mode_starts(mode: Mode, box: Prior, num_chains: int, seed: int) -> np.ndarray:
    """(num_chains, n_free) NUTS starting points inside a mode: the mode's best point, then draws
    from N(mean, cov) of the mode (seeded), pulled inside the box by 1e-6 of its width."""
    rng = np.random.default_rng(seed)
    low, high = np.asarray(box.low, float), np.asarray(box.high, float)
    eps = 1e-6 * (high - low)
    cov = mode.cov + np.diag((1e-9 * (high - low)) ** 2)
    draws = rng.multivariate_normal(mode.mean, cov, size=max(num_chains - 1, 0), method="eigh")
    return np.clip(np.vstack([mode.best_theta[None], draws])[:num_chains], low + eps, high - eps)


def refine_modes(
    fm: ForwardModel,
    modes,
    *,
    chains_per_mode: int = 2,
    num_warmup: int = 300,
    num_samples: int = 500,
    seed: int = 0,
    progress: bool = False,
    **hmc_options,
) -> tuple[ModeChains, ...]:
    """NUTS (``forecasts.run_hmc``) started inside each mode; chains are never mixed across modes.

    All modes' chains run in one ``run_hmc`` call (one compilation; each chain adapts its own
    step size and mass matrix), and their diagnostics are computed per mode.

    Args:
        fm: the forward model the modes were found with.
        modes: a :class:`ModesResult` or a sequence of :class:`Mode`.
        chains_per_mode: chains started in each mode (:func:`mode_starts`; >= 2 for a
            between-chain R-hat, a single chain still gets a split R-hat).
        num_warmup, num_samples: per chain; seed: the NUTS seed, and ``seed + m`` for the
            starts of mode m.
        progress: a tqdm bar.
        **hmc_options: passed to ``run_hmc`` (``dense_mass``, ``target_accept_prob``, ...).

    Returns:
        One :class:`ModeChains` per mode, in the modes' order.
    """
    from .hmc import progress_bar, run_hmc

    chains_per_mode = _check_positive_int("chains_per_mode", chains_per_mode)
    mode_list = _mode_list(modes)
    starts = [mode_starts(mode, fm.prior, chains_per_mode, seed + m) for m, mode in enumerate(mode_list)]
    bar = progress_bar(f"NUTS in {len(mode_list)} modes", num_warmup + num_samples) if progress else None
    hmc = run_hmc(
        fm,
        num_chains=chains_per_mode * len(mode_list),
        num_warmup=num_warmup,
        num_samples=num_samples,
        seed=seed,
        init=np.vstack(starts),
        progress=bar,
        **hmc_options,
    )
    out = []
    for m, start in enumerate(starts):
        chains = tuple(range(m * chains_per_mode, (m + 1) * chains_per_mode))
        samples = np.asarray(hmc.samples[list(chains)])
        if samples.shape[1] >= 4:
            r_hat = np.asarray(split_gelman_rubin(samples), float)
            ess = np.asarray(effective_sample_size(samples), float)
        else:
            r_hat = ess = np.full(samples.shape[-1], np.nan)
        out.append(ModeChains(mode=m, chains=chains, samples=samples, r_hat=r_hat, ess=ess, start=start, hmc=hmc))
    return tuple(out)


def merge_mixing_modes(result: ModesResult, refined: Sequence[ModeChains], groups: ChainGroups, maps=None):
    """Merge the modes whose NUTS chains mix: modes are one when ``group_chains`` puts chains
    started in them into one group (the chains crossed between them, so no valley separates
    them; the SMC clustering splits a curved or lobed mode into Gaussian components whose
    straight-line valley test can dip).

    Args:
        result: :func:`weigh_modes` output; refined: :func:`refine_modes` output on it (one
            run); groups: ``group_chains(refined[0].hmc)``; maps: optional :func:`mode_maps`.

    Returns:
        (ModesResult, refined, maps, merged): the merged modes (weights summed; weight errors,
        means, covariances and best points recomputed from the particles; heaviest first), their
        chains with R-hat and ESS over all the merged chains, the maps (the best of the merged
        ones; None if ``maps`` is None), and ``merged``: the original mode indices of each new
        mode.  Unchanged (merged = [[0], [1], ...]) when no chains mix.
    """
    refined = tuple(refined)
    if len(refined) != result.n_modes:
        raise ValueError(f"refined has {len(refined)} entries for {result.n_modes} modes")
    mixing = DisjointSet(range(result.n_modes))
    owner = {c: m for m, r in enumerate(refined) for c in r.chains}
    for group in groups.groups:
        members = sorted({owner[c] for c in group if c in owner})
        for m in members[1:]:
            mixing.merge(members[0], m)
    sets = sorted(sorted(subset) for subset in mixing.subsets())
    if len(sets) == result.n_modes:
        return result, refined, maps, [[m] for m in range(result.n_modes)]
    num_runs = len(result.log_evidence_runs)
    run_index = np.repeat(np.arange(num_runs), result.samples.shape[0] // num_runs)
    new_modes, new_labels = [], np.empty_like(result.labels)
    for members in sets:
        sel = np.isin(result.labels, members)
        w = result.weights[sel]
        mean = np.average(result.samples[sel], axis=0, weights=w)
        cov = np.atleast_2d(np.cov(result.samples[sel], rowvar=False, aweights=np.maximum(w, 1e-300)))
        per_run = np.array([result.weights[sel & (run_index == r)].sum() * num_runs for r in range(num_runs)])
        best = max(members, key=lambda m: result.modes[m].best_log_likelihood)
        new_modes.append(
            Mode(
                weight=float(w.sum()),
                weight_error=float(np.std(per_run, ddof=1) / math.sqrt(num_runs)) if num_runs > 1 else math.nan,
                mean=mean,
                cov=cov,
                std=np.sqrt(np.diag(cov)),
                best_theta=result.modes[best].best_theta,
                best_log_likelihood=result.modes[best].best_log_likelihood,
                n_samples=int(sel.sum()),
            )
        )
    order = np.argsort([-m.weight for m in new_modes], kind="stable")
    sets = [sets[k] for k in order]
    new_modes = [new_modes[k] for k in order]
    for k, members in enumerate(sets):
        new_labels[np.isin(result.labels, members)] = k
    hmc = refined[0].hmc
    new_refined = []
    for k, members in enumerate(sets):
        chains = tuple(sorted(c for m in members for c in refined[m].chains))
        samples = np.asarray(hmc.samples[list(chains)])
        if samples.shape[1] >= 4:
            r_hat = np.asarray(split_gelman_rubin(samples), float)
            ess = np.asarray(effective_sample_size(samples), float)
        else:
            r_hat = ess = np.full(samples.shape[-1], np.nan)
        new_refined.append(
            ModeChains(
                mode=k,
                chains=chains,
                samples=samples,
                r_hat=r_hat,
                ess=ess,
                start=np.vstack([refined[m].start for m in members]),
                hmc=hmc,
            )
        )
    new_maps = None
    if maps is not None:
        points, losses = np.asarray(maps[0]), np.asarray(maps[1])
        best = [min(members, key=lambda m: losses[m]) for members in sets]
        new_maps = (points[best], losses[best])
    merged = dataclasses.replace(
        result,
        modes=tuple(new_modes),
        labels=new_labels,
        settings=dict(result.settings) | {"merged_by_nuts": [list(s) for s in sets]},
    )
    return merged, tuple(new_refined), new_maps, [list(s) for s in sets]


def refine_and_merge(fm: ForwardModel, result: ModesResult, maps=None, **refine_options):
    """NUTS in each mode (:func:`refine_modes`), then the modes whose chains mix merged into one
    (:func:`group_chains`, :func:`merge_mixing_modes`).

    Returns:
        (ModesResult, refined, groups, maps, merged): as :func:`merge_mixing_modes`; ``groups``
        is the ``ChainGroups`` of all the chains, None (and nothing merged) with fewer than 4
        draws per chain.
    """
    refined = refine_modes(fm, result, **refine_options)
    if refined[0].hmc.samples.shape[1] < 4:
        return result, refined, None, maps, [[m] for m in range(result.n_modes)]
    groups = group_chains(refined[0].hmc)
    result, refined, maps, merged = merge_mixing_modes(result, refined, groups, maps)
    return result, refined, groups, maps, merged


def check_modes(
    reference_fm: ForwardModel,
    modes: ModesResult,
    candidate: Sequence[ModeChains],
    *,
    chains_per_mode: int,
    num_warmup: int,
    num_samples: int,
    weight_draws: int = 256,
    thresholds=None,
    seed: int = 0,
    progress: bool = False,
    **hmc_options,
) -> tuple[tuple[ModeChains, ...], dict | None, ModesCrossValidation | None]:
    """The candidate's posterior checked mode by mode against ``reference_fm``'s: reference NUTS
    started in each of the candidate's modes, the reference's mode weights
    (:func:`mode_weights_from_chains`) and :func:`cross_validate_modes`.

    Args:
        modes: the candidate's modes (after :func:`refine_and_merge`); candidate: its chains.
        chains_per_mode, num_warmup, num_samples, seed, progress, **hmc_options: the reference's
            NUTS (:func:`refine_modes`; ``checkpoint``, ``time_limit_s`` included).
        weight_draws: importance draws per mode for the reference weights; thresholds: of each
            mode's ``cross_validate``.

    Returns:
        (reference chains, reference weights, report); the last two are None when either run
        stopped at its time limit (rerun to resume from the checkpoints).
    """
    reference = refine_modes(
        reference_fm,
        modes,
        chains_per_mode=chains_per_mode,
        num_warmup=num_warmup,
        num_samples=num_samples,
        seed=seed,
        progress=progress,
        **hmc_options,
    )
    if not (reference[0].hmc.complete and candidate[0].hmc.complete):
        return reference, None, None
    weights = mode_weights_from_chains(reference_fm, reference, num_draws=weight_draws, seed=seed)
    report = cross_validate_modes(
        reference,
        candidate,
        reference_weights=weights,
        candidate_weights=modes,
        names=reference_fm.free_names,
        thresholds=thresholds,
        seed=seed,
    )
    return reference, weights, report


def group_chains(chains, *, threshold: float = 1.01, quantiles: tuple[float, float] = (0.005, 0.995)) -> ChainGroups:
    """Sort the chains of one multi-chain run into modes, and judge convergence inside each.

    Two chains are in the same mode when their central ``quantiles`` intervals overlap in every
    parameter (connected components of that relation); chains whose intervals are disjoint in
    some parameter sit in different modes.  Within each mode the split R-hat and ESS of its
    chains (``numpyro.diagnostics``) decide convergence (max R-hat <= ``threshold``), so
    R-hat > threshold across modes reads "k modes", while a chain that drifts or sticks inside a
    mode is a failure.

    Args:
        chains: (chains, draws, n_free) array, or an ``HmcResult`` (its ``samples``).
        threshold: R-hat above which a mode has not converged.
        quantiles: the interval compared between chains.

    Returns:
        :class:`ChainGroups`.
    """
    samples = np.asarray(getattr(chains, "samples", chains), dtype=float)
    if samples.ndim != 3 or samples.shape[1] < 4:
        raise ValueError(f"chains must be (chains, draws >= 4, n_free); got shape {samples.shape}")
    if not (0.0 <= quantiles[0] < quantiles[1] <= 1.0):
        raise ValueError(f"quantiles must satisfy 0 <= lo < hi <= 1; got {quantiles}")
    n_chains = samples.shape[0]
    lo = np.quantile(samples, quantiles[0], axis=1)  # (chains, n_free)
    hi = np.quantile(samples, quantiles[1], axis=1)
    overlapping = DisjointSet(range(n_chains))
    for i in range(n_chains):
        for j in range(i + 1, n_chains):
            if np.all((lo[i] <= hi[j]) & (lo[j] <= hi[i])):
                overlapping.merge(i, j)
    groups = tuple(sorted(tuple(sorted(subset)) for subset in overlapping.subsets()))
    labels = np.array([next(g for g, members in enumerate(groups) if i in members) for i in range(n_chains)])
    r_hat = np.stack([np.asarray(split_gelman_rubin(samples[list(g)]), float) for g in groups])
    ess = np.stack([np.asarray(effective_sample_size(samples[list(g)]), float) for g in groups])
    means = np.stack([samples[list(g)].reshape(-1, samples.shape[-1]).mean(axis=0) for g in groups])
    max_r = np.nanmax(r_hat, axis=1)
    converged = max_r <= threshold
    chains_text = " | ".join(str(list(g)) for g in groups)
    if np.all(converged):
        what = "converged" if len(groups) == 1 else "each converged"
        verdict = f"{len(groups)} mode{'s' if len(groups) > 1 else ''} (chains {chains_text}), {what} (max R-hat {max_r.max():.3f} <= {threshold})"
    else:
        bad = ", ".join(
            f"mode {k} (chains {list(groups[k])}) max R-hat {max_r[k]:.3f}" for k in np.flatnonzero(~converged)
        )
        verdict = f"NOT CONVERGED inside {bad} > {threshold}; {len(groups)} mode(s): chains {chains_text}"
    return ChainGroups(
        labels=labels,
        groups=groups,
        means=means,
        r_hat=r_hat,
        ess=ess,
        converged=converged,
        threshold=float(threshold),
        verdict=verdict,
    )


# ------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------
def chi2_at(fm: ForwardModel, theta) -> tuple[float, int]:
    """(chi^2, dof) at theta (n_free,): sum over summaries of (mean - y)^2 / (model variance +
    sigma^2), dof = n_summary - n_free."""
    mean, variance = fm.predict(theta)
    chi2 = float(np.sum((np.asarray(mean) - fm.y) ** 2 / (np.asarray(variance) + fm.sigma**2)))
    return chi2, fm.n_summary - fm.n_free


def _finite_or_none(values):
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 0:
        return float(arr) if np.isfinite(arr) else None
    return [float(v) if np.isfinite(v) else None for v in arr]


def _moments(result: ModesResult, refined) -> list[tuple[np.ndarray, np.ndarray]]:
    """(mean, std) per mode: from the NUTS chains where given, else the weighted particles."""
    if refined is None:
        return [(m.mean, m.std) for m in result.modes]
    if len(refined) != result.n_modes:
        raise ValueError(f"refined has {len(refined)} entries for {result.n_modes} modes")
    return [(r.mean, r.std) for r in refined]


def mode_maps(fm: ForwardModel, modes, **map_options) -> tuple[np.ndarray, np.ndarray]:
    """Each mode's MAP: ``forecasts.find_map`` (adam, then L-BFGS-B) started at the mode's best
    point, all modes in one call.

    Returns:
        ((n_modes, n_free) points, (n_modes,) -ln L there).  Where the optimiser ended worse
        than its start (not finite, or higher -ln L), the mode's best point is kept.
    """
    from .optimize import find_map

    mode_list = _mode_list(modes)
    low, high = np.asarray(fm.prior.low, float), np.asarray(fm.prior.high, float)
    eps = 1e-6 * (high - low)
    starts = np.clip(np.stack([m.best_theta for m in mode_list]), low + eps, high - eps)
    fit = find_map(fm, starts=starts, **map_options)
    points, losses = np.array(fit.points, float), np.array(fit.losses, float)
    for k, mode in enumerate(mode_list):
        start_loss = -float(mode.best_log_likelihood)
        if not np.isfinite(losses[k]) or losses[k] > start_loss:
            points[k], losses[k] = mode.best_theta, start_loss
    return points, losses


def _batched_log_likelihood(fm: ForwardModel) -> Callable:
    """jitted (n, n_free) -> (n,) ln L of ``fm`` (vmap, or ``lax.map`` one point at a time for a
    forward model that is not vectorizable)."""
    if fm.vectorizable:
        return jax.jit(jax.vmap(fm.log_likelihood))
    return jax.jit(lambda x: jax.lax.map(fm.log_likelihood, x))


def mode_evidence(
    fm: ForwardModel, samples, *, num_draws: int = 256, inflate: float = 1.5, seed: int = 0
) -> tuple[float, float]:
    """ln of one mode's evidence ``Z_m = int_mode L pi d theta`` and its standard error, by
    importance sampling from a Gaussian fitted to the mode's draws.

    The proposal q is N(mean, inflate^2 cov) of ``samples`` (n, n_free) (e.g. NUTS chains in
    the mode); ``num_draws`` seeded draws; Z_m = mean(L pi / q) with pi = 1 / (box volume)
    inside the box and 0 outside (draws outside count as 0).  The error is the standard error of
    that mean, propagated to ln Z_m (delta method).  Valid for a mode well separated from the
    others (q then covers only it); a likelihood that is -inf or NaN counts as 0.

    Returns:
        (ln Z_m, its standard error); (-inf, nan) if every draw has zero weight.
    """
    import scipy.stats

    samples = np.asarray(samples, float).reshape(-1, fm.n_free)
    num_draws = _check_positive_int("num_draws", num_draws, 2)
    if not (np.isfinite(inflate) and inflate > 0):
        raise ValueError(f"inflate must be a positive number; got {inflate!r}")
    if samples.shape[0] <= fm.n_free:
        raise ValueError(
            f"mode_evidence needs more than n_free = {fm.n_free} samples to fit a Gaussian; got {samples.shape[0]}"
        )
    low, high = np.asarray(fm.prior.low, float), np.asarray(fm.prior.high, float)
    mean = samples.mean(axis=0)
    cov = inflate**2 * (np.atleast_2d(np.cov(samples, rowvar=False)) + np.diag((1e-9 * (high - low)) ** 2))
    q = scipy.stats.multivariate_normal(mean, cov)
    draws = np.atleast_2d(q.rvs(size=num_draws, random_state=np.random.default_rng(seed))).reshape(num_draws, -1)
    inside = np.all((draws >= low) & (draws <= high), axis=1)
    log_l = np.full(num_draws, -np.inf)
    if inside.any():
        values = np.asarray(_batched_log_likelihood(fm)(jnp.asarray(draws[inside])), float)
        log_l[inside] = np.where(np.isfinite(values), values, -np.inf)
    log_ratio = log_l - np.sum(np.log(high - low)) - q.logpdf(draws)
    if not np.isfinite(log_ratio).any():
        return -math.inf, math.nan
    top = np.max(log_ratio)
    ratio = np.exp(log_ratio - top)
    mean_ratio = ratio.mean()
    se = ratio.std(ddof=1) / math.sqrt(num_draws)
    return float(top + math.log(mean_ratio)), float(se / mean_ratio)


def mode_weights_from_chains(
    fm: ForwardModel, refined: Sequence[ModeChains], *, num_draws: int = 256, inflate: float = 1.5, seed: int = 0
) -> dict:
    """Mode weights from each mode's NUTS chains (:func:`mode_evidence` per mode, seed + m).

    Returns:
        ``{"log_evidence": [ln Z_m], "log_evidence_error": [...], "weight": [w_m],
        "weight_error": [...]}`` with w_m = Z_m / sum Z and its error propagated from the
        independent Z_m errors (delta method).
    """
    if not refined:
        raise ValueError("refined must hold at least one mode's chains")
    log_z, err = zip(
        *[
            mode_evidence(fm, r.samples, num_draws=num_draws, inflate=inflate, seed=seed + m)
            for m, r in enumerate(refined)
        ]
    )
    log_z, err = np.array(log_z), np.nan_to_num(np.array(err), nan=0.0)
    if not np.isfinite(log_z).any():
        raise ValueError("every mode's importance-sampling evidence is zero: the chains' Gaussians miss the likelihood")
    z = np.exp(log_z - np.max(log_z))
    total = z.sum()
    weight = z / total
    var_z = (z * err) ** 2  # var(Z_m) from the relative error of ln Z_m
    # d w_m / d Z_j = (delta_mj total - z_m) / total^2
    jac = (np.eye(len(z)) * total - z[:, None]) / total**2
    weight_error = np.sqrt(jac**2 @ var_z)
    return {
        "log_evidence": log_z.tolist(),
        "log_evidence_error": err.tolist(),
        "weight": weight.tolist(),
        "weight_error": weight_error.tolist(),
        "num_draws": int(num_draws),
        "inflate": float(inflate),
        "method": "importance sampling, Gaussian fitted to each mode's NUTS draws (covariance x inflate^2)",
    }


def mode_table(
    result: ModesResult,
    fm: ForwardModel | None = None,
    refined: Sequence[ModeChains] | None = None,
    digits: int = 3,
    maps=None,
) -> str:
    """Markdown table, one row per mode: weight +- error, mean +- std per parameter (NUTS per
    mode if ``refined``, else the weighted particles), best -ln L, chi^2/dof at the mode's best
    point (if ``fm`` is given), max R-hat (if ``refined``); then the evidence.  With ``maps``
    (``mode_maps``: (points (n_modes, n_free), -ln L (n_modes,))) the best -ln L and chi^2 are
    those at each mode's MAP."""
    points, losses = _map_points(result, maps)
    header = ["mode", "weight"] + list(result.names) + ["best -ln L"]
    header += ["chi^2/dof"] if fm is not None else []
    header += ["max R-hat", "min ESS"] if refined is not None else []
    rows = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for k, (mode, (mean, std)) in enumerate(zip(result.modes, _moments(result, refined))):
        weight = f"{mode.weight:.3f}" + (f" +- {mode.weight_error:.3f}" if np.isfinite(mode.weight_error) else "")
        cells = [str(k), weight] + [f"{mu:.{digits}g} +- {s:.2g}" for mu, s in zip(mean, std)] + [f"{losses[k]:.2f}"]
        if fm is not None:
            chi2, dof = chi2_at(fm, points[k])
            cells.append(f"{chi2:.1f}/{dof}")
        if refined is not None:
            cells += [f"{np.nanmax(refined[k].r_hat):.3f}", f"{np.nanmin(refined[k].ess):.0f}"]
        rows.append("| " + " | ".join(cells) + " |")
    source = "NUTS chains started in each mode" if refined is not None else "the weighted SMC particles"
    where = "each mode's MAP" if maps is not None else "each mode's best particle"
    err = result.log_evidence_error
    rows += [
        "",
        f"ln Z = {result.log_evidence:.3f}"
        + (f" +- {err:.3f}" if np.isfinite(err) else "")
        + f" ({len(result.log_evidence_runs)} independent runs); means +- std from {source}; weights from tempered SMC;"
        f" best -ln L and chi^2 at {where}"
        + (
            f"; {result.n_failed} of {result.n_evaluations} likelihood evaluations failed (-inf/NaN)"
            if result.n_failed
            else ""
        ),
    ]
    return "\n".join(rows)


def _map_points(result: ModesResult, maps) -> tuple[np.ndarray, np.ndarray]:
    """(points, -ln L) per mode: ``maps`` if given (checked), else the modes' best particles."""
    if maps is None:
        return np.stack([m.best_theta for m in result.modes]), np.array([-m.best_log_likelihood for m in result.modes])
    points, losses = np.asarray(maps[0], float), np.asarray(maps[1], float)
    if points.shape != (result.n_modes, len(result.names)) or losses.shape != (result.n_modes,):
        raise ValueError(
            f"maps must be (points ({result.n_modes}, {len(result.names)}), losses ({result.n_modes},)); "
            f"got {points.shape}, {losses.shape}"
        )
    return points, losses


def modes_summary(
    result: ModesResult, refined: Sequence[ModeChains] | None = None, fm: ForwardModel | None = None, maps=None
) -> dict:
    """JSON-ready: ``{"modes": [{"weight", "weight_error", "mean", "std", "r_hat", "ess",
    "best_theta", "best_log_likelihood"}, ...], "log_evidence", "log_evidence_error", ...}``
    (``r_hat``/``ess`` per parameter from ``refined``, else None; NaN written as None).  With
    ``maps`` (``mode_maps``) each mode also carries ``map_theta`` and ``map_neg_log_likelihood``,
    and with ``fm`` ``chi2`` and ``dof`` there (at the best particle without ``maps``)."""
    points, losses = _map_points(result, maps)
    modes = []
    for k, (mode, (mean, std)) in enumerate(zip(result.modes, _moments(result, refined))):
        modes.append(
            {
                "weight": mode.weight,
                "weight_error": _finite_or_none(mode.weight_error),
                "mean": _finite_or_none(mean),
                "std": _finite_or_none(std),
                "r_hat": _finite_or_none(refined[k].r_hat) if refined is not None else None,
                "ess": _finite_or_none(refined[k].ess) if refined is not None else None,
                "best_theta": mode.best_theta.tolist(),
                "best_log_likelihood": _finite_or_none(mode.best_log_likelihood),
                "n_samples": mode.n_samples,
            }
        )
        if maps is not None:
            modes[-1] |= {"map_theta": points[k].tolist(), "map_neg_log_likelihood": _finite_or_none(losses[k])}
        if fm is not None:
            chi2, dof = chi2_at(fm, points[k])
            modes[-1] |= {"chi2": _finite_or_none(chi2), "dof": int(dof)}
    return {
        "names": list(result.names),
        "modes": modes,
        "log_evidence": result.log_evidence,
        "log_evidence_error": _finite_or_none(result.log_evidence_error),
        "log_evidence_error_method": result.settings["log_evidence_error"],
        "n_failed": result.n_failed,
        "n_evaluations": result.n_evaluations,
        "outside_training": result.outside_training,
        "settings": dict(result.settings),
        "times_s": dict(result.times),
    }


# ------------------------------------------------------------------------------------------------
# Cross-validation mode by mode
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModesCrossValidation:
    """Candidate (emulator) versus reference (exact) posterior, mode by mode
    (:func:`cross_validate_modes`).

    Attributes:
        reports: one ``forecasts.CrossValidationReport`` per mode (reference chains started in
            the candidate's mode).
        weights: per mode ``{"candidate", "candidate_error", "reference", "reference_error",
            "difference", "z"}`` (z = difference / combined error; None where an error is 0).
        max_weight_z: |z| above which the weights differ; verdict: FAIL if a mode fails or its
            weights differ, PASS if every mode passes and every weight agrees, else INCONCLUSIVE.
        reference_groups: ``group_chains`` verdict of all the reference chains (did any chain
            leave the mode it was started in?).
    """

    reports: tuple
    weights: tuple[dict, ...]
    max_weight_z: float
    verdict: str
    labels: tuple[str, str]
    reference_groups: str | None = None

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "max_weight_z": self.max_weight_z,
            "reference_groups": self.reference_groups,
            "modes": [
                {"mode": k, "weights": w, "report": r.to_dict()}
                for k, (w, r) in enumerate(zip(self.weights, self.reports))
            ],
        }

    def to_markdown(self) -> str:
        ref, cand = self.labels
        lines = [
            f"## Cross-validation mode by mode: {cand} vs {ref}: **{self.verdict}**",
            "",
            f"Each mode: {ref} NUTS started in the {cand}'s mode; mode weights compared with their errors "
            f"(they differ when |z| > {self.max_weight_z:g}).",
            "",
            f"| mode | {cand} weight | {ref} weight | z | verdict |",
            "| --- | --- | --- | --- | --- |",
        ]
        for k, (w, r) in enumerate(zip(self.weights, self.reports)):
            z = "n/a" if w["z"] is None else f"{w['z']:+.2f}"
            lines.append(
                f"| {k} | {w['candidate']:.3f} +- {w['candidate_error']:.3f} | {w['reference']:.3f} +- "
                f"{w['reference_error']:.3f} | {z} | {r.verdict} |"
            )
        if self.reference_groups:
            lines += ["", f"{ref} chains: {self.reference_groups}"]
        for k, r in enumerate(self.reports):
            lines += ["", f"### Mode {k}", "", r.to_markdown().replace("## Cross-validation", "#### Cross-validation")]
        return "\n".join(lines) + "\n"


def cross_validate_modes(
    reference: Sequence[ModeChains],
    candidate: Sequence[ModeChains],
    *,
    reference_weights: dict,
    candidate_weights,
    names: Sequence[str] | None = None,
    thresholds=None,
    max_weight_z: float = 3.0,
    labels: tuple[str, str] = ("exact", "emulator"),
    seed: int = 0,
) -> ModesCrossValidation:
    """Compare two posteriors mode by mode: ``forecasts.cross_validate`` on each mode's chains,
    and the mode weights with their errors.

    Args:
        reference, candidate: :func:`refine_modes` output of the two forward models on the same
            modes (same order).
        reference_weights: :func:`mode_weights_from_chains` of the reference ("weight",
            "weight_error" lists).
        candidate_weights: the candidate's weights: a :class:`ModesResult` (its SMC weights and
            errors) or a dict like ``reference_weights``.
        thresholds: ``forecasts.crossval.Thresholds`` (default its defaults); max_weight_z:
            |weight difference| / combined error above which the weights differ.
        labels, seed: of each ``cross_validate``.
    """
    from .crossval import Thresholds, cross_validate

    if len(reference) != len(candidate) or not reference:
        raise ValueError(
            f"reference and candidate need the same, non-zero number of modes; got {len(reference)} and {len(candidate)}"
        )
    if isinstance(candidate_weights, ModesResult):
        cand_w = [m.weight for m in candidate_weights.modes]
        cand_e = [m.weight_error if np.isfinite(m.weight_error) else 0.0 for m in candidate_weights.modes]
    else:
        cand_w, cand_e = list(candidate_weights["weight"]), list(candidate_weights["weight_error"])
    ref_w, ref_e = list(reference_weights["weight"]), list(reference_weights["weight_error"])
    if not (len(cand_w) == len(ref_w) == len(reference)):
        raise ValueError(f"{len(cand_w)} candidate and {len(ref_w)} reference weights for {len(reference)} modes")
    if not (np.isfinite(max_weight_z) and max_weight_z > 0):
        raise ValueError(f"max_weight_z must be a positive number; got {max_weight_z!r}")
    thresholds = Thresholds() if thresholds is None else thresholds
    reports = tuple(
        cross_validate(r.samples, c.samples, names=names, thresholds=thresholds, labels=labels, seed=seed)
        for r, c in zip(reference, candidate)
    )
    weights = []
    for cw, ce, rw, re in zip(cand_w, cand_e, ref_w, ref_e):
        err = math.hypot(ce, re)
        weights.append(
            {
                "candidate": float(cw),
                "candidate_error": float(ce),
                "reference": float(rw),
                "reference_error": float(re),
                "difference": float(cw - rw),
                "z": float((cw - rw) / err) if err > 0 else None,
            }
        )
    differ = any(w["z"] is not None and abs(w["z"]) > max_weight_z for w in weights)
    unknown = any(w["z"] is None for w in weights) and len(weights) > 1
    verdicts = [r.verdict for r in reports]
    if "FAIL" in verdicts or differ:
        verdict = "FAIL"
    elif all(v == "PASS" for v in verdicts) and not unknown:
        verdict = "PASS"
    else:
        verdict = "INCONCLUSIVE"
    groups = None
    hmc = getattr(reference[0], "hmc", None)
    if hmc is not None and np.asarray(hmc.samples).shape[1] >= 4:
        groups = group_chains(hmc, threshold=1.01).verdict
    return ModesCrossValidation(
        reports=reports,
        weights=tuple(weights),
        max_weight_z=float(max_weight_z),
        verdict=verdict,
        labels=tuple(labels),
        reference_groups=groups,
    )
