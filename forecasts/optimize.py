"""Maximum a posteriori (maximum likelihood under the uniform box): optax adam from several
starts, each finished with L-BFGS-B on the box.

The optimiser works in the unit cube u in [0, 1]^n_free of the free prior box, theta = low +
width * u, with a projection (clip) after every update, so the bounds hold exactly and a MAP on a
face of the box is reachable.  Loss = -ln L(theta).  Each start runs

    optax.chain(clip_by_global_norm(1), adam(exponential_decay(lr, 50 steps, x0.95, floor)))

until BOTH the update norm ||u_new - u|| (unit-cube units) and the relative loss change
|L_k - L_{k-1}| / max(|L_k|, 1) fall below ``tol`` (converged), or ``max_steps`` (not converged),
or the loss is not finite (not converged).  Starts are a seeded Latin hypercube in the box.  The
loop is one ``lax.while_loop`` per start, jitted; starts are vmapped when the forward model is
``vectorizable`` (toy, emulator) and run one after another otherwise (exact model).

Adam alone rarely meets its tolerance on a curved valley (the quickstart's emulator: 1 start in 8),
so each start is then finished (``polish``) by SciPy's L-BFGS-B in the unit cube with the box as
its bounds (a quasi-Newton method: superlinear near the optimum, and a MAP on a face stays on
it), from one jitted evaluation of ln L, its gradient and the failed-halo count per call.

Convergence is measured, not taken from an optimiser's flag: at each end point the Newton step
to the optimum, in units of the posterior sigma, is sqrt(g^T F^-1 g) with g the projected
gradient of -ln L (components pushing out of the box at an active bound dropped) and F the
Gauss-Newton Fisher matrix J^T C^-1 J at that point, restricted to the free (inactive)
coordinates.  A start has converged when this is below ``newton_tol`` (0.01 sigma) and its loss
is finite; where F is not positive definite the optimiser's own convergence flag decides.

The converged end points are grouped into modes (single linkage at ``mode_sigma`` = 1 posterior
sigma, in the Mahalanobis metric of the Fisher matrix at the best point), and the spread of each
mode (its largest distance from the mode's best point, in sigma) is reported.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sapphire.prior import latin_hypercube

from .forward import ForwardModel, ForwardSpec, check_training_coverage, log_likelihood_and_failures, warn_failed_halos

__all__ = ["MapOptions", "MapResult", "MapMode", "find_map"]


class MapOptions(NamedTuple):
    """Settings of :func:`find_map` (hashable: a static jit argument).

    learning_rate: initial adam step in unit-cube units (the box has width 1 per parameter).
    decay_rate / transition_steps: staircase decay of the learning rate (x0.95 every 50 steps).
    min_learning_rate: the floor of the decay.
    tol: threshold of both adam stopping criteria.
    max_steps: cap on adam steps per start.
    polish: finish each start with L-BFGS-B on the box.
    polish_max_iter: cap on L-BFGS-B iterations per start.
    newton_tol: a start has converged when its Newton step to the optimum is below this many
        posterior sigmas (module docstring).
    mode_sigma: converged end points closer than this (posterior sigmas) are one mode.
    """

    learning_rate: float = 0.02
    decay_rate: float = 0.95
    transition_steps: int = 50
    min_learning_rate: float = 1e-6
    tol: float = 1e-10
    max_steps: int = 10000
    polish: bool = True
    polish_max_iter: int = 1000
    newton_tol: float = 0.01
    mode_sigma: float = 1.0


class MapMode(NamedTuple):
    """One group of converged end points: ``members`` (start indices, best first), ``theta``
    (the best member's point), ``loss`` (its -ln L) and ``spread_sigma`` (largest distance of a
    member from ``theta``, in posterior sigmas; NaN without a positive-definite Fisher)."""

    members: tuple[int, ...]
    theta: np.ndarray
    loss: float
    spread_sigma: float


@dataclasses.dataclass(frozen=True)
class MapResult:
    """Every start of :func:`find_map`.

    Attributes:
        names: free parameter names.
        starts: (n_starts, n_free) initial points.
        points: (n_starts, n_free) end points.
        losses: (n_starts,) -ln L at the end points (inf if not finite).
        steps: (n_starts,) adam steps taken.
        converged: (n_starts,) Newton step < ``options.newton_tol`` sigma (or, without a
            positive-definite Fisher, the optimiser's own criteria) and a finite loss.
        best_index: start with the lowest loss (converged starts preferred).
        wall_time: seconds (compilation included).
        newton_step: (n_starts,) Newton step to the optimum in posterior sigmas (NaN: unknown).
        polish_message, polish_evaluations: L-BFGS-B's message and function calls per start.
        modes: :class:`MapMode` groups of the converged end points, best first.
        n_failed: (n_starts,) failed halos at each end point; max_failed: (n_starts,) the most
            in any evaluation of that start (adam and L-BFGS-B).
        sigma: (n_free,) Gauss-Newton marginal sigmas at the best point (None if not positive
            definite): the unit of ``newton_step`` and the modes' spreads.
        coverage: None, or for an emulator where the end points lie relative to its training
            design (``forward.check_training_coverage``).
    """

    names: tuple[str, ...]
    starts: np.ndarray
    points: np.ndarray
    losses: np.ndarray
    steps: np.ndarray
    converged: np.ndarray
    best_index: int
    wall_time: float
    options: MapOptions
    newton_step: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    polish_message: tuple[str, ...] = ()
    polish_evaluations: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, int))
    modes: tuple[MapMode, ...] = ()
    n_failed: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, int))
    max_failed: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, int))
    sigma: np.ndarray | None = None
    coverage: dict | None = None

    @property
    def best(self) -> np.ndarray:
        """(n_free,) the best end point."""
        return self.points[self.best_index]

    @property
    def best_loss(self) -> float:
        return float(self.losses[self.best_index])

    @property
    def n_converged(self) -> int:
        return int(np.sum(self.converged))

    @property
    def converged_fraction(self) -> float:
        return float(np.mean(self.converged)) if self.converged.size else 0.0

    @property
    def spread_sigma(self) -> float:
        """Largest distance (posterior sigmas) of a converged end point of the best mode from the
        best point; NaN if nothing converged or no sigma is known."""
        return self.modes[0].spread_sigma if self.modes else float("nan")

    def summary_line(self) -> str:
        """One line: converged fraction, modes and their spreads, failed halos."""
        n = len(self.losses)
        if not self.modes:
            text = f"{self.n_converged}/{n} starts converged"
        else:
            parts = [f"{len(m.members)} at loss {m.loss:.3f} (spread {m.spread_sigma:.3g} sigma)" for m in self.modes]
            text = (
                f"{self.n_converged}/{n} starts converged; {len(self.modes)} mode{'s' if len(self.modes) > 1 else ''}: "
                + "; ".join(parts)
            )
        if self.max_failed.size and self.max_failed.max() > 0:
            text += f"; failed halos in the evaluations of {int(np.sum(self.max_failed > 0))} start(s) (up to {int(self.max_failed.max())})"
        return text

    def to_dict(self) -> dict:
        """JSON-ready view."""
        fin = lambda v: float(v) if np.isfinite(v) else None  # noqa: E731
        return {
            "names": list(self.names),
            "best": self.best.tolist(),
            "best_loss": self.best_loss,
            "best_index": self.best_index,
            "starts": self.starts.tolist(),
            "points": self.points.tolist(),
            "losses": [float(v) if np.isfinite(v) else None for v in self.losses],
            "steps": self.steps.tolist(),
            "converged": self.converged.tolist(),
            "converged_fraction": self.converged_fraction,
            "newton_step_sigma": [fin(v) for v in self.newton_step],
            "polish_message": list(self.polish_message),
            "polish_evaluations": np.asarray(self.polish_evaluations).tolist(),
            "sigma": None if self.sigma is None else self.sigma.tolist(),
            "modes": [
                {
                    "members": list(m.members),
                    "theta": m.theta.tolist(),
                    "loss": m.loss,
                    "spread_sigma": fin(m.spread_sigma),
                }
                for m in self.modes
            ],
            "spread_sigma": fin(self.spread_sigma),
            "n_failed": np.asarray(self.n_failed).tolist(),
            "max_failed": np.asarray(self.max_failed).tolist(),
            "training_coverage": self.coverage,
            "wall_time_s": self.wall_time,
            "options": self.options._asdict(),
        }


def _optimizer(options: MapOptions) -> optax.GradientTransformation:
    schedule = optax.exponential_decay(
        init_value=options.learning_rate,
        transition_steps=options.transition_steps,
        decay_rate=options.decay_rate,
        staircase=True,
        end_value=options.min_learning_rate,
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def _run_one(spec: ForwardSpec, data, low, width, u0, options: MapOptions):
    """One start: (u_end, loss_end, steps, converged, largest number of failed halos in any
    evaluation)."""
    opt = _optimizer(options)

    def loss_and_failures(u):
        value, n_failed = log_likelihood_and_failures(spec, data, low + width * u)
        return -value, n_failed

    value_and_grad = jax.value_and_grad(loss_and_failures, has_aux=True)

    def cond(carry):
        _, _, step, update_norm, rel_change, loss, _ = carry
        done = (update_norm < options.tol) & (rel_change < options.tol)
        return (step < options.max_steps) & ~done & jnp.isfinite(loss)

    def body(carry):
        u, opt_state, step, _, _, loss_prev, worst = carry
        (loss, n_failed), grad = value_and_grad(u)
        updates, opt_state = opt.update(grad, opt_state, u)
        u_new = jnp.clip(u + updates, 0.0, 1.0)
        update_norm = jnp.linalg.norm(u_new - u)
        rel_change = jnp.abs(loss - loss_prev) / jnp.maximum(jnp.abs(loss), 1.0)
        rel_change = jnp.where(jnp.isfinite(rel_change), rel_change, jnp.inf)
        return u_new, opt_state, step + 1, update_norm, rel_change, loss, jnp.maximum(worst, n_failed)

    inf = jnp.asarray(jnp.inf, u0.dtype)
    # carry: u, adam state, steps, last update norm, last relative loss change, last loss, most failed halos
    init = (u0, opt.init(u0), jnp.asarray(0), inf, inf, jnp.asarray(0.0, u0.dtype), jnp.asarray(0, jnp.int32))
    u, _, steps, update_norm, rel_change, _, worst = jax.lax.while_loop(cond, body, init)
    loss, n_failed = loss_and_failures(u)
    converged = (update_norm < options.tol) & (rel_change < options.tol) & jnp.isfinite(loss)
    return u, jnp.where(jnp.isfinite(loss), loss, jnp.inf), steps, converged, jnp.maximum(worst, n_failed)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _run_vectorized(spec, data, low, width, u0, options):
    return jax.vmap(_run_one, in_axes=(None, None, None, None, 0, None))(spec, data, low, width, u0, options)


_run_single = jax.jit(_run_one, static_argnums=(0, 5))


def find_map(
    fm: ForwardModel,
    n_starts: int = 8,
    seed: int = 0,
    *,
    starts=None,
    options: MapOptions | None = None,
    vectorize: bool | None = None,
    **option_overrides,
) -> MapResult:
    """Minimise -ln L over the free prior box from several starts.

    Args:
        fm: a forward model (``forecasts.ExactForward``, ``EmulatorForward``, ...).
        n_starts: number of starts (a seeded Latin hypercube in the box); ignored if ``starts``.
        seed: seed of the starts.
        starts: optional (n, n_free) starting points inside the box.
        options: :class:`MapOptions`; keyword overrides (``learning_rate=...``, ``tol=...``,
            ``max_steps=...``, ...) are applied on top.
        vectorize: vmap the starts (default ``fm.vectorizable``).

    Returns:
        :class:`MapResult` with every start's end point, loss, steps, convergence flag and Newton
        step (sigmas), the modes of the converged points and the failed halos of every start's
        evaluations (``max_failed``: most in one evaluation; ``n_failed``: at the end point); a
        ``RuntimeWarning`` says how many starts met failed halos.
    """
    options = (options or MapOptions())._replace(**option_overrides)
    if options.tol <= 0 or options.max_steps < 1 or options.learning_rate <= 0:
        raise ValueError(f"need tol > 0, max_steps >= 1, learning_rate > 0; got {options}")
    if options.newton_tol <= 0 or options.mode_sigma <= 0 or options.polish_max_iter < 1:
        raise ValueError(f"need newton_tol > 0, mode_sigma > 0, polish_max_iter >= 1; got {options}")
    prior = fm.prior
    if starts is None:
        if int(n_starts) < 1:
            raise ValueError(f"n_starts must be >= 1, got {n_starts}")
        theta0 = latin_hypercube(prior, int(n_starts), seed=seed)
    else:
        theta0 = np.atleast_2d(np.asarray(starts, dtype=np.float64))
        if theta0.ndim != 2 or theta0.shape[1] != fm.n_free:
            raise ValueError(f"starts must have shape (n, {fm.n_free}); got {np.shape(starts)}")
        try:
            prior.validate(theta0)
        except ValueError as exc:
            raise ValueError(f"starts: {exc}") from None
    low, width = jnp.asarray(prior.low), jnp.asarray(prior.width)
    u0 = jnp.asarray(prior.to_unit(theta0))
    vectorize = fm.vectorizable if vectorize is None else bool(vectorize)
    t0 = time.perf_counter()
    if vectorize:
        u, loss, steps, converged, worst = _run_vectorized(fm.spec, fm.data, low, width, u0, options)
    else:
        outs = [_run_single(fm.spec, fm.data, low, width, u0[i], options) for i in range(u0.shape[0])]
        u, loss, steps, converged, worst = (jnp.stack(parts) for parts in zip(*outs))
    u, loss, steps, converged, worst = (np.asarray(a) for a in (u, loss, steps, converged, worst))
    u, loss, converged, worst = u.copy(), loss.copy(), converged.copy(), worst.astype(int)
    n = u.shape[0]
    messages, evaluations = [""] * n, np.zeros(n, int)
    if options.polish:
        for i in range(n):
            u[i], loss[i], messages[i], evaluations[i], polish_worst, success = _polish(fm, u[i], options)
            worst[i] = max(worst[i], polish_worst)
            converged[i] = success
    points = np.clip(prior.from_unit(u), prior.low, prior.high)
    newton, n_failed, fishers = np.full(n, np.nan), np.zeros(n, int), [None] * n
    for i in range(n):
        if not np.isfinite(loss[i]):
            continue
        newton[i], n_failed[i], fishers[i] = _newton_step(fm, points[i])
        if np.isfinite(newton[i]):
            converged[i] = newton[i] < options.newton_tol
    converged = converged & np.isfinite(loss)
    worst = np.maximum(worst, n_failed)
    wall = time.perf_counter() - t0
    ranked = np.where(converged, loss, np.inf) if converged.any() else loss
    best = int(np.argmin(ranked)) if np.isfinite(ranked).any() else int(np.argmin(loss))
    best_fisher = fishers[best]
    sigma = None if best_fisher is None or not best_fisher.positive_definite else best_fisher.sigmas
    modes = _group_modes(points, loss, converged, best_fisher, prior, options.mode_sigma)
    result = MapResult(
        names=fm.free_names,
        starts=theta0,
        points=points,
        losses=loss,
        steps=steps.astype(int),
        converged=converged.astype(bool),
        best_index=best,
        wall_time=wall,
        options=options,
        newton_step=newton,
        polish_message=tuple(messages),
        polish_evaluations=evaluations,
        modes=modes,
        n_failed=n_failed,
        max_failed=worst,
        sigma=sigma,
        coverage=check_training_coverage(fm, points, "find_map", "MAP end points"),
    )
    warn_failed_halos("find_map", worst, "starts")
    return result


def _polish(fm: ForwardModel, u0: np.ndarray, options: MapOptions):
    """L-BFGS-B from u0 in the unit cube: (u, loss, message, evaluations, most failed halos,
    the optimiser's success flag)."""
    from scipy.optimize import minimize

    prior = fm.prior
    low, high, width = np.asarray(prior.low), np.asarray(prior.high), np.asarray(prior.width)
    worst = 0

    def fun(u):
        nonlocal worst
        value, grad, n_failed = fm.log_likelihood_grad_and_failures(np.clip(low + width * u, low, high))
        worst = max(worst, n_failed)
        if not np.isfinite(value):  # the line search backs off
            return 1e300, np.zeros_like(u)
        return -value, -grad * width

    res = minimize(
        fun,
        np.clip(u0, 0.0, 1.0),
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, 1.0)] * u0.size,
        options={"maxiter": options.polish_max_iter, "ftol": 1e-15, "gtol": 1e-12},
    )
    loss = float(res.fun) if res.fun < 1e299 else np.inf
    return np.clip(res.x, 0.0, 1.0), loss, str(res.message), int(res.nfev), worst, bool(res.success)


