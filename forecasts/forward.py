"""One forward-model interface for the forecasts: exact model, emulator, or a linear-Gaussian toy.

Every forward model maps the FREE parameters ``theta_free`` (shape (n_free,), in the order of
``free_names``; the other parameters are held at ``fixed``) to a predicted summary vector and
compares it with observations through independent Gaussians:

    ln L(theta) = sum_i -1/2 [ (mu_i - y_i)^2 / v_i + ln(2 pi v_i) ],   v_i = m_i + s_i^2,

with ``mu_i`` the predicted mean, ``m_i`` the model's own variance (exact model: the squared
standard error of the kernel-regression summary; emulator: its error estimate squared, or 0) and
``s_i`` the observational error after the ``sigma_scale`` factor.  This is the likelihood of
``sapphire.log_likelihood`` (normalisation included); a non-finite prediction gives ``-inf``
(gradient 0), never NaN.

``log_likelihood``, ``predict`` and ``summary_jacobian`` are pure JAX: ``jax.jit``, ``jax.grad``,
``jax.hessian`` (see ``hessian_method``) and numpyro can trace them.  Internally a forward model
is a hashable static ``spec`` (which class, which parameters are free, the relation geometry,
solver settings) plus a pytree of arrays ``data`` (observed y and sigma, fixed values, halo
forcing...), so the module-level jitted functions compile once per structure and are reused
by every data set of that structure (mock campaigns).

Classes
-------
``ExactForward(model, halos, obs)``      the exact ODE model (``sapphire.Model``) on a halo population
``EmulatorForward(emu, obs)``           an emulator with the protocol described in its docstring
``LinearGaussianForward(A, b, y, sigma)``  mean = A theta + b: the posterior is known analytically
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import sapphire
from sapphire.likelihood import gaussian_log_likelihood, safe_square, summary_function
from sapphire.observations import Observations
from sapphire.prior import Prior

__all__ = [
    "ForwardModel",
    "ExactForward",
    "EmulatorForward",
    "LinearGaussianForward",
    "ValueAndGrad",
    "ForwardSpec",
    "log_likelihood_at",
    "jit_value_and_grad",
    "resolve_free",
    "resolve_fixed",
    "log_likelihood_and_failures",
    "COVERAGE_GAP",
    "check_training_coverage",
    "warn_failed_halos",
]

#: An emulator is trusted within this many design spacings of its nearest training point.
COVERAGE_GAP = 1.5


class ValueAndGrad(NamedTuple):
    """``log_likelihood_and_grad``: ``value`` (float) and ``grad`` ((n_free,) ndarray)."""

    value: float
    grad: np.ndarray


class ForwardSpec(NamedTuple):
    """Hashable structure of a forward model (a static jit argument)."""

    cls: type
    free_index: tuple[int, ...]
    extra: Any  # subclass-specific, hashable


# ------------------------------------------------------------------------------------------------
# Pure functions of (spec, data, theta_free); the methods of ForwardModel call these.
# ------------------------------------------------------------------------------------------------
def _full_theta(spec: ForwardSpec, data, theta_free):
    theta_free = jnp.asarray(theta_free, jnp.float64)
    return data["fixed"].at[np.asarray(spec.free_index)].set(theta_free)


def _predict_with_failures(spec: ForwardSpec, data, theta_free):
    return spec.cls._predict_full(spec.extra, data, _full_theta(spec, data, theta_free))


def _predict(spec: ForwardSpec, data, theta_free):
    mean, model_variance, _ = _predict_with_failures(spec, data, theta_free)
    return mean, model_variance


def log_likelihood_at(spec: ForwardSpec, data, theta_free):
    """ln L of the forward model ``(spec, data)`` (``fm.spec``, ``fm.data``) at ``theta_free``
    (n_free,): the pure, traceable function behind ``ForwardModel.log_likelihood``, for code
    that jits or samples many forward models of one structure (MAP, Laplace, HMC)."""
    mean, model_variance = _predict(spec, data, theta_free)
    return gaussian_log_likelihood(mean, model_variance, data["y"], data["sigma"])


def log_likelihood_and_failures(spec, data, theta_free):
    """(ln L, number of failed halos excluded from it) at theta_free (n_free,), for a forward
    model's static spec and data arrays; pure JAX, so jitted
    optimisers and samplers can carry the failure count alongside the likelihood."""
    mean, model_variance, n_failed = _predict_with_failures(spec, data, theta_free)
    return gaussian_log_likelihood(mean, model_variance, data["y"], data["sigma"]), n_failed


def _summary_jacobian(spec: ForwardSpec, data, theta_free):
    custom = getattr(spec.cls, "_jacobian_full", None)
    if custom is not None:
        jac = custom(spec.extra, data, _full_theta(spec, data, theta_free))
        return jac[:, np.asarray(spec.free_index)]
    return jax.jacfwd(lambda t: _predict(spec, data, t)[0])(jnp.asarray(theta_free, jnp.float64))


#: ``(spec, data, theta_free) -> (ln L, d ln L / d theta_free)``, compiled once per ``spec``.
jit_value_and_grad = jax.jit(jax.value_and_grad(log_likelihood_at, argnums=2), static_argnums=0)
_jit_value_grad_failures = jax.jit(
    jax.value_and_grad(log_likelihood_and_failures, argnums=2, has_aux=True), static_argnums=0
)
_jit_predict = jax.jit(_predict_with_failures, static_argnums=0)
_jit_summary_jacobian = jax.jit(_summary_jacobian, static_argnums=0)


# ------------------------------------------------------------------------------------------------
# Base class
# ------------------------------------------------------------------------------------------------
def resolve_free(free, names: tuple[str, ...]) -> tuple[int, ...]:
    """Sorted indices of the free parameters ``free`` (names or indices; None: all of ``names``)."""
    if free is None:
        return tuple(range(len(names)))
    items = (free,) if isinstance(free, (str, int, np.integer)) else tuple(free)
    if not items:
        raise ValueError(f"free: no parameter given; choose from {names}")
    index = []
    for item in items:
        if isinstance(item, str):
            if item not in names:
                raise ValueError(f"free: unknown parameter {item!r}; choose from {names}")
            index.append(names.index(item))
        elif isinstance(item, (int, np.integer)) and 0 <= int(item) < len(names):
            index.append(int(item))
        else:
            raise ValueError(f"free: {item!r} is neither a parameter name nor an index < {len(names)}")
    if len(set(index)) != len(index):
        raise ValueError(f"free: parameter given twice in {items}")
    return tuple(sorted(index))


def resolve_fixed(fixed, prior: Prior, free_index: tuple[int, ...]) -> np.ndarray:
    """The full (n_params,) read-only parameter vector: the prior centre, or ``fixed`` (array in
    ``prior.names`` order, or a mapping name -> value), with the held values checked."""
    names = prior.names
    full = prior.centre.astype(np.float64)
    if fixed is None:
        return full
    if isinstance(fixed, Mapping):
        for name, value in fixed.items():
            if name not in names:
                raise ValueError(f"fixed: unknown parameter {name!r}; choose from {names}")
            full[names.index(name)] = float(value)
    else:
        arr = np.asarray(fixed, dtype=np.float64)
        if arr.shape != (len(names),):
            raise ValueError(
                f"fixed must have shape ({len(names)},) in the order {names} (or be a mapping name -> value); got shape {arr.shape}"
            )
        full = arr.copy()
    held = [i for i in range(len(names)) if i not in free_index]
    if held:  # the held values must be valid parameters; the free entries are placeholders
        probe = full.copy()
        probe[list(free_index)] = prior.centre[list(free_index)]
        try:
            prior.validate(probe)
        except ValueError as exc:
            raise ValueError(f"fixed: {exc}") from None
    full.setflags(write=False)
    return full


def _check_sigma_scale(sigma_scale):
    if isinstance(sigma_scale, Mapping):
        return dict(sigma_scale)
    try:
        value = float(sigma_scale)
    except (TypeError, ValueError):
        raise ValueError(
            f"sigma_scale must be a positive number or a mapping relation -> number, got {sigma_scale!r}"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"sigma_scale must be finite and > 0, got {sigma_scale!r}")
    return value


def _select_observations(obs: Observations, relations, sigma_scale) -> Observations:
    if relations is not None:
        obs = obs.select(relations)
    return obs.scaled(sigma_scale)


def _observation_fields(selected: Observations) -> dict:
    """The ``_setup`` arguments that come from the (selected, scaled) observations."""
    return {
        "observations": selected,
        "relations": selected.names,
        "y": selected.y,
        "sigma": selected.sigma,
        "summary_names": sapphire.population_summaries.summary_names(selected),
    }


def _frozen(a) -> np.ndarray:
    arr = np.array(a, dtype=np.float64, copy=True)
    arr.setflags(write=False)
    return arr


class ForwardModel:
    """Shared logic of the forward models (do not instantiate: use a subclass).

    Attributes (read-only):
        parameter_names: all parameters of the underlying model, e.g. ``sapphire.PARAMETER_NAMES``.
        full_prior: the ``sapphire.Prior`` box over all of them.
        free_names / free_index: the free parameters and their indices into ``parameter_names``,
            always in the order of ``parameter_names`` whatever the order given to ``free``.
        fixed: (n_params,) full vector whose non-free entries are used (free entries ignored).
        prior: ``sapphire.Prior`` restricted to the free parameters (the MAP/HMC box).
        observations: ``sapphire.Observations`` actually compared with (selected relations,
            sigma scaled), or None for the toy.
        relations: names of the relations that enter.
        sigma_scale: the factor applied to the observational errors.
        y, sigma: (S,) observed values and (scaled) 1-sigma errors entering the Gaussian.
        summary_names: (S,) names of the summary entries.
        hessian_method: how ``forecasts.laplace`` differentiates twice by default ("autodiff",
            or "fd_grad": central differences of the exact gradient).
        vectorizable: True if ``jax.vmap`` over several theta is cheap (MAP starts, HMC chains).
    """

    hessian_method = "autodiff"
    vectorizable = True
    preferred_chain_method = "vectorized"

    def _setup(
        self,
        *,
        parameter_names: tuple[str, ...],
        full_prior: Prior,
        free,
        fixed,
        observations: Observations | None,
        relations: tuple[str, ...],
        sigma_scale,
        y,
        sigma,
        summary_names: tuple[str, ...],
        extra_spec,
        extra_data: dict,
        description: dict,
    ) -> None:
        free_index = resolve_free(free, tuple(parameter_names))
        fixed_full = resolve_fixed(fixed, full_prior, free_index)
        y, sigma = _frozen(y), _frozen(sigma)
        if y.shape != sigma.shape or y.ndim != 1:
            raise ValueError(f"y and sigma must be 1-D arrays of equal length; got {y.shape} and {sigma.shape}")
        values = {
            "parameter_names": tuple(parameter_names),
            "full_prior": full_prior,
            "free_index": free_index,
            "free_names": tuple(parameter_names[i] for i in free_index),
            "fixed": fixed_full,
            "prior": Prior(
                names=tuple(parameter_names[i] for i in free_index),
                low=tuple(full_prior.low[i] for i in free_index),
                high=tuple(full_prior.high[i] for i in free_index),
            ),
            "observations": observations,
            "relations": tuple(relations),
            "sigma_scale": sigma_scale,
            "y": y,
            "sigma": sigma,
            "summary_names": tuple(summary_names),
            "spec": ForwardSpec(type(self), free_index, extra_spec),
            "data": {"y": jnp.asarray(y), "sigma": jnp.asarray(sigma), "fixed": jnp.asarray(fixed_full), **extra_data},
            "_description": description,
        }
        for key, value in values.items():
            object.__setattr__(self, key, value)

    def __setattr__(self, key, value):
        raise AttributeError(f"{type(self).__name__} is immutable (tried to set {key!r})")

    # ---- subclass hook -------------------------------------------------------------------
    @staticmethod
    def _predict_full(extra, data, theta_full):
        """(mean (S,), model_variance (S,), n_failed scalar) at the full parameter vector."""
        raise NotImplementedError

    # ---- sizes and checks ----------------------------------------------------------------
    @property
    def n_free(self) -> int:
        return len(self.free_index)

    @property
    def n_summary(self) -> int:
        return int(self.y.size)

    def check_theta(self, theta_free) -> jax.Array:
        """``theta_free`` as a float64 array (n_free,) inside ``prior``; ``ValueError`` naming
        the offending value otherwise.  A tracer is only checked for its shape."""
        if isinstance(theta_free, jax.core.Tracer):
            if theta_free.shape != (self.n_free,):
                raise ValueError(
                    f"theta must have shape ({self.n_free},) (free parameters {self.free_names}); got {theta_free.shape}"
                )
            return theta_free
        arr = self.prior.validate(theta_free)
        if arr.ndim != 1:
            raise ValueError(
                f"theta must have shape ({self.n_free},) (free parameters {self.free_names}); got {arr.shape}"
            )
        return jnp.asarray(arr)

    # ---- the forward model ----------------------------------------------------------------
    def full_theta(self, theta_free) -> jax.Array:
        """(n_params,) full parameter vector: ``fixed`` with the free entries replaced."""
        return _full_theta(self.spec, self.data, self.check_theta(theta_free))

    def log_likelihood(self, theta_free) -> jax.Array:
        """ln L at ``theta_free`` (n_free,): float64 scalar, traceable and differentiable (module
        docstring).  A concrete theta is checked against the box (``ValueError``)."""
        return log_likelihood_at(self.spec, self.data, self.check_theta(theta_free))

    def log_likelihood_and_grad(self, theta_free) -> ValueAndGrad:
        """ln L and d ln L / d theta_free (n_free,), jitted (compiled once per structure)."""
        value, grad = jit_value_and_grad(self.spec, self.data, self.check_theta(theta_free))
        return ValueAndGrad(float(value), np.asarray(grad))

    def log_likelihood_and_failures(self, theta_free) -> tuple[jax.Array, jax.Array]:
        """(ln L, n_failed): the log-likelihood and the number of halos whose solve failed and
        were excluded from it (0 for models without halos); traceable (numpyro records n_failed
        per draw from this)."""
        return log_likelihood_and_failures(self.spec, self.data, self.check_theta(theta_free))

    def log_likelihood_grad_and_failures(self, theta_free) -> tuple[float, np.ndarray, int]:
        """(ln L, d ln L / d theta_free (n_free,), n_failed) from one jitted evaluation (the
        optimiser's call)."""
        (value, n_failed), grad = _jit_value_grad_failures(self.spec, self.data, self.check_theta(theta_free))
        return float(value), np.asarray(grad), int(n_failed)

    def predict(self, theta_free) -> tuple[jax.Array, jax.Array]:
        """(mean (S,), model_variance (S,)) of the compared summaries; traceable."""
        return _predict(self.spec, self.data, self.check_theta(theta_free))

    def summary_jacobian(self, theta_free) -> jax.Array:
        """d mean / d theta_free, shape (S, n_free); traceable."""
        return _summary_jacobian(self.spec, self.data, self.check_theta(theta_free))

    def diagnostics(self, theta_free) -> dict:
        """Eager: ``log_likelihood``, ``n_failed`` (halos excluded; 0 except for the exact
        model), ``finite`` (all predictions finite)."""
        mean, variance, n_failed = self.predict_with_failures_numpy(self.check_theta(theta_free))
        value = gaussian_log_likelihood(jnp.asarray(mean), jnp.asarray(variance), self.data["y"], self.data["sigma"])
        return {
            "log_likelihood": float(value),
            "n_failed": int(n_failed),
            "finite": bool(np.all(np.isfinite(mean)) and np.all(np.isfinite(variance))),
        }

    def poorly_supported(self, theta_free) -> list[str] | None:
        """Names of the summaries whose kernel regression sees fewer than
        ``sapphire.summaries.MIN_SUPPORT`` halos at ``theta_free`` (their stderr is inflated), or
        None for models that do not know their halos (emulator, toy)."""
        return None

    def training_coverage(self, theta_free) -> dict | None:
        """Where ``theta_free`` (n_free,) / (n, n_free) lies relative to the region the model was
        trained on: None for models that are not trained (exact model, toy); see
        ``EmulatorForward.training_coverage``."""
        return None

    # ---- eager evaluations (overridden by the exact model to reuse Model's compiled solves) ----
    def predict_with_failures_numpy(self, theta) -> tuple[np.ndarray, np.ndarray, int]:
        """(mean (S,), model_variance (S,), n_failed) at a checked theta, as NumPy."""
        mean, variance, n_failed = _jit_predict(self.spec, self.data, theta)
        return np.asarray(mean), np.asarray(variance), int(n_failed)

    def summary_jacobian_numpy(self, theta) -> np.ndarray:
        """(S, n_free) d mean / d theta_free at a checked theta, as NumPy."""
        return np.asarray(_jit_summary_jacobian(self.spec, self.data, theta))

    # ---- identity ----------------------------------------------------------------------------
    def describe(self) -> dict:
        """JSON-ready description (kind, free/fixed parameters, relations, sigma scale, data)."""
        scale = (
            self.sigma_scale
            if not isinstance(self.sigma_scale, Mapping)
            else {k: float(v) for k, v in self.sigma_scale.items()}
        )
        return {
            "kind": type(self).__name__,
            "free": list(self.free_names),
            "fixed": {
                n: float(v)
                for i, (n, v) in enumerate(zip(self.parameter_names, self.fixed))
                if i not in self.free_index
            },
            "prior": self.prior.to_dict(),
            "relations": list(self.relations),
            "sigma_scale": scale,
            "n_summary": self.n_summary,
            **self._description,
        }

    def fingerprint(self) -> str:
        """16 hex digits of sha256 over ``describe()`` and the numbers y, sigma, fixed (used to
        refuse resuming an HMC checkpoint of a different problem)."""
        h = hashlib.sha256(json.dumps(self.describe(), sort_keys=True, default=str).encode())
        for arr in (self.y, self.sigma, self.fixed):
            h.update(np.ascontiguousarray(arr, dtype="<f8").tobytes())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(free={self.free_names}, relations={self.relations}, n_summary={self.n_summary}, sigma_scale={self.sigma_scale})"


# ------------------------------------------------------------------------------------------------
# Exact model
# ------------------------------------------------------------------------------------------------
class ExactForward(ForwardModel):
    """The exact model: kernel-regression summaries of ``model`` evolved on ``halos``.

    ``ExactForward(model, halos, obs=None, *, free=None, fixed=None, relations=None,
    sigma_scale=1.0)``: ``obs`` (default ``Observations.default()``) restricted to ``relations``
    (a name or names; default all) with errors times ``sigma_scale`` (a number or a mapping
    relation -> number); ``free`` parameter names (default all 8) and ``fixed`` values of the
    others (full 8-vector or mapping; default the prior centre).  Prior box: ``model.prior``.

    ``predict`` returns the summary means and their squared standard errors, so
    ``log_likelihood`` equals ``sapphire.log_likelihood(full_theta, model, halos, obs,
    sigma_scale, relations)``.  Failed halos are excluded (``on_failure="exclude"``); their
    number is in ``diagnostics()["n_failed"]``; a relation left with < 2 valid halos gives -inf.

    Derivatives: first derivatives are the exact, error-controlled sensitivity solve (one per
    gradient), carrying tangents for the free parameters only.  Second derivatives (``laplace``) default to autodiff through that solve (not
    error-controlled, but smooth), which agrees with the Gauss-Newton matrix where central
    differences of exact gradients ("fd_grad") can report a spurious saddle (eta_Z = min(power
    law, 1) kinks where halos reach the clip; the comparison and compile times: docs/design.md
    s.11).  vmap over
    theta turns the solver's per-group ``lax.cond`` into both branches, so MAP starts run one
    after another and HMC chains default to ``chain_method="sequential"``.
    """

    hessian_method = "autodiff"
    vectorizable = False
    preferred_chain_method = "sequential"

    def __init__(
        self,
        model: sapphire.Model,
        halos: sapphire.HaloPopulation,
        obs: Observations | None = None,
        *,
        free=None,
        fixed=None,
        relations=None,
        sigma_scale=1.0,
    ) -> None:
        obs = Observations.default() if obs is None else obs
        if not isinstance(obs, Observations):
            raise ValueError(f"obs must be a sapphire.Observations, got {type(obs).__name__}")
        selected = _select_observations(obs, relations, _check_sigma_scale(sigma_scale))
        # Gradients carry tangents for the free parameters only (the others are constants).
        free_index = resolve_free(free, sapphire.PARAMETER_NAMES)
        summaries = summary_function(model, halos, selected, free=free_index)  # validates model and halos
        self._setup(
            parameter_names=sapphire.PARAMETER_NAMES,
            full_prior=model.prior,
            free=free,
            fixed=fixed,
            sigma_scale=sigma_scale,
            **_observation_fields(selected),
            extra_spec=None,
            extra_data={"summaries": summaries},
            description={
                "model": repr(model.settings),
                "halos": halos.fingerprint(),
                "n_halos": int(halos.n_halos),
                "observations": selected.fingerprint(),
            },
        )
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "halos", halos)

    @staticmethod
    def _predict_full(extra, data, theta_full):
        mean, stderr, success = data["summaries"](theta_full)
        return mean, safe_square(stderr), jnp.sum(~success)

    def predict_with_failures_numpy(self, theta):
        # Model.summaries runs the compiled solve that Model.evolve uses (no new compilation).
        s = self.model.summaries(np.asarray(self.full_theta(theta)), self.halos, self.observations)
        return np.asarray(s.mean), np.asarray(s.stderr) ** 2, int(s.n_failed)

    def poorly_supported(self, theta_free):
        s = self.model.summaries(np.asarray(self.full_theta(theta_free)), self.halos, self.observations)
        return list(s.poorly_supported)

    def summary_jacobian_numpy(self, theta):
        # Model.summary_jacobian: the compiled sensitivity solve of Model.jacobian.
        jac = self.model.summary_jacobian(np.asarray(self.full_theta(theta)), self.halos, self.observations)
        return np.asarray(jac)[:, list(self.free_index)]


