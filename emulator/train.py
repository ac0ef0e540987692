"""Sobolev training of the emulator ensemble (values + exact Jacobians) with optax.

Loss of one ensemble member on a minibatch of B design points (network spaces, see
:mod:`emulator.network`)::

    L = mean_{b,i} rho_v(w_i (z_hat_bi - z_bi))  +  lambda * mean_{b,i,j} rho_J(w_i (dz_hat_bi/du_j - dz_bi/du_j))

z the standardised summaries, u the unit-cube parameters; the network Jacobian comes from
``jax.jacfwd`` and the target from the store's exact ``summary_jacobian`` mapped through the
same scalings (``Scalings.jacobian_to_network``).  ``lambda = gradient_weight`` (0: values
only).  rho is 2 x Huber (= r^2 up to ``delta``, linear beyond; ``delta=None``: plain square):
default ``huber_delta=0.01`` for the Jacobian term (close to an L1 penalty) and
``value_huber_delta=0.05`` for the values.  Why robust: the exact summaries have near-jumps
(a halo crossing a sharp transition moves a kernel-regression mean by ~0.05-0.1 dex within
~0.001-0.01 of a parameter's prior width), where the local exact Jacobian is 10-100x its typical
size; with squares those few points dominate the fit (measured on the 64-halo development set,
one member, median test Jacobian error: 0.49 with squares and 0.24 with delta = 1 at 720
training points; 0.13 with delta = 0.1 at 720; 0.15 with delta = 0.01 at 1,280).  w_i are
per-summary weights (``summary_weighting``, default ``"sigma_obs"``: residuals in units of the
observational sigma, rescaled to unit RMS weight).

Data: any training set with the store API of :mod:`training_sets` (``valid_mask``, ``load``,
``batches``, ``prior``, ``observations``, ``summary_names``, ``fingerprint``) -- a Zarr store
(path or ``open_training_set`` view), or :class:`InMemoryTrainingSet` (numpy arrays, an .npz
file, or a dict).  Each epoch streams the training split through ``ts.batches`` in blocks of
``block_size`` points (for a store: chunk groups through its shuffle buffer, never the whole
store); inside a block every member draws its own minibatch order, and one compiled
``lax.scan`` runs the block's optimiser steps for all K members at once (``jax.vmap`` over the
stacked member parameters).

Design points that are not done, had a failed halo (``n_failed > 0``) or have a non-finite
entry are excluded before the split and COUNTED (``emu.training["excluded"]``).  The split
(train / validation / test) is by design point, seeded.  Early stopping: per member, on the
validation loss (same loss as training), with ``patience`` epochs; each member's best
parameters are restored.  The ensemble's spread is then calibrated on the validation split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sapphire.likelihood import summary_names as _summary_names
from sapphire.observations import Observations
from sapphire.prior import DEFAULT_PRIOR, Prior

from .artifact import SobolevEmulator
from .network import Architecture, Scalings, fit_scalings, init_ensemble

DATA_KEYS = ("theta", "summaries", "summary_stderr", "summary_jacobian")
#: Coverage of +-2 sigma for a Gaussian: the target of the spread calibration.
TWO_SIGMA_COVERAGE = math.erf(2.0 / math.sqrt(2.0))


# ----------------------------------------------------------------------------------------------
# Data layer: an in-memory training set with the store's API, and the adapter
# ----------------------------------------------------------------------------------------------
class InMemoryTrainingSet:
    """Numpy arrays with the API of ``training_sets.TrainingSet`` (for tests, development
    data and small experiments).

    Arrays: ``theta`` (N, 8) [physical units], ``summaries`` (N, S), ``summary_stderr`` (N, S),
    ``summary_jacobian`` (N, S, 8) [d summary / d theta], ``n_failed`` (N,) int (default 0),
    ``done`` (N,) bool (default True).  ``prior`` (default ``DEFAULT_PRIOR``),
    ``observations`` (default ``Observations.default()``), ``attrs`` (free metadata).
    ``fingerprint``: sha256 of the arrays (16 hex digits).
    """

    schema_version = 0

    def __init__(
        self,
        theta,
        summaries,
        summary_stderr,
        summary_jacobian,
        n_failed=None,
        done=None,
        *,
        prior: Prior = DEFAULT_PRIOR,
        observations: Observations | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.theta = np.asarray(theta, np.float64)
        self.summaries = np.asarray(summaries, np.float64)
        self.summary_stderr = np.asarray(summary_stderr, np.float64)
        self.summary_jacobian = np.asarray(summary_jacobian, np.float64)
        n = self.theta.shape[0]
        self.n_failed = np.zeros(n, np.int64) if n_failed is None else np.asarray(n_failed, np.int64)
        self.done = np.ones(n, bool) if done is None else np.asarray(done, bool)
        self.prior = prior
        self.observations = observations if observations is not None else Observations.default()
        self.summary_names = _summary_names(self.observations)
        self.attrs = dict(attrs or {})
        s, d = len(self.summary_names), prior.ndim
        expected = {"theta": (n, d), "summaries": (n, s), "summary_stderr": (n, s), "summary_jacobian": (n, s, d),
                    "n_failed": (n,), "done": (n,)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"InMemoryTrainingSet: {name} has shape {getattr(self, name).shape}, expected {shape}")
        digest = hashlib.sha256()
        for name in expected:
            digest.update(np.ascontiguousarray(getattr(self, name)).tobytes())
        digest.update(self.observations.fingerprint().encode())
        self.fingerprint = digest.hexdigest()[:16]

    @classmethod
    def from_npz(cls, path: str | os.PathLike, **kwargs) -> "InMemoryTrainingSet":
        """Arrays named as in the constructor, from an .npz file."""
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in ("theta", "summaries", "summary_stderr", "summary_jacobian", "n_failed", "done") if k in npz.files}
        return cls(**arrays, **kwargs)

    @property
    def n_points(self) -> int:
        return int(self.theta.shape[0])

    def valid_mask(self) -> np.ndarray:
        """(N,) bool: done, no failed halo, every summary, stderr and Jacobian entry finite."""
        finite = (
            np.isfinite(self.summaries).all(axis=1)
            & np.isfinite(self.summary_stderr).all(axis=1)
            & np.isfinite(self.summary_jacobian).all(axis=(1, 2))
        )
        return self.done & (self.n_failed == 0) & finite

    def load(self, indices=None) -> dict[str, np.ndarray]:
        """Rows at ``indices`` (sorted, like the store), as a dict of numpy arrays."""
        idx = np.arange(self.n_points) if indices is None else np.sort(np.asarray(indices, np.int64))
        return {name: getattr(self, name)[idx] for name in (*DATA_KEYS, "n_failed")}

    def batches(self, batch_size: int, indices=None, seed: int = 0, buffer_chunks: int = 8) -> Iterator[dict[str, np.ndarray]]:
        """One seeded shuffled pass over ``indices`` (default: valid rows); last batch partial."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        idx = np.flatnonzero(self.valid_mask()) if indices is None else np.asarray(indices, np.int64)
        idx = np.random.default_rng(seed).permutation(idx)
        for start in range(0, idx.size, batch_size):
            rows = idx[start : start + batch_size]
            yield {name: getattr(self, name)[rows] for name in (*DATA_KEYS, "n_failed")}


