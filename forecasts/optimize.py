"""Maximum a posteriori (maximum likelihood under the uniform box) with optax adam, several starts.

The optimiser works in the unit cube u in [0, 1]^n_free of the free prior box, theta = low +
width * u, with a projection (clip) after every update, so the bounds hold exactly and a MAP on a
face of the box is reachable.  Loss = -ln L(theta).  Each start runs

    optax.chain(clip_by_global_norm(1), adam(exponential_decay(lr, 50 steps, x0.95, floor)))

until BOTH the update norm ||u_new - u|| (unit-cube units) and the relative loss change
|L_k - L_{k-1}| / max(|L_k|, 1) fall below ``tol`` (converged), or ``max_steps`` (not converged),
or the loss is not finite (not converged).  Starts are a seeded Latin hypercube in the box.  The
loop is one ``lax.while_loop`` per start, jitted; starts are vmapped when the forward model is
``vectorizable`` (toy, emulator) and run one after another otherwise (exact model).
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

from .forward import ForwardModel, log_likelihood_at, ForwardSpec

__all__ = ["MapOptions", "MapResult", "find_map"]


class MapOptions(NamedTuple):
    """Settings of :func:`find_map` (hashable: a static jit argument).

    learning_rate: initial adam step in unit-cube units (the box has width 1 per parameter).
    decay_rate / transition_steps: staircase decay of the learning rate (x0.95 every 50 steps).
    min_learning_rate: the floor of the decay.
    tol: threshold of both stopping criteria.
    max_steps: cap on steps per start.
    """

    learning_rate: float = 0.02
    decay_rate: float = 0.95
    transition_steps: int = 50
    min_learning_rate: float = 1e-6
    tol: float = 1e-10
    max_steps: int = 10000


@dataclasses.dataclass(frozen=True)
class MapResult:
    """Every start of :func:`find_map`.

    Attributes:
        names: free parameter names.
        starts: (n_starts, n_free) initial points.
        points: (n_starts, n_free) end points.
        losses: (n_starts,) -ln L at the end points (inf if not finite).
        steps: (n_starts,) adam steps taken.
        converged: (n_starts,) both stopping criteria met (and a finite loss).
        best_index: start with the lowest loss (converged starts preferred).
        wall_time: seconds (compilation included).
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

    def to_dict(self) -> dict:
        """JSON-ready view."""
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
    """One start: (u_end, loss_end, steps, converged)."""
    opt = _optimizer(options)
    loss_fn = lambda u: -log_likelihood_at(spec, data, low + width * u)  # noqa: E731
    value_and_grad = jax.value_and_grad(loss_fn)

    def cond(carry):
        _, _, step, update_norm, rel_change, loss = carry
        done = (update_norm < options.tol) & (rel_change < options.tol)
        return (step < options.max_steps) & ~done & jnp.isfinite(loss)

    def body(carry):
        u, opt_state, step, _, _, loss_prev = carry
        loss, grad = value_and_grad(u)
        updates, opt_state = opt.update(grad, opt_state, u)
        u_new = jnp.clip(u + updates, 0.0, 1.0)
        update_norm = jnp.linalg.norm(u_new - u)
        rel_change = jnp.abs(loss - loss_prev) / jnp.maximum(jnp.abs(loss), 1.0)
        rel_change = jnp.where(jnp.isfinite(rel_change), rel_change, jnp.inf)
        return u_new, opt_state, step + 1, update_norm, rel_change, loss

    inf = jnp.asarray(jnp.inf, u0.dtype)
    # carry: u, adam state, steps, last update norm, last relative loss change, last loss
    init = (u0, opt.init(u0), jnp.asarray(0), inf, inf, jnp.asarray(0.0, u0.dtype))
    u, _, steps, update_norm, rel_change, _ = jax.lax.while_loop(cond, body, init)
    loss = loss_fn(u)
    converged = (update_norm < options.tol) & (rel_change < options.tol) & jnp.isfinite(loss)
    return u, jnp.where(jnp.isfinite(loss), loss, jnp.inf), steps, converged


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
        :class:`MapResult` with every start's end point, loss, steps and convergence flag.
    """
    options = (options or MapOptions())._replace(**option_overrides)
    if options.tol <= 0 or options.max_steps < 1 or options.learning_rate <= 0:
        raise ValueError(f"need tol > 0, max_steps >= 1, learning_rate > 0; got {options}")
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
        u, loss, steps, converged = _run_vectorized(fm.spec, fm.data, low, width, u0, options)
    else:
        outs = [_run_single(fm.spec, fm.data, low, width, u0[i], options) for i in range(u0.shape[0])]
        u, loss, steps, converged = (jnp.stack(parts) for parts in zip(*outs))
    u, loss, steps, converged = (np.asarray(a) for a in (u, loss, steps, converged))
    wall = time.perf_counter() - t0
    points = np.clip(prior.from_unit(u), prior.low, prior.high)
    ranked = np.where(converged, loss, loss + np.inf) if converged.any() else loss
    best = int(np.argmin(ranked)) if np.isfinite(ranked).any() else int(np.argmin(loss))
    return MapResult(
        names=fm.free_names,
        starts=theta0,
        points=points,
        losses=loss,
        steps=steps.astype(int),
        converged=converged.astype(bool),
        best_index=best,
        wall_time=wall,
        options=options,
    )
