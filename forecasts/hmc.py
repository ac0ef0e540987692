"""Posterior sampling with numpyro's NUTS, in resumable blocks.

The numpyro model is a vector site ``theta`` with a uniform prior on the free box (or a user's
numpyro distribution with event shape (n_free,)) and ``numpyro.factor`` of the forward model's
log-likelihood.  The kernel is ``NUTS(dense_mass=True, target_accept_prob=0.8)``.

We drive the kernel ourselves rather than through ``numpyro.infer.MCMC``: each chain is
initialised with ``NUTS.init`` (its own key; Stan-style windowed adaptation over ``num_warmup``
iterations), and transitions run in blocks of at most ``block_size`` iterations (one compiled
``fori_loop``, chains vmapped (``"vectorized"``) or ``lax.map``-ped (``"sequential"``)).  The full
kernel state (position, adaptation, step size, mass matrix, PRNG key) after each block is what a
checkpoint stores, so a run interrupted after any block resumes exactly where it stopped: the
resumed chains are bitwise the uninterrupted ones (each transition depends only on the state,
and the compiled block function is the same whatever the block length).  Blocks never straddle
the end of warmup.

Checkpoints hold no pickle: one NumPy ``.npz`` archive (whatever the file's name) with the arrays
(the kernel state's leaves ``state_000``, ..., the draws so far) and one JSON text ``meta``
(format, forward-model fingerprint, sampler settings, iteration, times, the numpyro / JAX
versions, the state's layout: each leaf's path, dtype and shape, and a sha256 digest of every
array).  It is read with ``np.load(allow_pickle=False)``, so loading never executes code; a
checkpoint written by another numpyro version is read when its state layout is the same as this
version's, and refused with a one-line message naming both versions otherwise; a file whose
arrays do not match its digest (corrupt, edited) or that is not such an archive (an old pickle
checkpoint) is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin
from numpyro.distributions.transforms import biject_to
from numpyro.infer import NUTS, init_to_uniform

from .forward import ForwardModel, check_training_coverage, log_likelihood_and_failures, warn_failed_halos

__all__ = ["HmcResult", "run_hmc", "CheckpointMismatch", "progress_bar"]

CHECKPOINT_FORMAT = 2  # 1: pickles (no longer read)


#: Compiled block functions of this process (oldest first), see ``run_hmc``.
_COMPILED_BLOCKS: dict[str, tuple[ForwardModel, Callable]] = {}
_COMPILED_BLOCKS_KEPT = 4


class CheckpointMismatch(ValueError):
    """A checkpoint belongs to another problem or other sampler settings."""


@dataclasses.dataclass(frozen=True)
class HmcResult:
    """Samples and diagnostics of :func:`run_hmc`.

    Attributes:
        names: free parameter names.
        samples: (chains, draws, n_free) post-warmup draws.
        diverging: (chains, draws) bool; accept_prob, num_steps: (chains, draws).
        r_hat: (n_free,) split Gelman-Rubin (NaN with fewer than 4 draws).
        ess: (n_free,) effective sample size over all chains.
        n_divergent: post-warmup divergent transitions (all chains); warmup_divergent likewise.
        step_size: (chains,) adapted step sizes; inverse_mass_matrix: (chains, n, n).
        complete: False if the run stopped early (``max_blocks``/``time_limit_s``).
        num_warmup, num_samples: requested; draws actually held: ``samples.shape[1]``.
        times: seconds: ``compile``, ``warmup``, ``sampling`` (excluding compilation) and
            ``total`` (this call, everything), summed over resumed calls where stated.
        settings: sampler settings; fingerprint: the forward model's.
        n_failed: (chains, draws) failed halos excluded from the likelihood at each draw (-1:
            not recorded, results saved before it was).
        coverage: None, or for an emulator where the draws lie relative to its training design
            (``forward.check_training_coverage``).
    """

    names: tuple[str, ...]
    samples: np.ndarray
    diverging: np.ndarray
    accept_prob: np.ndarray
    num_steps: np.ndarray
    r_hat: np.ndarray
    ess: np.ndarray
    n_divergent: int
    warmup_divergent: int
    step_size: np.ndarray
    inverse_mass_matrix: np.ndarray
    complete: bool
    num_warmup: int
    num_samples: int
    times: dict
    settings: dict
    fingerprint: str
    n_failed: np.ndarray | None = None
    coverage: dict | None = None

    @property
    def flat(self) -> np.ndarray:
        """(chains * draws, n_free)."""
        return self.samples.reshape(-1, self.samples.shape[-1])

    @property
    def mean(self) -> np.ndarray:
        return self.flat.mean(axis=0)

    @property
    def std(self) -> np.ndarray:
        return self.flat.std(axis=0, ddof=1)

    @property
    def cov(self) -> np.ndarray:
        return np.atleast_2d(np.cov(self.flat, rowvar=False))

    def summary(self) -> dict:
        """JSON-ready diagnostics (no samples)."""
        fin = lambda v: float(v) if np.isfinite(v) else None  # noqa: E731
        n_draws = self.samples.shape[1]
        return {
            "names": list(self.names),
            "mean": self.mean.tolist() if n_draws else None,
            "std": self.std.tolist() if n_draws > 1 else None,
            "r_hat": [fin(v) for v in self.r_hat],
            "ess": [fin(v) for v in self.ess],
            "n_divergent": self.n_divergent,
            "warmup_divergent": self.warmup_divergent,
            "mean_accept_prob": self.accept_prob.mean(axis=1).tolist() if n_draws else None,
            "mean_num_steps": float(self.num_steps.mean()) if n_draws else None,
            "step_size": self.step_size.tolist(),
            "chains": int(self.samples.shape[0]),
            "draws": int(self.samples.shape[1]),
            "num_warmup": self.num_warmup,
            "num_samples": self.num_samples,
            "complete": self.complete,
            "times_s": dict(self.times),
            "settings": dict(self.settings),
            "fingerprint": self.fingerprint,
            "draws_with_failed_halos": None
            if self.n_failed is None or np.any(self.n_failed < 0)
            else int(np.sum(self.n_failed > 0)),
            "max_failed_halos": None
            if self.n_failed is None or np.any(self.n_failed < 0) or not self.n_failed.size
            else int(self.n_failed.max()),
            "training_coverage": self.coverage,
        }

    def save(self, path) -> Path:
        """Write an ``.npz`` with the samples and diagnostics (``HmcResult.load`` reads it)."""
        import json

        path = Path(path)
        np.savez(
            path,
            samples=self.samples,
            diverging=self.diverging,
            accept_prob=self.accept_prob,
            num_steps=self.num_steps,
            step_size=self.step_size,
            inverse_mass_matrix=self.inverse_mass_matrix,
            n_failed=self.n_failed if self.n_failed is not None else np.full(self.diverging.shape, -1),
            meta=np.array(
                json.dumps(
                    {
                        "names": list(self.names),
                        "n_divergent": self.n_divergent,
                        "warmup_divergent": self.warmup_divergent,
                        "complete": self.complete,
                        "num_warmup": self.num_warmup,
                        "num_samples": self.num_samples,
                        "times": self.times,
                        "settings": self.settings,
                        "fingerprint": self.fingerprint,
                        "coverage": self.coverage,
                    }
                )
            ),
        )
        return path

    @classmethod
    def load(cls, path) -> HmcResult:
        import json

        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            return _make_result(
                tuple(meta["names"]),
                f["samples"],
                f["diverging"],
                f["accept_prob"],
                f["num_steps"],
                meta["warmup_divergent"],
                f["step_size"],
                f["inverse_mass_matrix"],
                meta["complete"],
                meta["num_warmup"],
                meta["num_samples"],
                meta["times"],
                meta["settings"],
                meta["fingerprint"],
                f["n_failed"] if "n_failed" in f.files else np.full(f["diverging"].shape, -1),
                meta.get("coverage"),
            )


def _diagnostics(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n_free = samples.shape[-1]
    if samples.shape[1] < 4:
        return np.full(n_free, np.nan), np.full(n_free, np.nan)
    r_hat = np.asarray(split_gelman_rubin(samples), dtype=np.float64)
    ess = np.asarray(effective_sample_size(samples), dtype=np.float64)
    return r_hat, ess


def _make_result(
    names,
    samples,
    diverging,
    accept_prob,
    num_steps,
    warmup_divergent,
    step_size,
    inverse_mass_matrix,
    complete,
    num_warmup,
    num_samples,
    times,
    settings,
    fingerprint,
    n_failed=None,
    coverage=None,
) -> HmcResult:
    r_hat, ess = _diagnostics(samples)
    return HmcResult(
        names=tuple(names),
        samples=samples,
        diverging=diverging.astype(bool),
        accept_prob=accept_prob,
        num_steps=num_steps,
        r_hat=r_hat,
        ess=ess,
        n_divergent=int(diverging.sum()),
        warmup_divergent=int(warmup_divergent),
        step_size=step_size,
        inverse_mass_matrix=inverse_mass_matrix,
        complete=bool(complete),
        num_warmup=int(num_warmup),
        num_samples=int(num_samples),
        times=dict(times),
        settings=dict(settings),
        fingerprint=fingerprint,
        n_failed=None if n_failed is None else np.asarray(n_failed, int),
        coverage=coverage,
    )


# ------------------------------------------------------------------------------------------------
def _prior_distribution(fm: ForwardModel, prior):
    if prior is None:
        return dist.Uniform(jnp.asarray(fm.prior.low), jnp.asarray(fm.prior.high)).to_event(1)
    if not isinstance(prior, dist.Distribution):
        raise ValueError(
            f"prior must be a numpyro Distribution with event shape ({fm.n_free},) or None; got {type(prior).__name__}"
        )
    if tuple(prior.batch_shape + prior.event_shape) != (fm.n_free,) or prior.event_shape != (fm.n_free,):
        raise ValueError(
            f"prior must have event shape ({fm.n_free},) and no batch shape; got batch {prior.batch_shape}, event {prior.event_shape} (use .to_event(1))"
        )
    return prior


def _describe(obj, depth: int = 0) -> str:
    """A process-independent description of a distribution (its attributes sorted by name;
    arrays by shape and value): numpyro's pytree aux data order varies between processes."""
    if depth > 6:
        return type(obj).__name__
    if isinstance(obj, dist.Distribution):
        items = sorted((k, v) for k, v in vars(obj).items() if k not in ("_validate_args",))
        return f"{type(obj).__name__}(" + ",".join(f"{k}={_describe(v, depth + 1)}" for k, v in items) + ")"
    if isinstance(obj, (np.ndarray, jax.Array, float, int, np.number)):
        arr = np.asarray(obj, dtype=np.float64)
        return f"{arr.shape}:{hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:12]}"
    if isinstance(obj, (tuple, list)):
        return "(" + ",".join(_describe(v, depth + 1) for v in obj) + ")"
    if isinstance(obj, (str, bool, type(None))):
        return repr(obj)
    if hasattr(obj, "__dict__") and not callable(obj):
        items = sorted(vars(obj).items())
        return f"{type(obj).__name__}(" + ",".join(f"{k}={_describe(v, depth + 1)}" for k, v in items) + ")"
    return type(obj).__name__


