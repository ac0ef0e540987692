"""The trained emulator (:class:`SobolevEmulator`) and its on-disk artifact.

Artifact layout (a directory, conventionally ``NAME.emu``)::

    NAME.emu/metadata.json   format version, sapphire version, architecture, prior,
                             observations, summary names, training-store fingerprint and
                             identity (model config, solver, halos), training settings and
                             history, split indices, calibration factor, seed
    NAME.emu/arrays.npz      ensemble parameters (leading member axis K) and the scalings

``SobolevEmulator.load`` refuses (``ValueError`` with the reason) a missing or corrupt
artifact, an unknown or newer format version, and, when ``observations`` is given, an
observation set whose relations or kernel centres (x) differ from those it was trained on
(y and sigma may differ: mock data sets keep the summaries' definition).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import sapphire
from sapphire.jsonio import json_ready
from sapphire.observations import Observations
from sapphire.population_summaries import summary_names
from sapphire.prior import Prior
from sapphire.summaries import SUMMARY_DEFINITION, SUMMARY_DEFINITION_TEXT

from .network import Architecture, Scalings, abstract_graphdef, ensemble_apply

_CONST_KEYS = ("low", "width", "mean", "std", "decoder", "calibration")
_PRECISIONS = {"float32": jnp.float32, "float64": jnp.float64}

#: Version of the artifact format this code writes (and the newest it reads).
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
#: ``model_stderr``'s bandwidth in units of the training design's median nearest-neighbour
#: distance, and its slope penalty relative to the total kernel weight.  Chosen on the small
#: quickstart (seed 0, benchmarks/likelihood_tilt.py): the ln L tilt along A_etaM from the
#: interpolated stderr was -0.27 nats per posterior sd with a kernel mean at 1 spacing, -0.037
#: with this local-linear fit (0.5 spacing, 1e-3), -0.034 at 0.35 spacing, -0.14 with 1e-1.
STDERR_BANDWIDTH = 0.5
STDERR_RIDGE = 1e-3
ARRAYS_FILE = "arrays.npz"


class SobolevEmulator:
    """A deep ensemble of K smooth MLPs emulating the summaries and their theta-Jacobian.

    Build with :func:`emulator.train_emulator` or :meth:`load`.

    * ``predict(theta)`` -> ``(mean, error)``: theta (8,) -> two (S,) arrays, or (n, 8) -> two
      (n, S); ``mean`` the ensemble mean of the summaries (dex, the units of the training
      store), ``error`` the ensemble standard deviation times ``calibration_factor``
      (``calibrated=False``: the raw spread).  Pure jnp, no eager checks: traceable by
      ``jax.jit``, ``jax.grad``, ``jax.jacfwd``, numpyro.
    * ``jacobian(theta)`` -> (S, 8) (or (n, S, 8)): d mean / d theta in physical theta units.
    * ``check_theta(theta)`` raises ``ValueError`` naming a value outside the prior box;
      ``in_training_range(theta)`` says whether theta lies in the box of the training design.

    Attributes: ``prior``, ``observations``, ``summary_names``, ``store_fingerprint``,
    ``ensemble_size``, ``architecture``, ``scalings``, ``calibration_factor``, ``training``
    (settings, excluded-point counts, split, history), ``store_identity``, ``precision``.

    ``precision``: the network's arithmetic when evaluated, "float32" (default) or "float64";
    inputs, scalings and outputs stay float64 and training is always float64.  float32 is faster
    and moves the outputs by ~1e-7 relative, far below the emulator's own error (timings:
    docs/design.md s.11; README).  Use "float64" for
    finite-difference checks with steps below ~1e-4 of the prior width.
    """

    def __init__(
        self,
        *,
        architecture: Architecture,
        params,
        scalings: Scalings,
        prior: Prior,
        observations: Observations,
        summary_names: tuple[str, ...],
        store_fingerprint: str,
        store_identity: dict[str, Any] | None = None,
        training: dict[str, Any] | None = None,
        calibration_factor: float = 1.0,
        theta_range: tuple[np.ndarray, np.ndarray] | None = None,
        sapphire_version: str | None = None,
        precision: str = "float32",
        training_theta: np.ndarray | None = None,
        refined_region: list[dict] | None = None,
        training_stderr: np.ndarray | None = None,
    ) -> None:
        self.architecture = architecture
        self.refined_region = None if refined_region is None else [dict(r) for r in refined_region]
        self.params = params
        self.scalings = scalings
        self.prior = prior
        self.observations = observations
        self.summary_names = tuple(summary_names)
        self.store_fingerprint = str(store_fingerprint)
        self.store_identity = dict(store_identity or {})
        self.training = dict(training or {})
        low = np.asarray(prior.low, np.float64) if theta_range is None else np.asarray(theta_range[0], np.float64)
        high = np.asarray(prior.high, np.float64) if theta_range is None else np.asarray(theta_range[1], np.float64)
        self.theta_range = (low, high)
        self.training_theta = (
            None if training_theta is None else np.array(training_theta, np.float64).reshape(-1, prior.ndim)
        )
        self._coverage = None  # (KD tree of the training design in the unit cube, design spacing), built on first use
        self.training_stderr = (
            None
            if training_stderr is None or self.training_theta is None
            else np.array(training_stderr, np.float64).reshape(self.training_theta.shape[0], -1)
        )
        self._stderr_model = None
        self.sapphire_version = sapphire_version or sapphire.__version__
        if len(self.summary_names) != scalings.summary_mean.shape[0]:
            raise ValueError(
                f"emulator: {len(self.summary_names)} summary names but scalings for "
                f"{scalings.summary_mean.shape[0]} summaries"
            )
        self._leaves64, self._treedef = jax.tree.flatten(params)
        self._consts = {
            "low": jnp.asarray(scalings.theta_low),
            "width": jnp.asarray(scalings.theta_width),
            "mean": jnp.asarray(scalings.summary_mean),
            "std": jnp.asarray(scalings.summary_std),
            "decoder": jnp.asarray(scalings.decoder),
        }
        self._precision = _checked_precision(precision)
        self.calibration_factor = calibration_factor  # checked; builds the jitted functions

    # ------------------------------------------------------------------------------------------
    # Properties
    # ------------------------------------------------------------------------------------------
    @property
    def calibration_factor(self) -> float:
        """Factor on the ensemble spread in ``predict``'s error (1: the raw spread)."""
        return self._calibration_factor

    @calibration_factor.setter
    def calibration_factor(self, value: float) -> None:
        value = float(value)
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"calibration_factor must be finite and > 0, got {value}")
        self._calibration_factor = value
        self._build_functions()

    @property
    def precision(self) -> str:
        """The network's arithmetic when evaluated: "float32" or "float64" (see the class doc)."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        self._precision = _checked_precision(value)
        self._build_functions()

    def with_precision(self, precision: str) -> SobolevEmulator:
        """A copy evaluated in ``precision`` ("float32" or "float64"); this one is unchanged."""
        other = copy.copy(self)
        other.precision = precision
        return other

    def _build_functions(self) -> None:
        dtype = _PRECISIONS[self._precision]
        self.graphdef, _ = abstract_graphdef(self.architecture, dtype=dtype)
        self._leaves = tuple(jnp.asarray(leaf, dtype) for leaf in self._leaves64)
        consts = dict(self._consts, calibration=jnp.asarray(self._calibration_factor, jnp.float64))
        self._arrays = (self._leaves, tuple(consts[k] for k in _CONST_KEYS))
        # The weights are closed over (compile-time constants), not passed as arguments: XLA then
        # lays them out once at compilation, faster per call than passing them in (s.11).
        arrays = self._arrays
        self._members_jit = jax.jit(functools.partial(self._members_pure, arrays))
        self._predict_jit = jax.jit(functools.partial(self._predict_pure, arrays), static_argnames=("calibrated",))
        self._jacobian_jit = jax.jit(functools.partial(self._jacobian_pure, arrays))
        self._predict_and_jacobian_jit = jax.jit(functools.partial(self._predict_and_jacobian_pure, arrays))

    @property
    def ensemble_size(self) -> int:
        return int(self._leaves[0].shape[0])

    @property
    def n_summary(self) -> int:
        return len(self.summary_names)

    def __repr__(self) -> str:
        return (
            f"SobolevEmulator(summaries={self.n_summary}, ensemble={self.ensemble_size}, "
            f"hidden={self.architecture.hidden}, activation={self.architecture.activation!r}, "
            f"gradient_weight={self.training.get('gradient_weight')}, store={self.store_fingerprint!r})"
        )

    # ------------------------------------------------------------------------------------------
    # Pure functions of (arrays, theta); ``arrays`` = (parameter leaves, scalings) is bound as
    # a constant of the jitted functions.
    # ------------------------------------------------------------------------------------------
    def _members_pure(self, arrays, theta):
        """theta (..., 8) -> member summaries (K, ..., S), physical units."""
        leaves, consts = arrays
        c = dict(zip(_CONST_KEYS, consts))
        theta = jnp.asarray(theta, jnp.float64)
        params = jax.tree.unflatten(self._treedef, leaves)
        u = ((theta - c["low"]) / c["width"]).astype(_PRECISIONS[self._precision])
        z = ensemble_apply(self.graphdef, params, u).astype(jnp.float64) @ c["decoder"]
        return c["mean"] + c["std"] * z

    def _spread(self, arrays, members, mean, calibrated):
        k = members.shape[0]
        if k == 1:
            return jnp.zeros_like(mean)
        spread = jnp.sqrt(jnp.sum((members - mean) ** 2, axis=0) / (k - 1))
        return arrays[1][_CONST_KEYS.index("calibration")] * spread if calibrated else spread

    def _predict_pure(self, arrays, theta, calibrated=True):
        members = self._members_pure(arrays, theta)
        mean = jnp.mean(members, axis=0)
        return mean, self._spread(arrays, members, mean, calibrated)

    def _mean_members_and_jacobian(self, arrays, theta):
        """One forward-mode pass at a single theta (8,): (mean (S,), members (K, S), J (S, 8))."""

        def mean_of(t):
            members = self._members_pure(arrays, t)
            return jnp.mean(members, axis=0), members

        jac, members = jax.jacfwd(mean_of, has_aux=True)(jnp.asarray(theta, jnp.float64))
        return jnp.mean(members, axis=0), members, jac

    def _jacobian_pure(self, arrays, theta):
        single = lambda t: self._mean_members_and_jacobian(arrays, t)[2]
        return single(theta) if theta.ndim == 1 else jax.vmap(single)(theta)

    def _predict_and_jacobian_pure(self, arrays, theta):
        def single(t):
            mean, members, jac = self._mean_members_and_jacobian(arrays, t)
            return mean, self._spread(arrays, members, mean, True), jac

        return single(theta) if theta.ndim == 1 else jax.vmap(single)(theta)

    # ------------------------------------------------------------------------------------------
    # Public evaluation API
    # ------------------------------------------------------------------------------------------
    def predict(self, theta, calibrated: bool = True) -> tuple[jax.Array, jax.Array]:
        """``(mean, error)`` of the summaries at theta (8,) -> (S,), (S,) or (n, 8) -> (n, S).

        ``error``: ensemble standard deviation (ddof 1) times ``calibration_factor`` (fitted on
        the validation split so that ~95% of errors lie inside +-2 error); zeros for K = 1.
        Traceable and differentiable; does not check theta (see :meth:`check_theta`)."""
        return self._predict_jit(_as_input(theta), calibrated=calibrated)

    def members(self, theta) -> jax.Array:
        """Each member's summaries: theta (8,) -> (K, S); (n, 8) -> (K, n, S)."""
        return self._members_jit(_as_input(theta))

    def jacobian(self, theta) -> jax.Array:
        """d mean / d theta of the ensemble mean: theta (8,) -> (S, 8); (n, 8) -> (n, S, 8)."""
        return self._jacobian_jit(_as_input(theta))

    def predict_and_jacobian(self, theta) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(mean, error, jacobian)`` in one compiled forward-mode pass (the forecasting inner
        loop): theta (8,) -> (S,), (S,), (S, 8); (n, 8) -> (n, S), (n, S), (n, S, 8)."""
        return self._predict_and_jacobian_jit(_as_input(theta))

    def check_theta(self, theta) -> np.ndarray:
        """theta (8,) or (n, 8) as float64 numpy; ``ValueError`` naming the parameter and value
        that lies outside the prior box (or a bad shape / non-finite value)."""
        return self.prior.validate(theta)

    def in_training_range(self, theta) -> np.ndarray | bool:
        """True where theta (8,) / (n, 8) lies inside the bounding box of the training design
        (the emulator extrapolates outside it)."""
        arr = np.asarray(theta, np.float64)
        low, high = self.theta_range
        inside = np.all((arr >= low) & (arr <= high), axis=-1)
        return bool(inside) if arr.ndim == 1 else inside

    def coverage_distance(self, theta) -> np.ndarray | float:
        """Distance from theta (8,) / (n, 8) to the nearest training point, in units of the design
        spacing (the median nearest-neighbour distance between the training points), both in the
        unit cube of the prior box.  ~0.5-1 inside a space-filling design, > 1.5 in a gap or
        beyond its edge.  NaN where the artifact records no training design (older artifacts)."""
        arr = np.asarray(theta, np.float64)
        if self.training_theta is None or self.training_theta.shape[0] < 2:
            out = np.full(arr.shape[:-1], np.nan)
            return float(out) if arr.ndim == 1 else out
        if self._coverage is None:
            from scipy.spatial import cKDTree

            unit = self.prior.to_unit(self.training_theta)
            tree = cKDTree(unit)
            # the spacing of the prior-wide design: points added where the emulator was refined
            # (in_refined_region) are far denser and would make the rest of the box look like gaps
            refined = self.in_refined_region(self.training_theta)
            wide = unit if refined is None or np.all(refined) else unit[~np.asarray(refined, bool)]
            spacing = float(np.median(tree.query(wide, k=2)[0][:, 1]))
            self._coverage = (tree, spacing if spacing > 0 else 1.0)
        tree, spacing = self._coverage
        distance = tree.query(self.prior.to_unit(arr.reshape(-1, arr.shape[-1])))[0] / spacing
        return float(distance[0]) if arr.ndim == 1 else distance.reshape(arr.shape[:-1])

    @property
    def has_model_stderr(self) -> bool:
        """True when the artifact holds its training points' standard errors (:meth:`model_stderr`)."""
        return self.training_stderr is not None and self.training_stderr.shape[1] == self.n_summary

    def model_stderr(self, theta) -> jax.Array:
        """The exact model's standard error of the summaries (the kernel regression's, which the
        exact likelihood adds to its variance) at theta (8,) -> (S,) or (n, 8) -> (n, S).

        Local-linear regression of log stderr over the training points: Gaussian kernel in the
        unit cube of the prior box, bandwidth :data:`STDERR_BANDWIDTH` x the median
        nearest-neighbour distance of the training design, slopes ridge-penalised by
        :data:`STDERR_RIDGE` x the total kernel weight (so where few points carry weight it
        falls back to their weighted mean).  Pure jnp (traceable, differentiable); needs
        :attr:`has_model_stderr`.  Local-linear, not a kernel mean: the stderr's slope across a
        posterior enters ln L through its normalisation, and a kernel mean over a bandwidth much
        wider than the posterior flattens it (docs/design.md s.14, "The emulator's stderr")."""
        if self._stderr_model is None:
            from scipy.spatial import cKDTree

            unit = np.asarray(self.prior.to_unit(self.training_theta), np.float64)
            spacing = float(np.median(cKDTree(unit).query(unit, k=2)[0][:, 1])) if unit.shape[0] > 1 else 1.0
            # numpy, not jnp: the first call may come inside a trace, whose arrays must not be kept
            self._stderr_model = (
                unit,
                np.log(np.maximum(self.training_stderr, 1e-300)),
                max(STDERR_BANDWIDTH * spacing, 1e-6),
                np.asarray(self.prior.low, np.float64),
                np.asarray(self.prior.width, np.float64),
            )
        unit, log_stderr, h, low, width = self._stderr_model
        u = (jnp.asarray(theta, jnp.float64) - low) / width
        du = (unit - u[..., None, :]) / h  # (..., N, 8)
        logw = -0.5 * jnp.sum(du**2, axis=-1)
        w = jnp.exp(logw - jnp.max(logw, axis=-1, keepdims=True))  # (..., N)
        x = jnp.concatenate([jnp.ones(du.shape[:-1] + (1,)), du], axis=-1)  # (..., N, 9)
        penalty = np.diag(np.r_[0.0, np.ones(unit.shape[1])])
        a = jnp.swapaxes(x * w[..., None], -1, -2) @ x + STDERR_RIDGE * jnp.sum(w, axis=-1)[..., None, None] * penalty
        # only the intercept is needed: e_0' A^-1 X'W Y = (X A^-1 e_0)' W Y, with A symmetric,
        # which avoids forming X'W Y (N x 9 x S)
        e0 = jnp.zeros(x.shape[-1]).at[0].set(1.0)
        c = jnp.linalg.solve(a, jnp.broadcast_to(e0, a.shape[:-1])[..., None])[..., 0]  # (..., 9)
        return jnp.exp((w * (x @ c[..., None])[..., 0]) @ log_stderr)

    def in_refined_region(self, theta) -> np.ndarray | bool | None:
        """True where theta (8,) / (n, 8) lies inside a region where this emulator was refined on
        posterior-local points (``sapphire refine``; ``refined_region``: one ellipsoid per wave,
        of the broadened posterior of that wave's free parameters, the others within 1% of the
        prior width of their fixed values).  None if the emulator was never refined."""
        if not self.refined_region:
            return None
        arr = np.asarray(theta, np.float64)
        flat = arr.reshape(-1, arr.shape[-1])
        width = np.asarray(self.prior.width, np.float64)
        inside = np.zeros(flat.shape[0], bool)
        for region in self.refined_region:
            free = list(region["free_index"])
            held = [i for i in range(flat.shape[1]) if i not in free]
            fixed = np.asarray(region["fixed"], np.float64)
            near = np.all(np.abs(flat[:, held] - fixed[held]) <= 0.01 * width[held], axis=1)
            diff = flat[:, free] - np.asarray(region["mean"], np.float64)
            cov = np.atleast_2d(np.asarray(region["covariance"], np.float64))
            d2 = np.einsum("ni,ni->n", diff, np.linalg.solve(cov, diff.T).T)
            inside |= near & (d2 <= float(region["radius"]) ** 2)
        return bool(inside[0]) if arr.ndim == 1 else inside.reshape(arr.shape[:-1])

    def check_observations(self, observations: Observations) -> None:
        """``ValueError`` unless ``observations`` has the training relations at the same kernel
        centres x (y and sigma may differ)."""
        check_compatible_observations(self.observations, observations, what="emulator")

    # ------------------------------------------------------------------------------------------
    # Artifact
    # ------------------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {
            "format": "sapphire-emulator",
            "format_version": FORMAT_VERSION,
            "summary_definition": SUMMARY_DEFINITION,
            "sapphire_version": self.sapphire_version,
            "architecture": self.architecture.to_dict(),
            "ensemble_size": self.ensemble_size,
            "prior": self.prior.to_dict(),
            "observations": self.observations.to_dict(),
            "summary_names": list(self.summary_names),
            "store_fingerprint": self.store_fingerprint,
            "store_identity": self.store_identity,
            "calibration_factor": self.calibration_factor,
            "theta_range": [list(map(float, self.theta_range[0])), list(map(float, self.theta_range[1]))],
            "training": json_ready(self.training),
            "refined_region": json_ready(self.refined_region),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the artifact directory ``path`` (replaced atomically if it exists)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"params/{name}": np.asarray(value) for name, value in _flat_params(self.params).items()}
        arrays.update(self.scalings.to_arrays())
        if self.training_theta is not None:
            arrays["training_theta"] = self.training_theta
        if self.training_stderr is not None:
            arrays["training_stderr"] = self.training_stderr
        tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
        try:
            np.savez(tmp / ARRAYS_FILE, **arrays)
            (tmp / METADATA_FILE).write_text(json.dumps(self.metadata(), indent=1))
            if path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(
        cls, path: str | os.PathLike, observations: Observations | None = None, precision: str = "float32"
    ) -> SobolevEmulator:
        """Read an artifact written by :meth:`save`.  ``observations``: check that they define
        the same summaries as the training ones (relation names and kernel centres x).
        ``precision``: the evaluation arithmetic (class doc)."""
        path = Path(path)
        meta_path, arrays_path = path / METADATA_FILE, path / ARRAYS_FILE
        if not path.exists():
            raise ValueError(f"emulator artifact {str(path)!r} does not exist")
        if not (meta_path.is_file() and arrays_path.is_file()):
            raise ValueError(
                f"emulator artifact {str(path)!r} is not an emulator directory (expected "
                f"{METADATA_FILE} and {ARRAYS_FILE} inside)"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"emulator artifact {str(path)!r}: unreadable {METADATA_FILE} ({err})") from None
        if not isinstance(meta, dict) or meta.get("format") != "sapphire-emulator":
            raise ValueError(f"emulator artifact {str(path)!r}: {METADATA_FILE} is not sapphire-emulator metadata")
        version = meta.get("format_version")
        if not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
            raise ValueError(
                f"emulator artifact {str(path)!r} has format version {version!r}; this sapphire "
                f"({sapphire.__version__}) reads versions 1..{FORMAT_VERSION}: "
                + ("upgrade sapphire" if isinstance(version, int) and version > FORMAT_VERSION else "unknown format")
            )
        definition = meta.get("summary_definition", 1)
        if definition != SUMMARY_DEFINITION:
            raise ValueError(
                f"emulator artifact {str(path)!r} was trained on summaries of summary definition "
                f"{definition}; this sapphire computes {SUMMARY_DEFINITION} ({SUMMARY_DEFINITION_TEXT}): "
                "retrain it on a store generated with this sapphire"
            )
        try:
            with np.load(arrays_path) as npz:
                arrays = {k: np.asarray(npz[k]) for k in npz.files}
            arch = Architecture.from_dict(meta["architecture"])
            prior = Prior(**{k: tuple(v) for k, v in meta["prior"].items()})
            trained_obs = Observations.from_dict(meta["observations"])
            scalings = Scalings.from_arrays(arrays)
            params = _unflatten_params(
                arch, {k[len("params/") :]: v for k, v in arrays.items() if k.startswith("params/")}
            )
        except (KeyError, TypeError, OSError, EOFError, ValueError) as err:
            if isinstance(err, ValueError) and "emulator artifact" in str(err):
                raise
            raise ValueError(f"emulator artifact {str(path)!r} is corrupt: {type(err).__name__}: {err}") from None
        names = tuple(meta["summary_names"])
        if names != summary_names(trained_obs):
            raise ValueError(
                f"emulator artifact {str(path)!r} is corrupt: summary names disagree with its observations"
            )
        if observations is not None:
            check_compatible_observations(trained_obs, observations, what=f"emulator {str(path)!r}")
        low, high = meta.get("theta_range", [prior.low, prior.high])
        return cls(
            architecture=arch,
            params=params,
            scalings=scalings,
            prior=prior,
            observations=trained_obs,
            summary_names=names,
            store_fingerprint=meta["store_fingerprint"],
            store_identity=meta.get("store_identity", {}),
            training=meta.get("training", {}),
            calibration_factor=float(meta.get("calibration_factor", 1.0)),
            theta_range=(np.asarray(low), np.asarray(high)),
            sapphire_version=meta.get("sapphire_version"),
            precision=precision,
            training_theta=arrays.get("training_theta"),
            refined_region=meta.get("refined_region"),
            training_stderr=arrays.get("training_stderr"),
        )


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def _checked_precision(value: str) -> str:
    if value not in _PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(_PRECISIONS)}, got {value!r}")
    return value