# ------------------------------------------------------------------------------------------------
# Emulator
# ------------------------------------------------------------------------------------------------
class _ByIdentity:
    """Hashable-by-identity wrapper (a static jit argument for an arbitrary emulator object)."""

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _ByIdentity) and other.obj is self.obj


def _match_emulator_observations(emu_obs: Observations, obs: Observations) -> None:
    for rel in obs.relations:
        if rel.name not in emu_obs.names:
            raise ValueError(f"obs: relation {rel.name!r} is not emulated; the emulator predicts {emu_obs.names}")
        trained = emu_obs[rel.name]
        if trained.size != rel.size:
            raise ValueError(f"obs: relation {rel.name!r} has {rel.size} points, the emulator's has {trained.size}")
        if not np.allclose(trained.x, rel.x, rtol=0, atol=1e-9):
            i = int(np.flatnonzero(~np.isclose(trained.x, rel.x, rtol=0, atol=1e-9))[0])
            raise ValueError(
                f"obs: relation {rel.name!r} x[{i}] = {rel.x[i]} differs from the emulator's x[{i}] = {trained.x[i]}"
            )


def _emulator_identity(emu) -> str:
    """The emulator's ``fingerprint()`` if it has one; else its class, ``store_fingerprint`` (if
    any) and a digest of its predictions at three fixed points of the box (content, not id)."""
    if callable(getattr(emu, "fingerprint", None)):
        return str(emu.fingerprint())
    prior = emu.prior
    points = [prior.centre, prior.centre - 0.25 * prior.width, prior.centre + 0.3 * prior.width]
    h = hashlib.sha256()
    for theta in points:
        mean, error = emu.predict(jnp.asarray(theta))
        h.update(np.ascontiguousarray(np.asarray(mean), dtype="<f8").tobytes())
        h.update(np.ascontiguousarray(np.asarray(error), dtype="<f8").tobytes())
    return f"{type(emu).__name__}:{getattr(emu, 'store_fingerprint', '')}:{h.hexdigest()[:16]}"