def _prior_tag(prior) -> str:
    return f"{type(prior).__name__}:{hashlib.sha256(_describe(prior).encode()).hexdigest()[:12]}"


def _init_params(prior_dist, init, num_chains: int, n_free: int, box):
    """Per-chain numpyro init dicts; a start on a face of the ``box`` (a MAP at a bound) is moved
    1e-6 of the box's width inside, where the transform to the unconstrained space is finite."""
    if init is None:
        return [None] * num_chains
    values = np.asarray(init, dtype=np.float64)
    if values.shape == (n_free,):
        values = np.broadcast_to(values, (num_chains, n_free))
    if values.shape != (num_chains, n_free):
        raise ValueError(f"init must have shape ({n_free},) or ({num_chains}, {n_free}); got {values.shape}")
    to_unconstrained = biject_to(prior_dist.support).inv
    low, high = np.asarray(box.low, np.float64), np.asarray(box.high, np.float64)
    eps = 1e-6 * (high - low)
    out = []
    for row in values:
        z = to_unconstrained(jnp.asarray(row))
        if not np.all(np.isfinite(z)) and np.all((row >= low) & (row <= high)):
            z = to_unconstrained(jnp.asarray(np.clip(row, low + eps, high - eps)))
        if not np.all(np.isfinite(z)):
            raise ValueError(f"init {row} lies outside the prior's support")
        out.append({"theta": z})
    return out