def _as_input(theta):
    """Arrays pass straight to the jitted function (its C++ fast path; cast to float64 inside);
    anything else (lists, scalars) becomes a float64 numpy array first."""
    if isinstance(theta, (jax.Array, np.ndarray)):
        return theta
    return np.asarray(theta, np.float64)


def check_compatible_observations(trained: Observations, given: Observations, what: str = "emulator") -> None:
    """``ValueError`` unless ``given`` has the same relations, in the same order, at the same
    kernel centres x and bandwidths as ``trained`` (y and sigma may differ)."""
    if not isinstance(given, Observations):
        raise ValueError(f"observations must be a sapphire.Observations, got {type(given).__name__}")
    if given.names != trained.names:
        raise ValueError(
            f"{what} was trained on relations {trained.names}; the observations given have "
            f"{given.names}: retrain on a store made with these observations"
        )
    for rel_t, rel_g in zip(trained.relations, given.relations):
        if rel_t.size != rel_g.size or not np.allclose(rel_t.x, rel_g.x, rtol=0, atol=1e-12):
            raise ValueError(
                f"{what}: relation {rel_t.name!r} was trained at x = {np.round(rel_t.x, 4).tolist()}; "
                f"the observations given have x = {np.round(rel_g.x, 4).tolist()}: the summaries "
                "differ, retrain on a store made with these observations"
            )
        if rel_t.bandwidth != rel_g.bandwidth:
            raise ValueError(
                f"{what}: relation {rel_t.name!r} was trained with bandwidth {rel_t.bandwidth:g}; the "
                f"observations given have {rel_g.bandwidth:g}: the summaries differ, retrain on a store "
                "made with these observations"
            )


def _flat_params(params) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def _unflatten_params(arch: Architecture, flat: dict[str, np.ndarray]):
    _, template = abstract_graphdef(arch)
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for key_path, shape_struct in paths:
        key = jax.tree_util.keystr(key_path)
        if key not in flat:
            raise KeyError(f"missing parameter {key}")
        value = flat[key]
        if value.shape[1:] != tuple(shape_struct.shape):
            raise ValueError(f"parameter {key} has shape {value.shape}, expected (K, *{tuple(shape_struct.shape)})")
        leaves.append(jnp.asarray(value, jnp.float64))
    sizes = {leaf.shape[0] for leaf in leaves}
    if len(sizes) != 1:
        raise ValueError(f"ensemble members disagree in number across parameters: {sizes}")
    return jax.tree_util.tree_unflatten(treedef, leaves)