def _newton_step(fm: ForwardModel, theta: np.ndarray):
    """(Newton step to the optimum in posterior sigmas (NaN without a positive-definite Fisher on
    the free coordinates), failed halos at theta, Gauss-Newton FisherResult at theta)."""
    from .fisher import gauss_newton_fisher

    value, grad, n_failed = fm.log_likelihood_grad_and_failures(theta)
    fisher = gauss_newton_fisher(fm, theta)
    if not np.isfinite(value) or not np.all(np.isfinite(fisher.matrix)):
        return np.nan, n_failed, fisher
    g = -grad  # gradient of the loss
    prior = fm.prior
    at_low = theta <= np.asarray(prior.low) + 1e-12 * np.asarray(prior.width)
    at_high = theta >= np.asarray(prior.high) - 1e-12 * np.asarray(prior.width)
    free = ~((at_low & (g > 0)) | (at_high & (g < 0)))
    if not free.any():
        return 0.0, n_failed, fisher
    F = fisher.matrix[np.ix_(free, free)]
    try:
        chol = np.linalg.cholesky(F)
    except np.linalg.LinAlgError:
        return np.nan, n_failed, fisher
    w = np.linalg.solve(chol, g[free])
    return float(np.sqrt(w @ w)), n_failed, fisher


def _group_modes(points, losses, converged, fisher, prior, mode_sigma) -> tuple[MapMode, ...]:
    """Single-linkage groups of the converged points (module docstring), best mode first."""
    from scipy.cluster.hierarchy import fcluster, linkage

    idx = np.flatnonzero(converged)
    if idx.size == 0:
        return ()
    if fisher is not None and fisher.positive_definite:
        transform, threshold = np.linalg.cholesky(fisher.matrix), float(mode_sigma)  # |L^T d| = Mahalanobis distance
        whiten = lambda d: d @ transform  # noqa: E731
    else:  # no sigma: group in the unit cube at 1e-3 of the box width, spreads unknown
        threshold = 1e-3
        whiten = lambda d: d / np.asarray(prior.width)  # noqa: E731
    coords = whiten(points[idx])
    labels = (
        fcluster(linkage(coords, method="single"), t=threshold, criterion="distance")
        if idx.size > 1
        else np.ones(1, int)
    )
    modes = []
    for lab in np.unique(labels):
        members = idx[labels == lab]
        members = members[np.argsort(losses[members])]
        best = members[0]
        spread = (
            float(np.max(np.linalg.norm(whiten(points[members] - points[best]), axis=1)))
            if fisher is not None and fisher.positive_definite
            else float("nan")
        )
        modes.append(MapMode(tuple(int(m) for m in members), points[best].copy(), float(losses[best]), spread))
    return tuple(sorted(modes, key=lambda m: m.loss))