def as_training_set(source):
    """A training set with the store API from: a store view (returned as is), a path to a Zarr
    store (``training_sets.open_training_set``), a path to an .npz file or a dict of arrays
    (:class:`InMemoryTrainingSet`)."""
    if hasattr(source, "valid_mask") and hasattr(source, "batches") and hasattr(source, "load"):
        return source
    if isinstance(source, Mapping):
        return InMemoryTrainingSet(**dict(source))
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ValueError(f"training set {str(path)!r} does not exist")
        if path.suffix == ".npz":
            return InMemoryTrainingSet.from_npz(path)
        from training_sets import open_training_set

        return open_training_set(path)
    raise ValueError(
        f"cannot use a {type(source).__name__} as a training set: give a store path, a "
        "training_sets view, an .npz path, a dict of arrays or an InMemoryTrainingSet"
    )


def exclusion_counts(ts) -> tuple[np.ndarray, dict[str, int]]:
    """Valid design points (sorted indices) and how many were excluded and why (a point can
    have several reasons; ``excluded`` counts each point once)."""
    valid = np.asarray(ts.valid_mask(), bool)
    done = np.asarray(ts.done, bool)
    n_failed = np.asarray(ts.n_failed)
    counts = {
        "n_points": int(valid.size),
        "n_valid": int(valid.sum()),
        "excluded": int((~valid).sum()),
        "not_done": int((~done).sum()),
        "failed_halos": int((done & (n_failed > 0)).sum()),
        "non_finite": int((done & (n_failed == 0) & ~valid).sum()),
    }
    return np.flatnonzero(valid), counts