def _digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over every array's name, dtype, shape and bytes (in name order)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _state_layout(state) -> list[list]:
    """[path, dtype, shape] of every leaf of a kernel state (chains stacked)."""
    return [
        [jax.tree_util.keystr(path), np.asarray(leaf).dtype.str, list(np.shape(leaf))]
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
    ]


def _write_checkpoint(path: Path, meta: dict, state, arrays: dict[str, np.ndarray]) -> None:
    """Atomically write the ``.npz`` checkpoint (module docstring): state leaves, ``arrays`` and
    the JSON ``meta`` (with the state layout, versions and the arrays' digest added)."""
    leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(jax.device_get(state))]
    content = {f"state_{i:03d}": leaf for i, leaf in enumerate(leaves)} | {k: np.asarray(v) for k, v in arrays.items()}
    meta = dict(
        meta,
        numpyro_version=numpyro.__version__,
        jax_version=jax.__version__,
        state_layout=_state_layout(state),
        digest=_digest(content),
    )
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_checkpoint(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of a checkpoint, read without executing anything; ``CheckpointMismatch``
    if it is not a readable checkpoint of this format or its arrays do not match their digest."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if not isinstance(f, np.lib.npyio.NpzFile) or "meta" not in f.files:
                raise ValueError("no 'meta' record in an .npz archive")
            meta = json.loads(str(f["meta"]))
            arrays = {name: f[name] for name in f.files if name != "meta"}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise CheckpointMismatch(
            f"checkpoint {path} is not a readable sapphire .npz checkpoint ({type(exc).__name__}: {exc}); checkpoints of "
            "older versions were pickles, which are no longer loaded because loading one can run code: delete it or use another path"
        ) from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatch(
            f"checkpoint {path}: format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT}; delete it or use another path"
        )
    if _digest(arrays) != meta.get("digest"):
        raise CheckpointMismatch(
            f"checkpoint {path} is corrupt or was modified (its arrays do not match the digest it records); delete it or use another path"
        )
    return meta, arrays


def _restore_state(meta: dict, arrays: dict[str, np.ndarray], fresh_state, path: Path):
    """The saved kernel state in the structure of ``fresh_state`` (this numpyro's), or
    ``CheckpointMismatch`` naming both numpyro versions if the layouts differ."""
    now = _state_layout(fresh_state)
    saved = meta.get("state_layout")
    if saved != now:
        first = next(
            (f"{a} vs {b}" for a, b in zip(saved or [], now) if a != b), f"{len(saved or [])} leaves vs {len(now)}"
        )
        raise CheckpointMismatch(
            f"checkpoint {path} was written by numpyro {meta.get('numpyro_version')}, whose sampler state differs from numpyro "
            f"{numpyro.__version__}'s (first difference: {first}); resume with numpyro {meta.get('numpyro_version')} or delete it"
        )
    leaves = [jnp.asarray(arrays[f"state_{i:03d}"]) for i in range(len(now))]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(fresh_state), leaves)