class EmulatorForward(ForwardModel):
    """An emulator of the summaries in place of the exact model.

    ``EmulatorForward(emu, obs=None, include_emulator_error=True, *, free=None, fixed=None,
    relations=None, sigma_scale=1.0)``.

    Emulator protocol: ``emu.observations`` (the ``sapphire.Observations`` it was trained for),
    ``emu.prior`` (``sapphire.Prior`` of the 8 parameters), ``emu.predict(theta8) -> (mean (S,),
    error (S,))`` pure JAX (traceable, differentiable), ``emu.jacobian(theta8) -> (S, 8)``.
    ``obs`` (default ``emu.observations``) may differ from the emulator's in y and sigma (a mock,
    another data set) but each of its relations must be emulated at the same x (``ValueError``
    naming the mismatch); it may hold fewer relations.  ``predict`` gives the emulator mean
    and, if ``include_emulator_error``, the emulator error squared as model variance (else 0);
    with ``include_model_stderr`` (default) and an emulator that knows the exact model's standard
    error (``emu.has_model_stderr``, ``emu.model_stderr(theta)``: artifacts trained since issue
    21) that is added too, as ``ExactForward`` adds it: without it the emulator likelihood is
    narrower than the exact one wherever the kernel regression's error is comparable to sigma_obs
    (median 0.33 sigma_obs, gas ratio 0.79, at the small quickstart's 32 halos; docs/design.md s.17).
    """

    def __init__(
        self,
        emu,
        obs: Observations | None = None,
        include_emulator_error: bool = True,
        *,
        free=None,
        fixed=None,
        relations=None,
        sigma_scale=1.0,
        include_model_stderr: bool = True,
    ) -> None:
        for attr in ("observations", "prior", "predict", "jacobian"):
            if not hasattr(emu, attr):
                raise ValueError(f"emu lacks {attr!r}: not an emulator (needs observations, prior, predict, jacobian)")
        emu_obs = emu.observations
        obs = emu_obs if obs is None else obs
        if not isinstance(obs, Observations):
            raise ValueError(f"obs must be a sapphire.Observations, got {type(obs).__name__}")
        _match_emulator_observations(emu_obs, obs)
        selected = _select_observations(obs, relations, _check_sigma_scale(sigma_scale))
        index = np.concatenate([np.arange(emu_obs.slices[n].start, emu_obs.slices[n].stop) for n in selected.names])
        with_stderr = bool(include_model_stderr) and bool(getattr(emu, "has_model_stderr", False))
        prior = emu.prior
        if tuple(prior.names) != sapphire.PARAMETER_NAMES:
            raise ValueError(
                f"emu.prior names {prior.names} are not sapphire.PARAMETER_NAMES {sapphire.PARAMETER_NAMES}"
            )
        self._setup(
            parameter_names=sapphire.PARAMETER_NAMES,
            full_prior=prior,
            free=free,
            fixed=fixed,
            sigma_scale=sigma_scale,
            **_observation_fields(selected),
            extra_spec=(_ByIdentity(emu), tuple(int(i) for i in index), bool(include_emulator_error), with_stderr),
            extra_data={},
            description={
                "emulator": _emulator_identity(emu),
                "include_emulator_error": bool(include_emulator_error),
                "observations": selected.fingerprint(),
                **({"include_model_stderr": True} if with_stderr else {}),
            },
        )
        object.__setattr__(self, "emulator", emu)
        object.__setattr__(self, "include_emulator_error", bool(include_emulator_error))

    @staticmethod
    def _predict_full(extra, data, theta_full):
        emu, index, with_error, with_stderr = extra
        mean, error = emu.obj.predict(theta_full)
        index = np.asarray(index)
        mean = jnp.asarray(mean)[index]
        variance = safe_square(jnp.asarray(error)[index]) if with_error else jnp.zeros_like(mean)
        if with_stderr:  # the exact model's kernel-regression standard error, as ExactForward adds it
            variance = variance + safe_square(jnp.asarray(emu.obj.model_stderr(theta_full))[index])
        return mean, variance, jnp.zeros((), jnp.int32)

    def training_coverage(self, theta_free) -> dict | None:
        """For free thetas (n_free,) / (n, n_free): ``in_box`` (n,) inside the bounding box of
        the training design (``emu.in_training_range``), ``distance`` (n,) to the nearest
        training point in design spacings (``emu.coverage_distance``; NaN if the artifact records
        no design) and ``outside`` (n,): out of the box or farther than ``COVERAGE_GAP``.  None if
        the emulator knows neither."""
        emu = self.emulator
        arr = np.atleast_2d(np.asarray(theta_free, np.float64))
        full = np.broadcast_to(np.asarray(self.fixed), (arr.shape[0], len(self.parameter_names))).copy()
        full[:, list(self.free_index)] = arr
        has_box, has_distance = hasattr(emu, "in_training_range"), hasattr(emu, "coverage_distance")
        if not (has_box or has_distance):
            return None
        in_box = np.asarray(emu.in_training_range(full), bool).reshape(-1) if has_box else np.ones(arr.shape[0], bool)
        distance = (
            np.asarray(emu.coverage_distance(full), np.float64).reshape(-1)
            if has_distance
            else np.full(arr.shape[0], np.nan)
        )
        outside = ~in_box | (np.isfinite(distance) & (distance > COVERAGE_GAP))
        refined = emu.in_refined_region(full) if hasattr(emu, "in_refined_region") else None
        out = {"in_box": in_box, "distance": distance, "outside": outside}
        if refined is not None:
            out["outside_refined"] = ~np.asarray(refined, bool).reshape(-1)
        return out

    @staticmethod
    def _jacobian_full(extra, data, theta_full):
        emu, index, _, _ = extra
        return jnp.asarray(emu.obj.jacobian(theta_full))[np.asarray(index)]


