"""Public entry point: ``Model`` (evolve a halo population, exact Jacobians).

>>> model = sapphire.Model()
>>> halos = sapphire.HaloPopulation.from_diffmah(256, seed=0)
>>> out = model.evolve(DEFAULT_PRIOR.centre, halos)
>>> out.log_state.shape, out.success.all()
((256, 7), True)
>>> jac = model.jacobian(DEFAULT_PRIOR.centre, halos)   # (256, 7, 8), d log10 X / d theta
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from . import cosmology
from .config import DEFAULT_CONFIG, ModelConfig
from .devices import shard_halos
from .evolution import Evolution, batch_stiffness, evolve_population
from .halos import HaloForcing, HaloPopulation
from .prior import DEFAULT_PRIOR, Prior
from .solve import HaloSolution, SolverName, SolverSettings


class Model:
    """The exact, differentiable galaxy model: ``evolve`` halos and take exact Jacobians.

    ``solver``: "auto" (default: Tsit5, with Kvaerno3 for groups of halos whose estimated
    stiffness exceeds ``stiffness_threshold``), or one of "tsit5", "kvaerno3", "kvaerno5"
    for every halo.  ``rtol``/``atol`` apply to the log10 states (dex).
    """

    def __init__(
        self,
        config: ModelConfig | None = None,
        solver: SolverName = "auto",
        rtol: float = 1e-5,
        atol: float = 1e-6,
        max_steps: int = 16384,
        prior: Prior = DEFAULT_PRIOR,
        **solver_options,
    ) -> None:
        self.config = config or DEFAULT_CONFIG
        self.settings = SolverSettings(solver=solver, rtol=rtol, atol=atol, max_steps=max_steps, **solver_options)
        if solver not in ("auto", "tsit5", "kvaerno3", "kvaerno5"):
            raise ValueError(f"unknown solver {solver!r}; choose auto, tsit5, kvaerno3 or kvaerno5")
        if not (0 < rtol < 1 and atol > 0 and max_steps > 0):
            raise ValueError(f"need 0 < rtol < 1, atol > 0, max_steps > 0; got {rtol}, {atol}, {max_steps}")
        self.prior = prior

    def __repr__(self) -> str:
        return f"Model(settings={self.settings}, f_rad={self.config.f_rad})"

    # ---- input checks -------------------------------------------------------------
    def check_theta(self, theta) -> jax.Array:
        """theta (8,) inside the prior box, as float64; ``ValueError`` naming the culprit."""
        if isinstance(theta, jax.core.Tracer):
            if theta.shape != (self.prior.ndim,):
                raise ValueError(f"theta must have shape ({self.prior.ndim},); got {theta.shape}")
            return theta
        arr = self.prior.validate(theta)
        if arr.ndim != 1:
            raise ValueError(f"theta must have shape ({self.prior.ndim},); got {arr.shape}")
        return jnp.asarray(arr)

    @staticmethod
    def check_halos(halos) -> HaloPopulation:
        if not isinstance(halos, HaloPopulation):
            raise ValueError(f"halos must be a sapphire.HaloPopulation, got {type(halos).__name__}")
        return halos

    def check_times(self, times) -> jax.Array:
        arr = np.asarray(times, dtype=np.float64)
        t_end = cosmology.present_age(self.config.cosmology)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"times must be a non-empty 1-D array of cosmic times in Gyr; got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"times contains a non-finite value: {arr[~np.isfinite(arr)][0]}")
        if np.any(np.diff(arr) <= 0):
            raise ValueError("times must be strictly increasing")
        if arr[0] <= 0 or arr[-1] > t_end + 1e-9:
            raise ValueError(f"times must lie in (0, t0 = {t_end:.4f}] Gyr; got [{arr[0]}, {arr[-1]}]")
        return jnp.asarray(np.minimum(arr, t_end))

    # ---- public API ---------------------------------------------------------------
    def device_forcing(self, halos: HaloPopulation) -> HaloForcing:
        """The halos' stacked forcing, split over every local device when there are several
        (see ``sapphire.set_host_device_count``) and the batch divides evenly: jit then
        partitions the vmapped solve.  This is the placement for traced use (jit/grad of
        ``summary_function``); a concrete theta goes through :meth:`evolve_placed`."""
        return shard_halos(halos.forcing(), halos.n_halos)

    def evolve_placed(
        self, theta, halos: HaloPopulation, save_times=None, with_jacobian: bool = False, free=None
    ) -> tuple[jax.Array, jax.Array, HaloSolution, dict[str, jax.Array], jax.Array | None]:
        """The compiled solve for a concrete ``theta``, placed on the local devices: ``evolve_population``'s
        (log_state, log_mhalo, solution, diagnostics, jacobian or None), halos in input order.

        A batch without a stiff halo is one call on the device-split forcing.  A batch with
        one (under ``solver="auto"``) runs the grouped explicit/implicit path, whose sort by
        stiffness does not partition under jit (and ``shard_map`` fails inside lineax), so the
        halos are dealt to the devices by rank of stiffness (rank r -> device r mod n: every
        device gets the same mix of stiff and ordinary halos), each device solves its share
        with its own grouping -- one thread per device, so the solves run concurrently -- and
        the results are put back in the caller's halo order.  ``free`` (tuple of parameter
        indices): the Jacobian's columns (None: all 8).
        """
        forcing = halos.forcing()
        devices = jax.local_devices()
        if len(devices) > 1 and halos.n_halos > 1 and self.settings.solver == "auto":
            stiffness = np.asarray(batch_stiffness(jnp.asarray(theta), forcing, self.config))
            if np.any(stiffness > self.settings.stiffness_threshold):
                order = np.argsort(stiffness, kind="stable")
                shares = [order[i :: len(devices)] for i in range(min(len(devices), halos.n_halos))]
                # Place every device's inputs before dispatching any solve: an input gathered on
                # device 0 after a solve was queued there would wait for that solve.
                inputs = [
                    jax.device_put((theta, jax.tree.map(lambda a: a[share], forcing), save_times), device)
                    for device, share in zip(devices, shares)
                ]
                # One thread per device: the Jacobian program does not dispatch asynchronously on
                # CPU, and JAX releases the GIL while a program runs (docs/design.md s.11).
                solve = lambda args: evolve_population(*args, self.settings, self.config, with_jacobian, free)
                with ThreadPoolExecutor(len(inputs)) as pool:
                    parts = list(pool.map(solve, inputs))
                inverse = jnp.asarray(np.argsort(np.concatenate(shares)))
                gather = lambda *xs: jnp.concatenate([jax.device_put(x, devices[0]) for x in xs])[inverse]
                return jax.tree.map(gather, *parts)
        return evolve_population(
            theta, shard_halos(forcing, halos.n_halos), save_times, self.settings, self.config, with_jacobian, free
        )

    def evolve(self, theta, halos: HaloPopulation, times=None) -> Evolution:
        """Evolve every halo from its start to z = 0 (or save at ``times`` [Gyr])."""
        return self._run(theta, halos, times, with_jacobian=False)[0]

    def jacobian(self, theta, halos: HaloPopulation, free=None) -> jax.Array:
        """Exact d log10 X(z=0) / d theta, shape (n_halo, 7, 8); NaN rows for failed solves.

        ``free`` (parameter indices): only those k columns, (n_halo, 7, k), from a sensitivity
        solve that carries k tangents instead of 8 (cheaper for k < 8)."""
        if free is not None:
            free = tuple(sorted({int(i) for i in free}))
            if not free or free[0] < 0 or free[-1] >= self.prior.ndim:
                raise ValueError(f"free must be indices in [0, {self.prior.ndim}); got {free}")
        return self._run(theta, halos, None, with_jacobian=True, free=free)[1]

    def evolve_with_jacobian(self, theta, halos: HaloPopulation, times=None) -> tuple[Evolution, jax.Array]:
        """``evolve`` and the Jacobian of its log states, from one sensitivity solve."""
        return self._run(theta, halos, times, with_jacobian=True)

    # ---- summaries of the population (issue 3; implementation in sapphire.likelihood) ----
    def summaries(self, theta, halos: HaloPopulation, obs=None):
        """Kernel-regression summaries of the z = 0 relations, matched to ``obs``.

        Returns ``sapphire.Summaries`` (NamedTuple): ``mean`` and ``stderr`` (obs.n_summary,),
        relations in ``obs.relations`` order, each at its observed x (``names``, e.g.
        ``"smhm@10.25"``; ``obs.slices`` gives each relation's slice); ``n_failed`` (halos whose
        solve failed: excluded from the regressions) and per-halo ``success``.  One plain
        solve (the compiled function of ``evolve``).  ``obs=None``: ``Observations.default()``.
        """
        from .population_summaries import model_summaries

        return model_summaries(self, theta, halos, obs)

    def summary_jacobian(self, theta, halos: HaloPopulation, obs=None, *, with_stderr: bool = False):
        """Exact d mean / d theta of ``summaries``, shape (obs.n_summary, 8).

        The kernel regression differentiated in the log states (``jax.linearize``) and
        contracted with the state Jacobian of the error-controlled sensitivity solve (one solve,
        the compiled function of ``jacobian``); failed halos carry no weight and no derivative.
        ``with_stderr=True`` returns ``(d mean / d theta, d stderr / d theta)`` from the same
        solve.  Rows of summaries that are NaN (< 2 valid halos) are NaN.
        """
        from .population_summaries import model_summary_jacobian

        return model_summary_jacobian(self, theta, halos, obs, with_stderr)

    def summaries_with_jacobian(self, theta, halos: HaloPopulation, obs=None):
        """``(summaries(...), summary_jacobian(...))`` from ONE sensitivity solve: the cheapest
        exact way to get both (the means come from the sensitivity solve and agree with
        ``summaries`` to the solver tolerance)."""
        from .population_summaries import model_summaries_with_jacobian

        return model_summaries_with_jacobian(self, theta, halos, obs)

    def _run(self, theta, halos, times, with_jacobian, free=None):
        theta = self.check_theta(theta)
        halos = self.check_halos(halos)
        save_times = None if times is None else self.check_times(times)
        log_state, log_mhalo, solution, diagnostics, jacobian = self.evolve_placed(
            theta, halos, save_times, with_jacobian, free
        )
        squeeze = (lambda a: a[:, 0]) if times is None else (lambda a: a)
        t_out = np.array([cosmology.present_age(self.config.cosmology)]) if times is None else np.asarray(save_times)
        evolution = Evolution(
            times=t_out if times is not None else t_out[0],
            log_state=squeeze(log_state),
            log_mhalo=squeeze(log_mhalo),
            success=solution.success,
            num_steps=solution.num_steps,
            implicit=solution.implicit,
            diagnostics={k: squeeze(v) for k, v in diagnostics.items()},
        )
        return evolution, (None if jacobian is None else squeeze(jacobian))