def _check_checkpoint(saved: dict, fingerprint: str, settings: dict, path: Path) -> None:
    if saved["fingerprint"] != fingerprint:
        raise CheckpointMismatch(
            f"checkpoint {path} belongs to another forward model (fingerprint {saved['fingerprint']}, this one "
            f"{fingerprint}: free parameters, data, relations, sigma scale or model differ); delete it or use another path"
        )
    diffs = {k: (saved["settings"].get(k), v) for k, v in settings.items() if saved["settings"].get(k) != v}
    if diffs:
        text = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diffs.items())
        raise CheckpointMismatch(
            f"checkpoint {path} was made with other sampler settings ({text}); delete it or use another path"
        )


def progress_bar(description: str, total: int) -> Callable[[dict], None]:
    """A tqdm bar (iterations per chain) to pass as ``run_hmc(..., progress=...)``; it is fed
    by the per-block callback and closes itself at the last iteration."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=description, unit="it")

    def update(info: dict) -> None:
        bar.n = info["iteration"]
        bar.set_postfix(phase=info["phase"], steps=f"{info['mean_num_steps']:.0f}")
        bar.refresh()
        if info["iteration"] >= info["total"]:
            bar.close()

    return update


def run_hmc(
    fm: ForwardModel,
    *,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 1000,
    seed: int = 0,
    prior=None,
    dense_mass: bool = True,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    chain_method: str | None = None,
    init=None,
    checkpoint: str | os.PathLike | None = None,
    block_size: int | None = None,
    max_blocks: int | None = None,
    time_limit_s: float | None = None,
    progress: Callable[[dict], None] | None = None,
) -> HmcResult:
    """NUTS on the free parameters of ``fm``.

    Args:
        fm: forward model.
        num_chains, num_warmup, num_samples: chains and iterations per chain.
        seed: PRNG seed (chain c uses ``random.split(PRNGKey(seed), num_chains)[c]``).
        prior: None (uniform on ``fm.prior``'s box) or a numpyro distribution with event shape
            (n_free,) (e.g. ``dist.Normal(mu, s).to_event(1)``); the forward model is not checked
            against its box inside the sampler.
        dense_mass, target_accept_prob, max_tree_depth: NUTS settings.
        chain_method: "vectorized" (vmap the chains) or "sequential" (``lax.map``); default
            ``fm.preferred_chain_method`` ("vectorized"; "sequential" for the exact model, whose
            solver would run both branches of its per-group choice under vmap).
        init: None (numpyro's ``init_to_uniform``, radius 2, per-chain key) or starting points
            (n_free,) / (num_chains, n_free) inside the prior's support (a start on a face of
            the box, such as a MAP at a bound, begins 1e-6 of the box's width inside).
        checkpoint: path of the checkpoint file (an ``.npz`` archive, module docstring; any name).  If it exists the run RESUMES from it (after checking
            that the forward model's fingerprint and the sampler settings match: otherwise
            ``CheckpointMismatch``); it is rewritten atomically after every block.
            ``num_samples`` may be raised on resume to extend a finished run.
        block_size: iterations per block (default: 50 with a checkpoint, else the whole phase).
        max_blocks: stop after this many blocks in this call (``complete=False``); with
            ``time_limit_s`` (seconds since the call began, checked after each block; at least one
            block runs) the way to run "as far as possible".
        progress: called after each block with a dict (phase, iteration, total, seconds, ...).

    Returns:
        :class:`HmcResult`.
    """
    if num_chains < 1 or num_warmup < 0 or num_samples < 1:
        raise ValueError(
            f"need num_chains >= 1, num_warmup >= 0, num_samples >= 1; got {num_chains}, {num_warmup}, {num_samples}"
        )
    chain_method = fm.preferred_chain_method if chain_method is None else chain_method
    if chain_method not in ("vectorized", "sequential"):
        raise ValueError(f"chain_method must be 'vectorized' or 'sequential'; got {chain_method!r}")
    if block_size is None:
        block_size = 50 if checkpoint is not None else max(num_warmup, num_samples)
    block_size = int(block_size)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1; got {block_size}")
    t_call = time.perf_counter()
    prior_dist = _prior_distribution(fm, prior)
    spec, data, n_free = fm.spec, fm.data, fm.n_free
    settings = {
        "num_chains": int(num_chains),
        "num_warmup": int(num_warmup),
        "seed": int(seed),
        "prior": _prior_tag(prior_dist),
        "dense_mass": bool(dense_mass),
        "target_accept_prob": float(target_accept_prob),
        "max_tree_depth": int(max_tree_depth),
        "chain_method": chain_method,
        "init": None
        if init is None
        else hashlib.sha256(np.ascontiguousarray(np.asarray(init, dtype=np.float64)).tobytes()).hexdigest()[:12],
    }
    fingerprint = fm.fingerprint()

    def model():
        theta = numpyro.sample("theta", prior_dist)
        log_likelihood, n_failed = log_likelihood_and_failures(spec, data, theta)
        numpyro.factor("log_likelihood", log_likelihood)
        numpyro.deterministic("n_failed", n_failed)  # recorded per draw (postprocess)

    checkpoint = None if checkpoint is None else Path(checkpoint)
    saved = None
    if checkpoint is not None and checkpoint.exists():
        saved, saved_arrays = _read_checkpoint(checkpoint)
        _check_checkpoint(saved, fingerprint, settings, checkpoint)
        if saved_arrays["samples"].shape[1] > num_samples:
            raise CheckpointMismatch(
                f"checkpoint {checkpoint} already holds {saved_arrays['samples'].shape[1]} draws > num_samples = {num_samples}"
            )

    kernel = NUTS(
        model,
        dense_mass=dense_mass,
        target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth,
        init_strategy=init_to_uniform(radius=2.0),
    )
    keys = jax.random.split(jax.random.PRNGKey(seed), num_chains)
    inits = _init_params(prior_dist, init, num_chains, n_free, fm.prior)
    # Every chain is initialised (this also builds the kernel's sample function); a resumed run
    # then replaces the states by the checkpoint's.
    states = [
        kernel.init(keys[c], num_warmup, init_params=inits[c], model_args=(), model_kwargs={})
        for c in range(num_chains)
    ]
    state = jax.tree.map(lambda *xs: jnp.stack(xs), *states)

    iteration = 0
    samples, diverging, accept, nsteps, failed = (
        np.zeros((num_chains, 0) + s, t) for s, t in (((n_free,), float), ((), bool), ((), float), ((), int), ((), int))
    )
    warmup_divergent, warmup_failed = np.zeros(num_chains, int), np.zeros(num_chains, int)
    times = {"compile": 0.0, "warmup": 0.0, "sampling": 0.0}
    if saved is not None:
        state = _restore_state(saved, saved_arrays, state, checkpoint)
        iteration = int(saved["iteration"])
        samples, diverging, accept, nsteps, failed = (
            saved_arrays[k] for k in ("samples", "diverging", "accept_prob", "num_steps", "n_failed")
        )
        warmup_divergent, warmup_failed = saved_arrays["warmup_divergent"], saved_arrays["warmup_failed"]
        times = dict(saved["times"])

    postprocess = kernel.postprocess_fn((), {})

    def block(chain_state, n):
        def body(i, carry):
            s, z, div, acc, steps, nf = carry
            s = kernel.sample(s, (), {})
            sites = postprocess(s.z)
            return (
                s,
                z.at[i].set(sites["theta"]),
                div.at[i].set(s.diverging),
                acc.at[i].set(s.accept_prob),
                steps.at[i].set(s.num_steps),
                nf.at[i].set(sites["n_failed"]),
            )

        init_carry = (
            chain_state,
            jnp.zeros((block_size, n_free)),
            jnp.zeros(block_size, bool),
            jnp.zeros(block_size),
            jnp.zeros(block_size, jnp.int64),
            jnp.zeros(block_size, jnp.int64),
        )
        return jax.lax.fori_loop(0, n, body, init_carry)

    if chain_method == "vectorized":
        run_block = jax.vmap(block, in_axes=(0, None))
    else:
        run_block = lambda s, n: jax.lax.map(lambda one: block(one, n), s)  # noqa: E731

    total = num_warmup + num_samples
    # The block function depends only on the forward model, the sampler settings other than the
    # seed and the starts (which live in the state), the block length and the state's layout: a
    # later call in this process with the same forward-model object and the same rest (a run
    # extended or resumed, e.g. by forecasts.decisive, or run with another seed) reuses its
    # compilation (exact model, 8 halos: 47.3 s -> 20.8 s for another seed, design.md s.18).  The
    # cache holds the object, so its id is not reused while cached.
    kernel_settings = {k: v for k, v in settings.items() if k not in ("seed", "init")}
    compile_key = json.dumps([id(fm), fingerprint, kernel_settings, block_size, _state_layout(state)], sort_keys=True)
    blocks_done, compiled = 0, _COMPILED_BLOCKS.get(compile_key, (None, None))[1]
    stopped_early = False
    while iteration < total:
        if (max_blocks is not None and blocks_done >= max_blocks) or (
            time_limit_s is not None and blocks_done >= 1 and time.perf_counter() - t_call >= time_limit_s
        ):
            stopped_early = True
            break
        in_warmup = iteration < num_warmup
        n = min(block_size, (num_warmup if in_warmup else total) - iteration)
        if compiled is None:
            t0 = time.perf_counter()
            compiled = jax.jit(run_block).lower(state, jnp.int32(n)).compile()
            times["compile"] += time.perf_counter() - t0
            _COMPILED_BLOCKS[compile_key] = (fm, compiled)
            while len(_COMPILED_BLOCKS) > _COMPILED_BLOCKS_KEPT:
                _COMPILED_BLOCKS.pop(next(iter(_COMPILED_BLOCKS)))
        t0 = time.perf_counter()
        state, z, div, acc, steps, nf = compiled(state, jnp.int32(n))
        z, div, acc, steps, nf = (np.asarray(a)[:, :n] for a in (z, div, acc, steps, nf))
        seconds = time.perf_counter() - t0
        iteration += n
        if in_warmup:
            times["warmup"] += seconds
            warmup_divergent = warmup_divergent + div.sum(axis=1)
            warmup_failed = np.maximum(warmup_failed, nf.max(axis=1))
        else:
            times["sampling"] += seconds
            samples = np.concatenate([samples, z], axis=1)
            diverging = np.concatenate([diverging, div], axis=1)
            accept = np.concatenate([accept, acc], axis=1)
            nsteps = np.concatenate([nsteps, steps], axis=1)
            failed = np.concatenate([failed, nf], axis=1)
        blocks_done += 1
        if checkpoint is not None:
            _write_checkpoint(
                checkpoint,
                {
                    "format": CHECKPOINT_FORMAT,
                    "fingerprint": fingerprint,
                    "settings": settings,
                    "iteration": iteration,
                    "times": times,
                },
                state,
                {
                    "samples": samples,
                    "diverging": diverging,
                    "accept_prob": accept,
                    "num_steps": nsteps,
                    "warmup_divergent": warmup_divergent,
                    "n_failed": failed,
                    "warmup_failed": warmup_failed,
                },
            )
        if progress is not None:
            progress(
                {
                    "phase": "warmup" if in_warmup else "sampling",
                    "iteration": iteration,
                    "total": total,
                    "block_s": seconds,
                    "elapsed_s": time.perf_counter() - t_call,
                    "divergent": int(diverging.sum() + (warmup_divergent.sum() if in_warmup else 0)),
                    "mean_accept_prob": float(acc.mean()),
                    "mean_num_steps": float(steps.mean()),
                }
            )

    times = dict(times, total_this_call=time.perf_counter() - t_call)
    adapt = state.adapt_state
    warn_failed_halos("run_hmc", failed.reshape(-1), "draws")
    warn_failed_halos("run_hmc (warmup)", warmup_failed, "chains' warmups")
    coverage = (
        check_training_coverage(fm, samples.reshape(-1, n_free), "run_hmc", "draws") if samples.shape[1] else None
    )
    return _make_result(
        fm.free_names,
        samples,
        diverging,
        accept,
        nsteps,
        warmup_divergent.sum(),
        np.asarray(adapt.step_size),
        np.asarray(
            adapt.inverse_mass_matrix[("theta",)]
            if isinstance(adapt.inverse_mass_matrix, dict)
            else adapt.inverse_mass_matrix
        ),
        not stopped_early and iteration >= total,
        num_warmup,
        num_samples,
        times,
        settings,
        fingerprint,
        failed,
        coverage,
    )