# ------------------------------------------------------------------------------------------------
# Linear-Gaussian toy
# ------------------------------------------------------------------------------------------------
class LinearGaussianForward(ForwardModel):
    """Toy: mean = A theta + b, no model variance, errors ``sigma`` (times ``sigma_scale``).

    ``LinearGaussianForward(A (S, P), b (S,), y (S,), sigma (S,), prior=None, *, names=None,
    free=None, fixed=None, sigma_scale=1.0)``.  ``prior`` (a ``sapphire.Prior`` over the P
    parameters) defaults to the analytic posterior mean +- 20 analytic marginal sigmas.  Under a
    box much wider than the posterior, the posterior of the free parameters is Gaussian with
    ``analytic_posterior()`` (mean, covariance) = ((A_f^T C^-1 A_f)^-1 A_f^T C^-1 (y - b - A_h
    theta_h), (A_f^T C^-1 A_f)^-1), f = free columns, h = held ones, C = diag(sigma^2).
    """

    def __init__(
        self,
        A,
        b,
        y,
        sigma,
        prior: Prior | None = None,
        *,
        names: Sequence[str] | None = None,
        free=None,
        fixed=None,
        sigma_scale: float = 1.0,
    ) -> None:
        A = np.atleast_2d(np.asarray(A, dtype=np.float64))
        n_summary, n_params = A.shape
        b, y, sigma = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (b, y, sigma))
        for label, v in (("b", b), ("y", y), ("sigma", sigma)):
            if v.shape != (n_summary,):
                raise ValueError(f"{label} must have shape ({n_summary},) to match A {A.shape}; got {v.shape}")
        if not np.all(sigma > 0):
            raise ValueError(f"sigma must be > 0; got {sigma[sigma <= 0][0]}")
        scale = _check_sigma_scale(sigma_scale)
        if isinstance(scale, Mapping):
            raise ValueError("sigma_scale of the toy must be a number")
        if names is None:
            names = tuple(prior.names) if prior is not None else tuple(f"theta_{i}" for i in range(n_params))
        names = tuple(names)
        if len(names) != n_params:
            raise ValueError(f"names: {len(names)} given for {n_params} parameters")
        if prior is None:
            precision = A.T @ (A / sigma[:, None] ** 2)
            cov = np.linalg.inv(precision)
            centre = cov @ (A.T @ ((y - b) / sigma**2))
            half = 20.0 * np.sqrt(np.diag(cov))
            prior = Prior(
                names=names, low=tuple(float(v) for v in centre - half), high=tuple(float(v) for v in centre + half)
            )
        if tuple(prior.names) != names:
            raise ValueError(f"prior names {prior.names} differ from the parameter names {names}")
        self._setup(
            parameter_names=names,
            full_prior=prior,
            free=free,
            fixed=fixed,
            observations=None,
            relations=(),
            sigma_scale=scale,
            y=y,
            sigma=sigma * scale,
            summary_names=tuple(f"y_{i}" for i in range(n_summary)),
            extra_spec=None,
            extra_data={"A": jnp.asarray(A), "b": jnp.asarray(b)},
            description={"A": A.tolist(), "b": b.tolist()},
        )
        object.__setattr__(self, "A", _frozen(A))
        object.__setattr__(self, "b", _frozen(b))

    @staticmethod
    def _predict_full(extra, data, theta_full):
        mean = data["A"] @ theta_full + data["b"]
        return mean, jnp.zeros_like(mean), jnp.zeros((), jnp.int32)

    def analytic_posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean (n_free,), covariance (n_free, n_free)) of the free parameters (no box)."""
        free = list(self.free_index)
        held = [i for i in range(len(self.parameter_names)) if i not in free]
        A_f, A_h = self.A[:, free], self.A[:, held]
        residual = self.y - self.b - A_h @ self.fixed[held]
        weights = 1.0 / self.sigma**2
        precision = A_f.T @ (A_f * weights[:, None])
        cov = np.linalg.inv(precision)
        return cov @ (A_f.T @ (weights * residual)), cov


# ------------------------------------------------------------------------------------------------
# Warnings shared by the optimiser, the Laplace approximation and the sampler
# ------------------------------------------------------------------------------------------------
def check_training_coverage(fm: ForwardModel, theta_free, where: str, what: str = "points") -> dict | None:
    """Summarise ``fm.training_coverage`` of the points (n, n_free) and warn ONCE (a
    ``RuntimeWarning`` with counts) if any lies outside the region the emulator was trained on.
    Returns None (model not trained) or a JSON-ready dict: n, n_outside, n_outside_box,
    max_distance (design spacings; None if unknown), gap (``COVERAGE_GAP``)."""
    cov = fm.training_coverage(theta_free)
    if cov is None:
        return None
    finite = cov["distance"][np.isfinite(cov["distance"])]
    out = {
        "n": int(cov["outside"].size),
        "n_outside": int(cov["outside"].sum()),
        "n_outside_box": int((~cov["in_box"]).sum()),
        "max_distance": float(finite.max()) if finite.size else None,
        "gap": COVERAGE_GAP,
    }
    if "outside_refined" in cov:
        out["n_outside_refined"] = int(cov["outside_refined"].sum())
        if out["n_outside_refined"]:
            import warnings

            warnings.warn(
                f"{where}: {out['n_outside_refined']} of {out['n']} {what} lie outside the region where the emulator "
                "was refined on posterior-local points (sapphire refine; emu.refined_region): its accuracy there is "
                "that of its prior-wide design; refine for this problem (sapphire refine ... --free ...)",
                RuntimeWarning,
                stacklevel=3,
            )
    if out["n_outside"]:
        import warnings

        far = (
            f"; up to {out['max_distance']:.2f} design spacings from the nearest training point"
            if out["max_distance"] is not None
            else ""
        )
        in_gaps = out["n_outside"] - out["n_outside_box"]
        warnings.warn(
            f"{where}: {out['n_outside']} of {out['n']} {what} lie outside the emulator's training coverage "
            f"({out['n_outside_box']} outside the box of its design, {in_gaps} inside it but farther than {COVERAGE_GAP} design "
            f"spacings from any training point{far}): the emulator extrapolates there; extend the design (sapphire generate --extend)",
            RuntimeWarning,
            stacklevel=3,
        )
    return out


def warn_failed_halos(where: str, counts, what: str) -> None:
    """One ``RuntimeWarning`` with counts if any entry of ``counts`` (failed halos per start,
    per draw, ...) is positive."""
    counts = np.asarray(counts)
    if counts.size and counts.max() > 0:
        import warnings

        warnings.warn(
            f"{where}: the likelihood excluded failed halos in {int(np.sum(counts > 0))} of {counts.size} {what} (up to "
            f"{int(counts.max())} halos in one evaluation): those likelihoods are built from fewer halos",
            RuntimeWarning,
            stacklevel=3,
        )
