"""The emulator network: a smooth Flax (NNX) MLP, and the ensemble of them as one pytree.

Spaces and shapes
-----------------
* Input: ``u`` in the unit cube [0, 1]^8 (``u = (theta - prior.low) / prior.width``); the
  network maps it to [-1, 1] internally.
* Output: ``n_out`` numbers.  Without PCA they ARE the standardised summaries
  ``z = (s - s_mean) / s_std`` (S,); with PCA they are whitened principal-component
  coefficients, and the fixed linear ``decoder`` (n_out, S) of :class:`Scalings` maps them to z.
  The training loss is always measured in z (so PCA does not change what "error" means).
* Smooth activations only (``silu``, ``tanh``, ``gelu``, ``softplus``): the emulator's
  derivatives enter forecasts, so they must be continuous.

The ensemble of K members is ONE ``nnx.State`` whose leaves carry a leading member axis
(K, ...); :func:`ensemble_apply` evaluates all members with ``jax.vmap`` over that axis, so
training and prediction are vectorised over members.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "softplus": jax.nn.softplus,
}


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What defines the network's shape: ``n_in`` inputs (8), ``n_out`` outputs (S, or the
    number of PCA components), ``hidden`` layer widths, ``activation`` (a key of
    ``ACTIVATIONS``)."""

    n_in: int
    n_out: int
    hidden: tuple[int, ...] = (128, 128, 128)
    activation: str = "silu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)} (smooth), got {self.activation!r}")
        if self.n_in < 1 or self.n_out < 1 or not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"bad architecture: n_in={self.n_in}, n_out={self.n_out}, hidden={self.hidden}")

    def to_dict(self) -> dict[str, Any]:
        return {"n_in": self.n_in, "n_out": self.n_out, "hidden": list(self.hidden), "activation": self.activation}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Architecture:
        return cls(
            n_in=int(values["n_in"]),
            n_out=int(values["n_out"]),
            hidden=tuple(values["hidden"]),
            activation=str(values["activation"]),
        )


class MLP(nnx.Module):
    """u (..., n_in) in [0, 1] -> (..., n_out), smooth activation between layers.

    Parameters are float64; ``dtype`` is the arithmetic (float64 for training, see
    :class:`emulator.SobolevEmulator` for evaluation in float32)."""

    def __init__(self, arch: Architecture, *, rngs: nnx.Rngs, dtype=jnp.float64) -> None:
        widths = (arch.n_in, *arch.hidden)
        self.hidden_layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs, param_dtype=jnp.float64, dtype=dtype) for a, b in zip(widths[:-1], widths[1:])]
        )
        self.output_layer = nnx.Linear(
            widths[-1],
            arch.n_out,
            rngs=rngs,
            param_dtype=jnp.float64,
            dtype=dtype,
            kernel_init=nnx.initializers.variance_scaling(0.1, "fan_in", "truncated_normal"),
        )
        self.activation = arch.activation

    def __call__(self, u: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        h = 2.0 * u - 1.0  # nnx.Linear casts to the layer's dtype
        for layer in self.hidden_layers:
            h = act(layer(h))
        return self.output_layer(h)


def init_ensemble(arch: Architecture, seeds: Sequence[int]) -> tuple[nnx.GraphDef, nnx.State]:
    """K members, member k initialised from ``nnx.Rngs(seeds[k])``; returns the shared graph
    definition and the stacked parameter state (leaves (K, ...))."""
    states = []
    graphdef = None
    for seed in seeds:
        graphdef, state = nnx.split(MLP(arch, rngs=nnx.Rngs(int(seed))))
        states.append(state)
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
    return graphdef, stacked


def abstract_graphdef(arch: Architecture, dtype=jnp.float64) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph definition (arithmetic in ``dtype``) and a (single-member) state template,
    without computing weights."""
    abstract = nnx.eval_shape(lambda: MLP(arch, rngs=nnx.Rngs(0), dtype=dtype))
    return nnx.split(abstract)


def member_apply(graphdef: nnx.GraphDef, state: nnx.State, u: jax.Array) -> jax.Array:
    """One member: u (n_in,) or (n, n_in) -> network output (n_out,) or (n, n_out)."""
    return nnx.merge(graphdef, state)(u)


def ensemble_apply(graphdef: nnx.GraphDef, stacked: nnx.State, u: jax.Array) -> jax.Array:
    """All members: u (..., n_in) -> (K, ..., n_out)."""
    return jax.vmap(lambda s: member_apply(graphdef, s, u))(stacked)


# ----------------------------------------------------------------------------------------------
# Scalings between physical and network spaces
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Scalings:
    """Fixed affine maps between physical and network spaces (numpy float64).

    * ``theta_low``, ``theta_width`` (8,): ``u = (theta - low) / width`` (the prior box).
    * ``summary_mean``, ``summary_std`` (S,): over the training split, ``z = (s - mean) / std``.
    * ``decoder`` (n_out, S): network output -> z (identity without PCA; with PCA the rows are
      the principal axes times the square root of their variance, i.e. whitened coefficients).

    Jacobians: ``d s / d theta = std[:, None] * (d z / d u) / width[None, :]``; the exact
    Jacobian is mapped to the training target as ``d z / d u = J * width[None, :] / std[:, None]``.
    """

    theta_low: np.ndarray
    theta_width: np.ndarray
    summary_mean: np.ndarray
    summary_std: np.ndarray
    decoder: np.ndarray

    def to_unit(self, theta):
        return (theta - self.theta_low) / self.theta_width

    def standardise(self, summaries):
        return (summaries - self.summary_mean) / self.summary_std

    def destandardise(self, z):
        return self.summary_mean + self.summary_std * z

    def jacobian_to_network(self, jacobian):
        """(..., S, 8) physical d s/d theta -> (..., S, 8) d z/d u."""
        return jacobian * self.theta_width / self.summary_std[:, None]

    def jacobian_to_physical(self, jacobian):
        """(..., S, 8) d z/d u -> (..., S, 8) d s/d theta."""
        return jacobian * self.summary_std[:, None] / self.theta_width

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {f"scalings/{f.name}": np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_arrays(cls, arrays) -> Scalings:
        return cls(**{f.name: np.asarray(arrays[f"scalings/{f.name}"], np.float64) for f in dataclasses.fields(cls)})


def fit_scalings(prior, summaries: np.ndarray, pca_components: int | None = None) -> Scalings:
    """Scalings from the training split's summaries (n, S).  ``pca_components``: keep that many
    principal components of the standardised summaries as whitened network outputs (None: no
    PCA, the network outputs z directly)."""
    summaries = np.asarray(summaries, np.float64)
    mean = summaries.mean(axis=0)
    std = summaries.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    n_summary = summaries.shape[1]
    if pca_components is None:
        decoder = np.eye(n_summary)
    else:
        if not 1 <= pca_components <= n_summary:
            raise ValueError(f"pca_components must be in [1, {n_summary}], got {pca_components}")
        z = (summaries - mean) / std
        _, singular, axes = np.linalg.svd(z, full_matrices=False)
        scale = singular[:pca_components] / np.sqrt(max(len(z) - 1, 1))
        decoder = scale[:, None] * axes[:pca_components]
    return Scalings(
        theta_low=np.asarray(prior.low, np.float64),
        theta_width=np.asarray(prior.width, np.float64),
        summary_mean=mean,
        summary_std=std,
        decoder=decoder,
    )
