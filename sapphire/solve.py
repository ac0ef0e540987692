"""The solver: vectorised, jit-compiled float64 solves of many halos and their exact Jacobians.

Strategy (measurements in docs/design.md):

* Each halo is one diffrax solve of the 7 log10 states from its start time to t0; a batch
  is a ``vmap`` of those solves.
* ``solver="auto"`` (default) picks each halo's solver from a cheap stiffness estimate of
  that halo alone: the largest ISM depletion rate (1 - R + eta_M) / t_dep over its history,
  known before solving because eta_M and t_dep are power laws of V_vir(t) and z(t).  A halo
  above ``stiffness_threshold`` runs the implicit solver (Kvaerno3), every other halo the
  explicit one (Tsit5), whatever the rest of the batch (issue 16: a halo's result is the same
  alone or in any batch, on any device).  For speed, halos are sorted by stiffness and cut
  into fixed-size groups; ``lax.cond`` runs one solver per uniform group, and the one group
  that mixes both kinds runs both (each on lanes of its own kind), so an ordinary batch never
  pays for the implicit solver and the shapes stay static (jit, grad, vmap all work).
* Jacobians are forward-mode (``jax.jacfwd`` through ``diffrax.ForwardMode``): 8 tangents
  ride along the primal solve; they are the exact derivatives of the computed solution.
  ``free=`` carries only k of them (a log-likelihood gradient in k < 8 free parameters).
* The vector field takes every time-only quantity (M_h, its rate, z, V_vir, R_vir, t_ff) from
  the forcing spline and a per-batch table on the same grid (:mod:`sapphire.time_tables`).
* A solve that fails or hits ``max_steps`` is flagged (``success=False``) and its outputs
  are replaced by NaN, so that no failed solve can pass as data.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

from . import cosmology
from .config import DEFAULT_CONFIG, ModelConfig
from .halos import HaloForcing
from .physics import N_STATE, initial_log_state, loadings, log_state_derivative_from_kinematics
from .time_tables import CosmicTable, cosmic_table, tabulated_kinematics

SolverName = Literal["auto", "tsit5", "kvaerno3", "kvaerno5"]


@dataclasses.dataclass(frozen=True)
class SolverSettings:
    """Numerical settings (hashable: static under jit).

    rtol/atol apply to the log10 states (dex).  ``stiffness_threshold`` [1/Gyr] is the ISM
    depletion rate above which a halo is solved implicitly under ``solver="auto"``.
    """

    solver: SolverName = "auto"
    rtol: float = 1e-5
    atol: float = 1e-6
    max_steps: int = 16384
    group_size: int | None = None  # None: 64 on CPU; the whole batch on accelerators
    # Per-halo choice (issue 16): 300 /Gyr was faster for plain solves of mixed draws but made the
    # quickstart's exact sensitivity solves 2x slower near it; 1000 kept (docs/design.md s.16).
    stiffness_threshold: float = 1000.0
    implicit_solver: SolverName = "kvaerno3"
    # Error weight of the sensitivities vs the state (1: both controlled alike).  Smaller is
    # faster but leaves small Jacobian entries uncontrolled, so the default stays 1
    # (docs/design.md s.6 and s.11).
    sensitivity_weight: float = 1.0
    # Implicit solver (docs/design.md s.4): the chord iteration stops once its estimated
    # error is below kappa x the step tolerance, and a PI step-size controller
    # (pcoeff, icoeff) damps the step-size oscillation of the stiff corner (step counts and
    # accuracy against an rtol 1e-9 Kvaerno5 solve: docs/design.md s.11).
    implicit_kappa: float = 0.5
    implicit_pcoeff: float = 0.3
    implicit_icoeff: float = 0.3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class FiniteVeryChord(diffrax.VeryChord):
    """diffrax's VeryChord root finder, returning a finite point when it fails.

    Why: diffrax's implicit Runge-Kutta steps call ``optx.root_find(..., throw=False)``
    and simply reject the step when the chord iteration diverges.  But the root's
    derivative is taken by the implicit function theorem (optimistix ``ImplicitAdjoint``),
    whose tangent ``lineax.linear_solve`` throws on non-finite input unconditionally.  A
    diverged iterate (inf/NaN) therefore raised "A linear solver received non-finite input"
    under forward-mode AD, although that step -- and its tangent -- is discarded.  Returning
    zero (a finite stage increment) for a FAILED root keeps that discarded tangent
    computation finite; a converged root is returned untouched, so accepted steps, their
    values and their derivatives are unchanged.
    """

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        failed = result != optx.RESULTS.successful
        y = jax.tree.map(lambda leaf: jnp.where(failed, jnp.zeros_like(leaf), leaf), y)
        return super().postprocess(fn, y, aux, args, options, state, tags, result)


def _implicit_root_finder(kappa: float) -> diffrax.VeryChord:
    return diffrax.with_stepsize_controller_tols(FiniteVeryChord)(kappa=kappa)


def _make_solver(name: str, settings: SolverSettings) -> diffrax.AbstractSolver:
    if name == "tsit5":
        return diffrax.Tsit5()
    if name == "kvaerno3":
        return diffrax.Kvaerno3(root_finder=_implicit_root_finder(settings.implicit_kappa))
    if name == "kvaerno5":
        return diffrax.Kvaerno5(root_finder=_implicit_root_finder(settings.implicit_kappa))
    raise ValueError(f"unknown solver {name!r}; choose tsit5, kvaerno3, kvaerno5 or auto")


def _controller_coefficients(solver_name: str, settings: SolverSettings) -> dict[str, float]:
    """I control for the explicit solver (PI was slower there), PI for the implicit ones."""
    if solver_name == "tsit5":
        return {}
    return {"pcoeff": settings.implicit_pcoeff, "icoeff": settings.implicit_icoeff}


class HaloSolution(NamedTuple):
    """Raw per-halo solver output (arrays carry a leading halo axis once vmapped)."""

    log_state: jax.Array  # (n_save, 7)
    success: jax.Array  # bool
    num_steps: jax.Array  # int
    implicit: jax.Array  # bool: solved with the implicit solver


class HaloSensitivity(NamedTuple):
    """Per-halo solution together with its exact parameter Jacobian."""

    solution: HaloSolution
    jacobian: jax.Array  # (n_save, 7, k): d log10 X / d theta[free] (k = 8 by default)


def _rms(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.mean(x**2))


def _state_and_sensitivity_norm(weight: float):
    """Error norm of the augmented system: the worse of the state's RMS error and
    ``weight`` x the sensitivities' RMS error.  weight = 1 controls both alike; a smaller
    weight loosens the sensitivities' tolerance (by 1/weight) while still catching an
    unstable tangent, whose error grows without bound."""

    def norm(tree: tuple[jax.Array, jax.Array]) -> jax.Array:
        y, sensitivity = tree
        return jnp.maximum(_rms(y), weight * _rms(sensitivity))

    return norm


def _solve_halo(
    theta: jax.Array,
    forcing: HaloForcing,
    save_times: jax.Array | None,
    solver_name: str,
    settings: SolverSettings,
    config: ModelConfig,
    table: CosmicTable,
    with_sensitivity: bool = False,
    free: tuple[int, ...] | None = None,
) -> HaloSolution | HaloSensitivity:
    """Solve one halo from its start time to t0; save at t0 or at ``save_times``.

    ``table``: the batch's :func:`sapphire.time_tables.cosmic_table` on the forcing's time grid;
    the vector field takes every time-only quantity from it and the forcing spline.
    ``free``: indices of the parameters whose sensitivities are carried (None: all 8); the
    Jacobian is then (n_save, 7, len(free)) and the tangent work per step scales with len(free).

    With ``with_sensitivity`` the explicit solver integrates the forward-sensitivity system
    dS/dt = (df/dy) S + df/dtheta alongside the state, under ONE error control that watches
    both (see docs/design.md: the tangents of an explicit solver near its stability limit are
    otherwise unwatched and can be wildly wrong while the state is fine).  The implicit
    solver's tangents are stable; there the Jacobian is forward-mode AD through the solve.
    """
    free_index = np.arange(theta.shape[0]) if free is None else np.asarray(free)
    if with_sensitivity and solver_name != "tsit5":

        def primal(th_free):
            th = theta.at[free_index].set(th_free)
            sol = _solve_halo(th, forcing, save_times, solver_name, settings, config, table)
            return sol.log_state, sol

        jac, sol = jax.jacfwd(primal, has_aux=True)(theta[free_index])
        return HaloSensitivity(sol, jnp.where(sol.success, jac, jnp.nan))

    t_end = cosmology.present_age(config.cosmology)
    t_start = forcing.t_start

    def state_field(t, y, th):
        return log_state_derivative_from_kinematics(y, th, tabulated_kinematics(t, forcing, table, config), config)

    mhalo_start, _ = forcing(t_start)
    y0 = initial_log_state(mhalo_start, cosmology.redshift_at_age(t_start, config.cosmology), config)
    if with_sensitivity:

        def vector_field(t, ys, args):
            y, sensitivity = ys
            dy, tangent = jax.linearize(lambda y_, th_: state_field(t, y_, th_), y, theta)
            directions = (sensitivity.T, jnp.eye(theta.shape[0], dtype=y.dtype)[free_index])
            return dy, jax.vmap(tangent, out_axes=1)(*directions)

        # The initial state does not depend on theta.
        y0 = (y0, jnp.zeros((N_STATE, free_index.size), dtype=y0.dtype))
        controller = diffrax.PIDController(
            rtol=settings.rtol,
            atol=settings.atol,
            norm=_state_and_sensitivity_norm(settings.sensitivity_weight),
            **_controller_coefficients(solver_name, settings),
        )
    else:

        def vector_field(t, y, args):
            return state_field(t, y, theta)

        controller = diffrax.PIDController(
            rtol=settings.rtol, atol=settings.atol, **_controller_coefficients(solver_name, settings)
        )

    if save_times is None:
        saveat = diffrax.SaveAt(t1=True)
    else:
        saveat = diffrax.SaveAt(ts=jnp.clip(save_times, t_start, t_end))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        _make_solver(solver_name, settings),
        t0=t_start,
        t1=t_end,
        dt0=None,
        y0=y0,
        saveat=saveat,
        stepsize_controller=controller,
        max_steps=settings.max_steps,
        throw=False,
        adjoint=diffrax.ForwardMode(),
    )
    success = sol.result == diffrax.RESULTS.successful
    implicit = jnp.asarray(solver_name != "tsit5")
    if with_sensitivity:
        ys, sensitivity = sol.ys
        solution = HaloSolution(jnp.where(success, ys, jnp.nan), success, sol.stats["num_steps"], implicit)
        return HaloSensitivity(solution, jnp.where(success, sensitivity, jnp.nan))
    return HaloSolution(jnp.where(success, sol.ys, jnp.nan), success, sol.stats["num_steps"], implicit)


def stiffness_estimate(theta: jax.Array, forcing: HaloForcing, config: ModelConfig) -> jax.Array:
    """Largest ISM depletion rate (1 - R + eta_M) / t_dep [1/Gyr] over the halo's life.

    Evaluated on the forcing's time grid (times after the halo's start); a cheap upper
    bound on the stiff eigenvalue of the ISM equations, used to choose the solver.
    """
    # The spline's constant coefficients are log10 M_h at the knots: no interpolation needed.
    # Every 4th knot suffices for an estimate (and keeps it cheap next to a solve).
    times = forcing.times[:-1:4]
    mhalo = 10.0 ** forcing.coeffs[3][::4, 0]
    redshift = cosmology.redshift_at_age(times, config.cosmology)
    vvir = cosmology.virial_velocity(mhalo, redshift, config.cosmology)
    load = loadings(theta, redshift, vvir, config)
    rate = (1.0 - config.return_fraction + load.eta_m) / load.t_dep
    return jnp.max(jnp.where(times >= forcing.t_start, rate, 0.0))


def theta_axis(theta: jax.Array) -> int | None:
    """vmap axis of theta over halos: None for one theta (8,) shared by every halo, 0 for one
    theta per halo (n_halo, 8) (many design points solved as one flat batch of lanes)."""
    return 0 if theta.ndim == 2 else None


# jit caches the traced batch solve: "auto" calls it with one signature up to three times (the
# shape of a group's result, the group's explicit branch, the plain batch), and tracing the
# sensitivity solve is a large part of its compile time (docs/design.md s.18).  ``free`` has no
# default: a call that left it out would have another signature, so another trace.
@functools.partial(jax.jit, static_argnames=("solver_name", "settings", "config", "with_sensitivity", "free"))
def _solve_batch(theta, forcings, save_times, solver_name, settings, config, table, with_sensitivity, free):
    return jax.vmap(_solve_halo, in_axes=(theta_axis(theta), 0, None, None, None, None, None, None, None))(
        theta, forcings, save_times, solver_name, settings, config, table, with_sensitivity, free
    )


def _solve_population(
    theta: jax.Array,
    forcings: HaloForcing,
    save_times: jax.Array | None,
    settings: SolverSettings,
    config: ModelConfig,
    with_sensitivity: bool,
    free: tuple[int, ...] | None = None,
) -> HaloSolution | HaloSensitivity:
    # A forcing captured as a constant (a closure under jit) would let XLA fold the table and
    # the initial states at compile time, with its own exp/log, 1 ulp off the run time's: enough
    # to flip an accept/reject decision, so that two programs of the same solve disagree at the
    # solver tolerance.  The barrier keeps every program computing them alike.
    forcings = jax.lax.optimization_barrier(forcings)
    # Every halo of a batch shares one time grid (HaloPopulation): one table of the functions of
    # time alone serves them all.
    table = cosmic_table(forcings.times[0], config)
    if settings.solver != "auto":
        return _solve_batch(
            theta, forcings, save_times, settings.solver, settings, config, table, with_sensitivity, free
        )

    n_halo = forcings.t_start.shape[0]
    # Small groups pay on CPU; on GPUs one wide vmap is faster (docs/design.md s.4, s.11).
    default_group = 64 if jax.default_backend() == "cpu" else n_halo
    group = min(settings.group_size or default_group, n_halo)
    n_groups = -(-n_halo // group)
    padded = n_groups * group
    stiffness = jax.vmap(stiffness_estimate, in_axes=(theta_axis(theta), 0, None))(theta, forcings, config)
    # Each halo's solver is fixed by its own stiffness alone (issue 16): never by its group.
    stiff = stiffness > settings.stiffness_threshold
    # Sort by stiffness, then by start time (a proxy for cost); pad with copies of the last.
    order = jnp.lexsort((forcings.t_start, stiffness))
    order = jnp.concatenate([order, jnp.full((padded - n_halo,), order[-1])])
    stiff_sorted = stiff[order].reshape(n_groups, group)
    # Sorted by stiffness, at most one group mixes stiff and non-stiff halos.  It runs both
    # solvers, each on a copy of the group whose other-kind lanes are replaced by a lane of the
    # right kind (so neither solve pays for lanes it does not keep); every halo keeps the
    # result of its own solver.  Lanes of a vmapped solve are independent (own steps), so a
    # halo's result does not depend on the rest of the batch.
    positions = jnp.arange(group)
    first_stiff = jnp.argmax(stiff_sorted, axis=1)  # per group: a stiff lane, if any
    last_plain = group - 1 - jnp.argmax(~stiff_sorted[:, ::-1], axis=1)  # a non-stiff lane, if any
    plain_lanes = jnp.where(stiff_sorted, last_plain[:, None], positions[None, :])
    stiff_lanes = jnp.where(stiff_sorted, positions[None, :], first_stiff[:, None])
    regroup = lambda a: a[order].reshape((n_groups, group) + a.shape[1:])
    grouped = jax.tree.map(regroup, forcings)
    # One theta per halo travels with its halo; a shared theta is the same for every group.
    per_halo_theta = theta_axis(theta) == 0
    grouped_theta = regroup(theta) if per_halo_theta else jnp.broadcast_to(theta, (n_groups,) + theta.shape)

    def solve_group(args):
        theta_group, forcing_group, stiff_group, plain_idx, stiff_idx = args
        take = lambda idx: lambda a: a[idx]

        def run(solver_name, idx):
            f = jax.tree.map(take(idx), forcing_group)
            th = theta_group[idx] if per_halo_theta else theta_group
            return _solve_batch(th, f, save_times, solver_name, settings, config, table, with_sensitivity, free)

        explicit = lambda _: run("tsit5", plain_idx)
        implicit = lambda _: run(settings.implicit_solver, stiff_idx)
        any_stiff, all_stiff = stiff_group.any(), stiff_group.all()
        # A uniform group runs one solver; the mixed group runs both and selects per halo.
        shape = jax.eval_shape(explicit, None)
        nan_like = lambda _: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shape)
        plain = jax.lax.cond(all_stiff, nan_like, explicit, None)
        stiff_result = jax.lax.cond(any_stiff, implicit, nan_like, None)
        pick = lambda a, b: jnp.where(stiff_group.reshape(stiff_group.shape + (1,) * (a.ndim - 1)), b, a)
        return jax.tree.map(pick, plain, stiff_result)

    def grouped_solve(_):
        solved = jax.lax.map(solve_group, (grouped_theta, grouped, stiff_sorted, plain_lanes, stiff_lanes))
        flat = jax.tree.map(lambda a: a.reshape((padded,) + a.shape[2:]), solved)
        inverse = jnp.argsort(order[:n_halo])
        return jax.tree.map(lambda a: a[:n_halo][inverse], flat)

    if n_groups == 1:
        # One group: with no stiff halo it runs the explicit solver alone, as the plain vmap
        # below would; not compiling that second copy of the explicit solve saves compile time.
        return grouped_solve(None)
    # Ordinary batches (no stiff halo): one plain vmap of the explicit solver, faster than the
    # grouped path when nothing needs the implicit one.
    return jax.lax.cond(
        stiff.any(),
        grouped_solve,
        lambda _: _solve_batch(theta, forcings, save_times, "tsit5", settings, config, table, with_sensitivity, free),
        None,
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _solve_population_differentiable(settings, config, theta, forcings, save_times):
    return _solve_population(theta, forcings, save_times, settings, config, False)


@_solve_population_differentiable.defjvp
def _solve_population_jvp(settings, config, primals, tangents):
    theta, forcings, save_times = primals
    theta_dot = tangents[0]  # the halo forcing and save times are not differentiated
    result = _solve_population(theta, forcings, save_times, settings, config, True)
    solution = result.solution
    # Failed halos carry NaN Jacobians; zero them inside the (linear) tangent map, or its
    # transpose (reverse mode) would multiply NaN by a zero cotangent and poison jax.grad
    # even when the caller masks those halos.  Their primal outputs stay NaN.
    success = solution.success.reshape(solution.success.shape + (1,) * (result.jacobian.ndim - 1))
    safe_jacobian = jnp.where(success, result.jacobian, 0.0)
    theta_dot = jnp.broadcast_to(theta_dot, (success.shape[0], theta_dot.shape[-1]))  # per halo
    log_state_dot = jnp.einsum("h...j,hj->h...", safe_jacobian, theta_dot)
    no_tangent = [np.zeros(a.shape, dtype=jax.dtypes.float0) for a in solution[1:]]
    return solution, HaloSolution(log_state_dot, *no_tangent)


def solve_population(
    theta: jax.Array,
    forcings: HaloForcing,
    save_times: jax.Array | None = None,
    settings: SolverSettings = SolverSettings(),
    config: ModelConfig = DEFAULT_CONFIG,
) -> HaloSolution:
    """Solve every halo of a stacked ``HaloForcing`` at parameters ``theta`` (8,), or at one
    theta per halo (n_halo, 8).

    Pure JAX: jit-, vmap- and differentiable (forward and reverse mode) in ``theta``.  Its
    derivative is supplied by the error-controlled sensitivity solve
    (:func:`solve_population_with_jacobian`), not by differentiating the primal solve.
    ``log_state`` is (n_halo, 1, 7) at t0, or (n_halo, n_save, 7) at ``save_times``.
    """
    return _solve_population_differentiable(settings, config, theta, forcings, save_times)


def solve_population_with_jacobian(
    theta: jax.Array,
    forcings: HaloForcing,
    save_times: jax.Array | None = None,
    settings: SolverSettings = SolverSettings(),
    config: ModelConfig = DEFAULT_CONFIG,
    free: tuple[int, ...] | None = None,
) -> HaloSensitivity:
    """Solve every halo and return d log10 X / d theta, shape (n_halo, n_save, 7, 8); ``theta``
    (8,) or one per halo (n_halo, 8) (each halo's derivative is then with respect to its own).
    ``free`` (static tuple of parameter indices): carry only those k tangents, giving
    d log10 X / d theta[free], shape (n_halo, n_save, 7, k), at ~k/8 of the tangent work."""
    return _solve_population(theta, forcings, save_times, settings, config, True, free)