def split_design(indices: np.ndarray, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded split of design-point ``indices`` into disjoint ``train``/``val``/``test`` (each
    sorted), in proportions ``fractions`` (normalised).  At least one validation point is kept
    whenever there are two or more points."""
    fractions = np.asarray(fractions, np.float64)
    if fractions.shape != (3,) or np.any(fractions < 0) or fractions.sum() <= 0 or fractions[0] <= 0:
        raise ValueError(f"split fractions must be 3 non-negative numbers (train > 0), got {tuple(fractions)}")
    fractions = fractions / fractions.sum()
    idx = np.random.default_rng(seed).permutation(np.asarray(indices, np.int64))
    n = idx.size
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    if n >= 2 and fractions[1] > 0:
        n_val = max(n_val, 1)
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"split {tuple(fractions)} of {n} valid design points leaves no training point")
    return {"train": idx[:n_train], "val": idx[n_train : n_train + n_val], "test": idx[n_train + n_val :]}


def to_network_space(batch: Mapping[str, np.ndarray], scalings: Scalings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u (n, 8), z (n, S), dz/du (n, S, 8)) from a batch of store rows."""
    u = scalings.to_unit(batch["theta"])
    z = scalings.standardise(batch["summaries"])
    jz = scalings.jacobian_to_network(batch["summary_jacobian"])
    return u, z, jz


# ----------------------------------------------------------------------------------------------
# Settings and the compiled steps
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """Optimisation settings (stored in the artifact)."""

    gradient_weight: float = 1.0
    huber_delta: float | None = 0.01
    value_huber_delta: float | None = 0.05
    summary_weighting: str = "sigma_obs"
    ensemble: int = 5
    epochs: int = 600
    patience: int = 200
    batch_size: int = 64
    learning_rate: float = 2e-3
    final_learning_rate: float = 2e-5
    weight_decay: float = 0.0
    warmup_epochs: int = 5
    block_size: int = 4096
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    n_train: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.gradient_weight) and self.gradient_weight >= 0):
            raise ValueError(f"gradient_weight must be >= 0, got {self.gradient_weight}")
        for name in ("ensemble", "epochs", "batch_size", "block_size", "patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.summary_weighting not in SUMMARY_WEIGHTINGS:
            raise ValueError(f"summary_weighting must be one of {SUMMARY_WEIGHTINGS}, got {self.summary_weighting!r}")
        if not (self.learning_rate > 0 and self.final_learning_rate > 0):
            raise ValueError("learning rates must be > 0")


SUMMARY_WEIGHTINGS = ("standardised", "sigma_obs")


def summary_weights(weighting: str, scalings: Scalings, observations: Observations) -> np.ndarray:
    """Per-summary factors (S,) on the residuals of the loss.  ``"standardised"``: all 1 (errors
    in units of the training-set standard deviation); ``"sigma_obs"``: std_i / sigma_obs_i,
    normalised to a root mean square of 1 (errors in units of the observational sigma, the
    units of the acceptance criteria and of the likelihood)."""
    if weighting == "standardised":
        return np.ones_like(scalings.summary_std)
    ratio = scalings.summary_std / np.asarray(observations.sigma)
    return ratio / np.sqrt(np.mean(ratio**2))


def _penalty(residual, huber_delta):
    """Mean of 2 * huber(residual, delta) (= residual^2 for |residual| <= delta, linear beyond);
    plain mean square for ``huber_delta=None``."""
    if huber_delta is None:
        return jnp.mean(residual**2)
    return 2.0 * jnp.mean(optax.huber_loss(residual, delta=huber_delta))


def _member_loss(graphdef, decoder, gradient_weight, huber_delta, value_huber_delta, weights, params, u, z, jz):
    """Sobolev loss of one member on (u (B, 8), z (B, S), jz (B, S, 8)):
    (total, (value mse, jacobian penalty))."""
    from flax import nnx

    net = nnx.merge(graphdef, params)

    def out(x):
        y = net(x) @ decoder
        return y, y

    jac, value = jax.vmap(jax.jacfwd(out, has_aux=True))(u)
    value_penalty = _penalty(weights * (value - z), value_huber_delta)
    jac_penalty = _penalty(weights[:, None] * (jac - jz), huber_delta)
    return value_penalty + gradient_weight * jac_penalty, (value_penalty, jac_penalty)


def _make_steps(graphdef, decoder, settings: "TrainingSettings", weights, tx):
    decoder, weights = jnp.asarray(decoder), jnp.asarray(weights)
    loss = lambda p, u, z, jz: _member_loss(graphdef, decoder, settings.gradient_weight, settings.huber_delta,
                                            settings.value_huber_delta, weights, p, u, z, jz)
    grad_fn = jax.vmap(jax.value_and_grad(loss, has_aux=True))

    @jax.jit
    def run_block(params, opt_state, u, z, jz, batch_index, active):
        """lax.scan over the block's steps; batch_index (n_steps, K, B) rows of the block,
        active (n_steps,) False for padding steps (no update)."""

        def step(carry, xs):
            params, opt_state = carry
            index, is_active = xs
            (total, (value_penalty, jac_penalty)), grads = grad_fn(params, u[index], z[index], jz[index])
            updates, new_opt_state = jax.vmap(tx.update)(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            keep = lambda new, old: jnp.where(is_active, new, old)
            params = jax.tree.map(keep, new_params, params)
            opt_state = jax.tree.map(keep, new_opt_state, opt_state)
            return (params, opt_state), (total, value_penalty, jac_penalty)

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (batch_index, active))
        return params, opt_state, losses

    @jax.jit
    def evaluate(params, u, z, jz):
        """Per-member (total, value_penalty, jac_penalty) on a whole split."""
        total, (value_penalty, jac_penalty) = jax.vmap(loss, in_axes=(0, None, None, None))(params, u, z, jz)
        return total, value_penalty, jac_penalty

    @jax.jit
    def keep_best(best, params, improved):
        select = lambda b, p: jnp.where(improved.reshape((-1,) + (1,) * (p.ndim - 1)), p, b)
        return jax.tree.map(select, best, params)

    return run_block, evaluate, keep_best


def _block_schedule(n_rows: int, n_pad: int, batch_size: int, ensemble: int, rng_seeds) -> tuple[np.ndarray, np.ndarray]:
    """Minibatch rows (n_steps_max, K, B) for a block of ``n_rows`` real rows (padded to
    ``n_pad``): each member its own permutation (drop-remainder; a block smaller than one
    batch wraps around), steps beyond the block's own are inactive."""
    b = min(batch_size, n_pad)
    n_steps_max = max(1, n_pad // b)
    n_steps = max(1, n_rows // b)
    index = np.zeros((n_steps_max, ensemble, b), np.int32)
    for k, seed in enumerate(rng_seeds):
        perm = np.random.default_rng(seed).permutation(n_rows)
        rows = perm[np.arange(n_steps * b) % n_rows]
        index[:n_steps, k] = rows.reshape(n_steps, b)
    active = np.arange(n_steps_max) < n_steps
    return index, active


def _pad_rows(array: np.ndarray, n: int) -> np.ndarray:
    if array.shape[0] == n:
        return array
    pad = np.zeros((n - array.shape[0],) + array.shape[1:], array.dtype)
    return np.concatenate([array, pad])


# ----------------------------------------------------------------------------------------------
# The public entry point
# ----------------------------------------------------------------------------------------------
def train_emulator(
    source,
    *,
    gradient_weight: float = 1.0,
    huber_delta: float | None = 0.01,
    value_huber_delta: float | None = 0.05,
    summary_weighting: str = "sigma_obs",
    ensemble: int = 5,
    epochs: int = 600,
    patience: int = 200,
    hidden: Sequence[int] = (128, 128, 128),
    activation: str = "silu",
    pca_components: int | None = None,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    final_learning_rate: float = 2e-5,
    weight_decay: float = 0.0,
    warmup_epochs: int = 5,
    block_size: int = 4096,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    n_train: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> SobolevEmulator:
    """Train a Sobolev deep-ensemble emulator of the summaries on a training set.

    Args:
        source: a Zarr store path or view, an .npz path, a dict of arrays or an
            :class:`InMemoryTrainingSet` (see :func:`as_training_set`).
        gradient_weight: lambda of the Jacobian term (0: values only).
        huber_delta: the Jacobian term is a Huber penalty of the residuals in the standardised /
            unit-cube space, quadratic up to ``huber_delta`` and linear beyond (None: mean
            square).  The exact summaries have near-jumps (a halo crossing a sharp transition
            moves a kernel-regression mean by ~0.1 dex over ~0.01 of the prior width), where the
            local exact Jacobian is 10-100x its typical size; a quadratic penalty would let those
            few points dominate the fit.
        value_huber_delta: the same for the value term (None: mean square).
        summary_weighting: ``"standardised"`` (residuals in units of the training-set standard
            deviation of each summary) or ``"sigma_obs"`` (in units of sigma_obs, rescaled to a
            root mean square weight of 1); see :func:`summary_weights`.
        ensemble: K members (different initialisation and minibatch order).
        epochs: maximum number of passes over the training split (the learning rate follows a
            warmup + cosine decay from ``learning_rate`` to ``final_learning_rate`` over them).
        patience: early stopping: a member stops improving after this many epochs without a
            lower validation loss; training ends when every member has; best parameters kept.
        hidden, activation: MLP widths and smooth activation (``silu``, ``tanh``, ``gelu``,
            ``softplus``).
        pca_components: None (default): outputs are the standardised summaries; else that many
            whitened principal components of them.
        weight_decay: decoupled weight decay (AdamW) on every parameter; 0: plain Adam.
        batch_size: minibatch size (design points) per member and step.
        block_size: design points streamed from the store per block (one compiled scan each).
        split: train / validation / test fractions of the valid design points.
        n_train: use only the first ``n_train`` points of the (seeded, random) training split
            (learning curves); validation and test splits unchanged.
        seed: seeds the split, the members' initialisation (member k: ``[seed, k]``) and the
            minibatch orders.
        progress: tqdm progress bar over epochs.

    Returns:
        :class:`SobolevEmulator`; ``emu.training`` holds the settings, the split indices (store
        numbering), the excluded-point counts, the per-epoch history, the train time and the
        calibration (raw and calibrated +-2 spread coverage on the validation split).
    """
    settings = TrainingSettings(
        gradient_weight=float(gradient_weight), huber_delta=None if huber_delta is None else float(huber_delta),
        value_huber_delta=None if value_huber_delta is None else float(value_huber_delta),
        summary_weighting=str(summary_weighting),
        ensemble=int(ensemble), epochs=int(epochs), patience=int(patience),
        batch_size=int(batch_size), learning_rate=float(learning_rate), final_learning_rate=float(final_learning_rate),
        weight_decay=float(weight_decay),
        warmup_epochs=int(warmup_epochs), block_size=int(block_size), split=tuple(float(f) for f in split),
        n_train=None if n_train is None else int(n_train), seed=int(seed),
    )
    ts = as_training_set(source)
    start_time = time.perf_counter()
    valid, excluded = exclusion_counts(ts)
    if excluded["excluded"]:
        _note(progress, f"emulator: {excluded['excluded']} of {excluded['n_points']} design points excluded "
                        f"(not done {excluded['not_done']}, failed halos {excluded['failed_halos']}, "
                        f"non-finite {excluded['non_finite']})")
    splits = split_design(valid, settings.split, settings.seed)
    train_idx = splits["train"]
    if settings.n_train is not None:
        if not 1 <= settings.n_train <= train_idx.size:
            raise ValueError(f"n_train must be in [1, {train_idx.size}] (the training split), got {settings.n_train}")
        train_idx = train_idx[: settings.n_train]
    train_idx = np.sort(train_idx)
    if splits["val"].size == 0:
        raise ValueError("the validation split is empty: early stopping and calibration need validation points")

    train_summaries = np.asarray(ts.summaries[train_idx])
    scalings = fit_scalings(ts.prior, train_summaries, pca_components)
    arch = Architecture(n_in=ts.prior.ndim, n_out=scalings.decoder.shape[0], hidden=tuple(hidden), activation=activation)
    member_seeds = [int(np.random.SeedSequence([settings.seed, k]).generate_state(1)[0]) for k in range(settings.ensemble)]
    graphdef, params = init_ensemble(arch, member_seeds)

    n_block = min(settings.block_size, train_idx.size)
    b = min(settings.batch_size, n_block)
    steps_per_epoch = sum(max(1, min(n_block, train_idx.size - s) // b) for s in range(0, train_idx.size, n_block))
    total_steps = settings.epochs * steps_per_epoch
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=settings.final_learning_rate,
        peak_value=settings.learning_rate,
        warmup_steps=min(settings.warmup_epochs * steps_per_epoch, max(total_steps - 1, 1)),
        decay_steps=max(total_steps, 2),
        end_value=settings.final_learning_rate,
    )
    tx = optax.adamw(schedule, weight_decay=settings.weight_decay) if settings.weight_decay else optax.adam(schedule)
    opt_state = jax.vmap(tx.init)(params)
    weights = summary_weights(settings.summary_weighting, scalings, ts.observations)
    run_block, evaluate, keep_best = _make_steps(graphdef, scalings.decoder, settings, weights, tx)

    val_u, val_z, val_jz = (jnp.asarray(a) for a in to_network_space(ts.load(splits["val"]), scalings))
    batch_source, batch_idx = _batch_source(ts, train_idx)
    best_params = params
    best_val = np.full(settings.ensemble, np.inf)
    best_epoch = np.zeros(settings.ensemble, np.int64)
    history: dict[str, list] = {"train_loss": [], "val_loss": [], "val_value_penalty": [], "val_jacobian_penalty": []}
    bar = _progress_bar(progress, settings.epochs)
    epoch = 0
    try:
        for epoch in range(settings.epochs):
            epoch_losses = []
            blocks = batch_source.batches(n_block, indices=batch_idx, seed=_seed(settings.seed, epoch))
            for block_no, block in enumerate(blocks):
                u, z, jz = to_network_space(block, scalings)
                n_rows = u.shape[0]
                index, active = _block_schedule(
                    n_rows, n_block, settings.batch_size, settings.ensemble,
                    [(settings.seed, k, epoch, block_no) for k in range(settings.ensemble)],
                )
                params, opt_state, losses = run_block(
                    params, opt_state, jnp.asarray(_pad_rows(u, n_block)), jnp.asarray(_pad_rows(z, n_block)),
                    jnp.asarray(_pad_rows(jz, n_block)), jnp.asarray(index), jnp.asarray(active),
                )
                epoch_losses.append(np.asarray(losses[0])[active])
            val_total, val_value, val_jac = (np.asarray(a) for a in evaluate(params, val_u, val_z, val_jz))
            improved = val_total < best_val
            best_val = np.where(improved, val_total, best_val)
            best_epoch = np.where(improved, epoch, best_epoch)
            best_params = keep_best(best_params, params, jnp.asarray(improved))
            history["train_loss"].append(np.concatenate(epoch_losses).mean(axis=0).tolist())
            history["val_loss"].append(val_total.tolist())
            history["val_value_penalty"].append(val_value.tolist())
            history["val_jacobian_penalty"].append(val_jac.tolist())
            bar.update(1)
            bar.set_postfix(train=f"{np.mean(history['train_loss'][-1]):.2e}", val=f"{np.mean(val_total):.2e}",
                            best=f"{np.mean(best_val):.2e}")
            if np.all(epoch - best_epoch >= settings.patience):
                break
    finally:
        bar.close()
    train_seconds = time.perf_counter() - start_time

    emu = SobolevEmulator(
        architecture=arch,
        params=best_params,
        scalings=scalings,
        prior=ts.prior,
        observations=ts.observations,
        summary_names=tuple(ts.summary_names),
        store_fingerprint=ts.fingerprint,
        store_identity=_store_identity(ts),
        theta_range=_theta_range(ts, train_idx),
        training_theta=np.asarray(ts.theta[train_idx]),
    )
    calibration = calibrate_spread(emu, ts.load(splits["val"]))
    emu.calibration_factor = calibration["factor"]
    emu.training = {
        "settings": dataclasses.asdict(settings),
        "member_seeds": member_seeds,
        "excluded": excluded,
        "split": {"train": train_idx.tolist(), "val": splits["val"].tolist(), "test": splits["test"].tolist(),
                  "n_train_split": int(splits["train"].size)},
        "epochs_run": int(epoch + 1),
        "best_epoch": best_epoch.tolist(),
        "best_val_loss": best_val.tolist(),
        "train_seconds": train_seconds,
        "calibration": calibration,
        "history": history,
        "gradient_weight": settings.gradient_weight,
    }
    return emu


#: A training split up to this size is read from the store once and shuffled in memory; a
#: larger one streams from the store every epoch (measured on this project's 2-core CPU: the
#: 1,280 training rows of a 1,600-point store streamed at ~0.8 s per epoch, in memory ~0.05 s).
IN_MEMORY_LIMIT_BYTES = 512 * 2**20


def _batch_source(ts, train_idx: np.ndarray):
    """(training set to draw minibatches from, its indices of the training rows)."""
    if isinstance(ts, InMemoryTrainingSet):
        return ts, train_idx
    n_theta, n_summary = ts.prior.ndim, len(ts.summary_names)
    n_bytes = train_idx.size * 8 * (n_theta + n_summary * (2 + n_theta) + 1)
    if n_bytes > IN_MEMORY_LIMIT_BYTES:
        return ts, train_idx
    rows = ts.load(train_idx)  # sorted, like train_idx
    return InMemoryTrainingSet(**rows, prior=ts.prior, observations=ts.observations), np.arange(train_idx.size)


def calibrate_spread(emu: SobolevEmulator, rows: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Factor c on the ensemble spread such that a fraction ``TWO_SIGMA_COVERAGE`` (95.45%)
    of the errors |mean - exact| on ``rows`` (the validation split) lies inside +-2 c spread,
    over all points and summaries.  Returns the factor and the raw / calibrated coverage."""
    mean, spread = (np.asarray(a) for a in emu.predict(rows["theta"], calibrated=False))
    err = np.abs(mean - rows["summaries"])
    if emu.ensemble_size < 2 or not np.all(spread > 0):
        import warnings

        reason = (f"an ensemble of {emu.ensemble_size} has no spread" if emu.ensemble_size < 2
                  else f"the ensemble spread is 0 in {int(np.sum(~(spread > 0)))} of {spread.size} validation predictions")
        warnings.warn(f"calibrate_spread: {reason}; the spread is left uncalibrated (factor 1.0), so the emulator error "
                      "added to the likelihood is the raw spread", RuntimeWarning, stacklevel=2)
        return {"factor": 1.0, "raw_coverage": float(np.mean(err <= 2 * spread)), "calibrated_coverage": float("nan"),
                "n_points": int(err.shape[0])}
    ratio = err / (2.0 * spread)
    factor = float(np.quantile(ratio, TWO_SIGMA_COVERAGE))
    factor = max(factor, 1e-3)
    return {
        "factor": factor,
        "raw_coverage": float(np.mean(ratio <= 1.0)),
        "calibrated_coverage": float(np.mean(ratio <= factor)),
        "n_points": int(err.shape[0]),
    }


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------
def _seed(*values: int) -> int:
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0])


def _theta_range(ts, train_idx) -> tuple[np.ndarray, np.ndarray]:
    theta = np.asarray(ts.theta[np.sort(train_idx)])
    return theta.min(axis=0), theta.max(axis=0)


def _store_identity(ts) -> dict[str, Any]:
    """The store attributes that define what the summaries mean (for the artifact)."""
    attrs = dict(getattr(ts, "attrs", {}) or {})
    keep = ("schema_version", "sapphire_version", "model_config", "solver", "halos", "design", "chunk")
    out = {k: attrs[k] for k in keep if k in attrs}
    out["schema_version"] = getattr(ts, "schema_version", out.get("schema_version"))
    out["n_points"] = int(ts.n_points)
    out["source"] = str(getattr(ts, "path", type(ts).__name__))
    return out


class _NoBar:
    def update(self, *_):
        pass

    def set_postfix(self, *_, **__):
        pass

    def close(self):
        pass


def _progress_bar(progress: bool, total: int):
    if not progress:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="train emulator", unit="epoch", dynamic_ncols=True)


def _note(progress: bool, message: str) -> None:
    import warnings

    warnings.warn(message, stacklevel=3)
