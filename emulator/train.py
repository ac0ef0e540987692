"""Sobolev training of the emulator ensemble with optax: the loss (:mod:`emulator.loss`) on the
training split of a training set (:mod:`emulator.data`), K members at once, early stopping, and
the calibration of the ensemble spread (:mod:`emulator.calibration`).

The split
(train / validation / test) is by design point, seeded.  Early stopping: per member, on the
validation loss (same loss as training), with ``patience`` epochs; each member's best
parameters are restored.  The ensemble's spread is then calibrated on the validation split.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .artifact import SobolevEmulator
from .calibration import calibrate_spread
from .data import as_training_set, batch_source, exclusion_counts, explicit_split, split_design, to_network_space
from .loss import SUMMARY_WEIGHTINGS, member_loss, summary_weights
from .network import Architecture, fit_scalings, init_ensemble


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


def _make_steps(graphdef, decoder, settings: TrainingSettings, weights, tx):
    decoder, weights = jnp.asarray(decoder), jnp.asarray(weights)
    loss = lambda p, u, z, jz, jm: member_loss(
        graphdef,
        decoder,
        settings.gradient_weight,
        settings.huber_delta,
        settings.value_huber_delta,
        weights,
        p,
        u,
        z,
        jz,
        jm,
    )
    grad_fn = jax.vmap(jax.value_and_grad(loss, has_aux=True))

    @jax.jit
    def run_block(params, opt_state, u, z, jz, jm, batch_index, active):
        """lax.scan over the block's steps; batch_index (n_steps, K, B) rows of the block,
        active (n_steps,) False for padding steps (no update); jm (rows,) 1 where a row has an
        exact Jacobian."""

        def step(carry, xs):
            params, opt_state = carry
            index, is_active = xs
            (total, (value_penalty, jac_penalty)), grads = grad_fn(params, u[index], z[index], jz[index], jm[index])
            updates, new_opt_state = jax.vmap(tx.update)(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            keep = lambda new, old: jnp.where(is_active, new, old)
            params = jax.tree.map(keep, new_params, params)
            opt_state = jax.tree.map(keep, new_opt_state, opt_state)
            return (params, opt_state), (total, value_penalty, jac_penalty)

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (batch_index, active))
        return params, opt_state, losses

    @jax.jit
    def evaluate(params, u, z, jz, jm):
        """Per-member (total, value_penalty, jac_penalty) on a whole split."""
        total, (value_penalty, jac_penalty) = jax.vmap(loss, in_axes=(0, None, None, None, None))(params, u, z, jz, jm)
        return total, value_penalty, jac_penalty

    @jax.jit
    def keep_best(best, params, improved):
        select = lambda b, p: jnp.where(improved.reshape((-1,) + (1,) * (p.ndim - 1)), p, b)
        return jax.tree.map(select, best, params)

    return run_block, evaluate, keep_best


def _block_schedule(
    n_rows: int, n_pad: int, batch_size: int, ensemble: int, rng_seeds
) -> tuple[np.ndarray, np.ndarray]:
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
    split_indices: Mapping[str, Sequence[int]] | None = None,
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
        split_indices: explicit ``train``/``val``/``test`` store rows instead of ``split`` and the
            seed (:func:`emulator.data.explicit_split`; e.g. the same design points as another
            store's seeded split).
        seed: seeds the split, the members' initialisation (member k: ``[seed, k]``) and the
            minibatch orders.
        progress: tqdm progress bar over epochs.

    Returns:
        :class:`SobolevEmulator`; ``emu.training`` holds the settings, the split indices (store
        numbering), the excluded-point counts, the per-epoch history, the train time and the
        calibration (raw and calibrated +-2 spread coverage on the validation split).
    """
    settings = TrainingSettings(
        gradient_weight=float(gradient_weight),
        huber_delta=None if huber_delta is None else float(huber_delta),
        value_huber_delta=None if value_huber_delta is None else float(value_huber_delta),
        summary_weighting=str(summary_weighting),
        ensemble=int(ensemble),
        epochs=int(epochs),
        patience=int(patience),
        batch_size=int(batch_size),
        learning_rate=float(learning_rate),
        final_learning_rate=float(final_learning_rate),
        weight_decay=float(weight_decay),
        warmup_epochs=int(warmup_epochs),
        block_size=int(block_size),
        split=tuple(float(f) for f in split),
        n_train=None if n_train is None else int(n_train),
        seed=int(seed),
    )
    ts = as_training_set(source)
    start_time = time.perf_counter()
    valid, excluded = exclusion_counts(ts)
    if excluded["excluded"]:
        _note(
            progress,
            f"emulator: {excluded['excluded']} of {excluded['n_points']} design points excluded "
            f"(not done {excluded['not_done']}, failed halos {excluded['failed_halos']}, "
            f"non-finite {excluded['non_finite']})",
        )
    splits = (
        split_design(valid, settings.split, settings.seed)
        if split_indices is None
        else explicit_split(split_indices, valid)
    )
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
    arch = Architecture(
        n_in=ts.prior.ndim, n_out=scalings.decoder.shape[0], hidden=tuple(hidden), activation=activation
    )
    member_seeds = [
        int(np.random.SeedSequence([settings.seed, k]).generate_state(1)[0]) for k in range(settings.ensemble)
    ]
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

    val_u, val_z, val_jz, val_jm = (jnp.asarray(a) for a in to_network_space(ts.load(splits["val"]), scalings))
    source, batch_idx = batch_source(ts, train_idx)
    best_params = params
    best_val = np.full(settings.ensemble, np.inf)
    best_epoch = np.zeros(settings.ensemble, np.int64)
    history: dict[str, list] = {"train_loss": [], "val_loss": [], "val_value_penalty": [], "val_jacobian_penalty": []}
    bar = _progress_bar(progress, settings.epochs)
    epoch = 0
    try:
        for epoch in range(settings.epochs):
            epoch_losses = []
            blocks = source.batches(n_block, indices=batch_idx, seed=_seed(settings.seed, epoch))
            for block_no, block in enumerate(blocks):
                u, z, jz, jm = to_network_space(block, scalings)
                n_rows = u.shape[0]
                index, active = _block_schedule(
                    n_rows,
                    n_block,
                    settings.batch_size,
                    settings.ensemble,
                    [(settings.seed, k, epoch, block_no) for k in range(settings.ensemble)],
                )
                params, opt_state, losses = run_block(
                    params,
                    opt_state,
                    jnp.asarray(_pad_rows(u, n_block)),
                    jnp.asarray(_pad_rows(z, n_block)),
                    jnp.asarray(_pad_rows(jz, n_block)),
                    jnp.asarray(_pad_rows(jm, n_block)),
                    jnp.asarray(index),
                    jnp.asarray(active),
                )
                epoch_losses.append(np.asarray(losses[0])[active])
            val_total, val_value, val_jac = (np.asarray(a) for a in evaluate(params, val_u, val_z, val_jz, val_jm))
            improved = val_total < best_val
            best_val = np.where(improved, val_total, best_val)
            best_epoch = np.where(improved, epoch, best_epoch)
            best_params = keep_best(best_params, params, jnp.asarray(improved))
            history["train_loss"].append(np.concatenate(epoch_losses).mean(axis=0).tolist())
            history["val_loss"].append(val_total.tolist())
            history["val_value_penalty"].append(val_value.tolist())
            history["val_jacobian_penalty"].append(val_jac.tolist())
            bar.update(1)
            bar.set_postfix(
                train=f"{np.mean(history['train_loss'][-1]):.2e}",
                val=f"{np.mean(val_total):.2e}",
                best=f"{np.mean(best_val):.2e}",
            )
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
        training_stderr=np.asarray(ts.summary_stderr[train_idx]),
    )
    calibration = calibrate_spread(emu, ts.load(splits["val"]))
    emu.calibration_factor = calibration["factor"]
    emu.training = {
        "settings": dataclasses.asdict(settings),
        "member_seeds": member_seeds,
        "excluded": excluded,
        "split": {
            "train": train_idx.tolist(),
            "val": splits["val"].tolist(),
            "test": splits["test"].tolist(),
            "n_train_split": int(splits["train"].size),
        },
        "epochs_run": int(epoch + 1),
        "best_epoch": best_epoch.tolist(),
        "best_val_loss": best_val.tolist(),
        "train_seconds": train_seconds,
        "calibration": calibration,
        "history": history,
        "gradient_weight": settings.gradient_weight,
    }
    return emu


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
