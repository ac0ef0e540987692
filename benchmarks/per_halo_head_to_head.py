"""Issue 21: a per-halo emulator against the summary emulator, head to head, on the same
held-out posterior points and at the same exact-model cost.

Both emulators learn from one store of exact points drawn where a posterior lives, and both are
scored on posterior draws that neither has seen:

1. **Posterior.** The NUTS draws of a ``sapphire forecast`` run (``hmc_samples.npz``), for example
   the real-data run of docs/real_data_modes.md.
2. **Points.** ``--points`` design points from N(mean, (``--broaden`` x)^2 cov) of the draws,
   clipped into the prior box (seeded); ``--held-out`` random draws (seeded) are the test.
3. **Exact model.** ``training_sets.generate`` with ``save_states`` on both designs (same
   ``--halos`` halos, halo seed 0): summaries, their Jacobians and each halo's z = 0 log state.
4. **Summary emulator.** ``emulator.train_emulator`` with its defaults (the ``sapphire train``
   emulator): theta -> the 30 summaries, Sobolev loss, ensemble of 5.
5. **Per-halo emulator.** One MLP (``emulator.network.MLP``, ``--hidden``, silu) maps theta and the
   halo's own descriptors (log10 M_h at ``N_DESCRIPTOR_TIMES`` times of its history) to the
   halo's three relation coordinates (log M_*/M_h, log M_ISM/M_*, log M_Z,ISM/M_ISM); every
   design point gives one training example per halo.  Values only (mean squared error, Adam,
   ``--steps`` full-batch steps).  The summaries are the exact kernel regression
   (``sapphire.summaries.summary_statistics``) of its per-halo predictions, and its Jacobians
   are JAX's derivatives of that composition.
6. **Scores** on the held-out points: |emulator - exact| / sigma_obs over all summaries (median,
   p95, max) and the Jacobian's relative Frobenius error per point (median), as
   ``sapphire emulator-report`` defines it.

    python benchmarks/per_halo_head_to_head.py --samples RUN/hmc_samples.npz --out DIR

Writes ``DIR/head_to_head.json`` and ``DIR/head_to_head.md``; the stores stay in ``DIR``.

Status: run on 2026-12-06 (docs/design.md s.17, benchmarks/results/issue21_head_to_head/).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

N_DESCRIPTOR_TIMES = 6
RELATION_STATES = (0, 2, 3)  # log M_*, log M_ISM, log M_Z,ISM columns of the 7 log states


def draw_designs(samples: np.ndarray, prior, n_points: int, n_held: int, broaden: float, seed: int):
    """(train (n_points, 8), held-out (n_held, 8)): broadened-Gaussian design, random draws."""
    rng = np.random.default_rng(seed)
    flat = samples.reshape(-1, samples.shape[-1])
    mean, cov = flat.mean(axis=0), np.cov(flat, rowvar=False)
    low, high = np.asarray(prior.low), np.asarray(prior.high)
    eps = 1e-6 * (high - low)
    train = np.clip(rng.multivariate_normal(mean, broaden**2 * cov, size=n_points), low + eps, high - eps)
    held = flat[rng.choice(len(flat), size=n_held, replace=False)]
    return train, held


def halo_descriptors(halos) -> np.ndarray:
    """(H, N_DESCRIPTOR_TIMES): each halo's log10 M_h at evenly spaced times of the common grid."""
    log_mhalo = np.asarray(halos.log_mhalo)
    index = np.linspace(0, log_mhalo.shape[1] - 1, N_DESCRIPTOR_TIMES).round().astype(int)
    return log_mhalo[:, index]


def relation_targets(log_state: np.ndarray, log_mhalo_z0: np.ndarray) -> np.ndarray:
    """(..., H, 3): log M_*/M_h, log M_ISM/M_*, log M_Z,ISM/M_ISM of each halo."""
    m_star, m_ism, m_zism = (log_state[..., i] for i in RELATION_STATES)
    return np.stack([m_star - log_mhalo_z0, m_ism - m_star, m_zism - m_ism], axis=-1)


class PerHaloEmulator:
    """theta (8,) -> summaries (S,) through an MLP of (theta, halo descriptors) -> 3 relation
    coordinates per halo and the exact kernel regression."""

    def __init__(self, prior, halos, observations, config, hidden, seed: int):
        from flax import nnx

        from emulator.network import MLP, Architecture

        self.low, self.width = np.asarray(prior.low), np.asarray(prior.width)
        desc = halo_descriptors(halos)
        self.desc_unit = (desc - desc.min(axis=0)) / np.maximum(desc.max(axis=0) - desc.min(axis=0), 1e-12)
        self.log_mhalo_z0 = np.asarray(halos.log_mhalo_z0)
        self.observations, self.config = observations, config
        self.model = MLP(Architecture(8 + N_DESCRIPTOR_TIMES, 3, tuple(hidden), "silu"), rngs=nnx.Rngs(seed))
        self.y_mean = np.zeros(3)
        self.y_std = np.ones(3)

    def inputs(self, theta):
        import jax.numpy as jnp

        unit = (jnp.asarray(theta) - self.low) / self.width  # (..., 8)
        h = self.desc_unit.shape[0]
        unit = jnp.broadcast_to(unit[..., None, :], unit.shape[:-1] + (h, 8))
        desc = jnp.broadcast_to(jnp.asarray(self.desc_unit), unit.shape[:-1] + (N_DESCRIPTOR_TIMES,))
        return jnp.concatenate([unit, desc], axis=-1)  # (..., H, 14)

    def fit(self, theta: np.ndarray, targets: np.ndarray, steps: int, learning_rate: float, seed: int) -> dict:
        """Full-batch Adam on the mean squared error of the standardised targets (N, H, 3)."""
        import jax.numpy as jnp
        import optax
        from flax import nnx

        ok = np.all(np.isfinite(targets), axis=-1)  # failed halos carry NaN: left out
        self.y_mean = np.nanmean(targets[ok], axis=0)
        self.y_std = np.nanstd(targets[ok], axis=0)
        x = self.inputs(theta)[ok]
        y = (targets[ok] - self.y_mean) / self.y_std
        schedule = optax.cosine_decay_schedule(learning_rate, steps, alpha=1e-2)
        optimizer = nnx.Optimizer(self.model, optax.adam(schedule), wrt=nnx.Param)

        @nnx.jit
        def step(model, optimizer, x, y):
            def loss_fn(model):
                return jnp.mean((model(x) - y) ** 2)

            loss, grads = nnx.value_and_grad(loss_fn)(model)
            optimizer.update(model, grads)
            return loss

        started = time.perf_counter()
        losses = [float(step(self.model, optimizer, x, y)) for _ in range(steps)]
        return {"examples": int(ok.sum()), "final_loss": losses[-1], "seconds": time.perf_counter() - started}

    def log_states(self, theta):
        """(H, 7) log states with the emulated relation columns (the others are unused)."""
        import jax.numpy as jnp

        y = self.model(self.inputs(theta)) * self.y_std + self.y_mean  # (H, 3)
        m_star = self.log_mhalo_z0 + y[:, 0]
        m_ism = m_star + y[:, 1]
        m_zism = m_ism + y[:, 2]
        state = jnp.zeros((y.shape[0], 7))
        return state.at[:, 0].set(m_star).at[:, 2].set(m_ism).at[:, 3].set(m_zism)

    def summaries(self, theta):
        from sapphire.summaries import summary_statistics

        valid = np.ones(self.log_mhalo_z0.shape, bool)
        mean, _ = summary_statistics(self.log_mhalo_z0, self.log_states(theta), valid, self.observations, self.config)
        return mean


def scores(pred: np.ndarray, exact: np.ndarray, sigma: np.ndarray, jac: np.ndarray, jac_exact: np.ndarray) -> dict:
    """Value error in sigma_obs (median, p95, max over points x summaries; worst summary's p95)
    and the Jacobian's relative Frobenius error per point (median, p95)."""
    err = np.abs(pred - exact) / sigma
    jac_rel = np.linalg.norm(jac - jac_exact, axis=(1, 2)) / np.linalg.norm(jac_exact, axis=(1, 2))
    return {
        "value_error_median": float(np.median(err)),
        "value_error_p95": float(np.percentile(err, 95)),
        "value_error_max": float(err.max()),
        "worst_summary_p95": float(np.percentile(err, 95, axis=0).max()),
        "jacobian_error_median": float(np.median(jac_rel)),
        "jacobian_error_p95": float(np.percentile(jac_rel, 95)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", required=True, help="hmc_samples.npz of a sapphire forecast run")
    parser.add_argument("--out", required=True, help="output folder (stores, JSON, markdown)")
    parser.add_argument("--points", type=int, default=256, help="training design points (default 256)")
    parser.add_argument("--held-out", type=int, default=40, help="held-out posterior draws (default 40)")
    parser.add_argument("--halos", type=int, default=32, help="halos per point (default 32)")
    parser.add_argument("--broaden", type=float, default=1.5, help="design covariance = broaden^2 x posterior's")
    parser.add_argument("--hidden", default="128,128,128", help="per-halo MLP widths (default 128,128,128)")
    parser.add_argument("--steps", type=int, default=4000, help="per-halo MLP full-batch Adam steps")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import sapphire
    from emulator import train_emulator
    from training_sets import generate, open_training_set
    from training_sets.evaluate import model_from_attrs
    from training_sets.store import open_group, read_halos

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples = np.load(args.samples)["samples"]
    prior = sapphire.DEFAULT_PRIOR
    train, held = draw_designs(samples, prior, args.points, args.held_out, args.broaden, args.seed)
    timings = {}
    stores = {}
    for name, design in (("train", train), ("held_out", held)):
        path = out / f"{name}.zarr"
        started = time.perf_counter()
        if not path.exists():
            generate(path, n_halos=args.halos, design_table=design, save_states=True, chunk=8, progress=False)
        timings[f"exact_{name}_s"] = time.perf_counter() - started
        stores[name] = open_training_set(path)

    ts, test = stores["train"], stores["held_out"]
    obs = ts.observations
    sigma = np.asarray(obs.sigma)
    exact = np.asarray(test.summaries.compute())
    jac_exact = np.asarray(test.summary_jacobian.compute())
    theta_test = np.asarray(test.theta.compute())
    results = {}

    started = time.perf_counter()
    emu = train_emulator(str(out / "train.zarr"), seed=args.seed, progress=False)
    timings["summary_emulator_train_s"] = time.perf_counter() - started
    pred = np.stack([np.asarray(emu.predict(t)[0]) for t in theta_test])
    jac = np.stack([np.asarray(emu.jacobian(t)) for t in theta_test])
    results["summary emulator (sapphire train defaults)"] = scores(pred, exact, sigma, jac, jac_exact)

    root = open_group(out / "train.zarr")
    halos = read_halos(root)
    config = model_from_attrs(dict(root.attrs)).config
    per_halo = PerHaloEmulator(prior, halos, obs, config, [int(h) for h in args.hidden.split(",")], args.seed)
    # the exact kernel regression of the exact states reproduces the stored summaries
    states_test = np.asarray(test.halo_log_state.compute())
    from sapphire.summaries import summary_statistics

    valid = np.ones(states_test.shape[1], bool)
    check = max(
        float(np.max(np.abs(np.asarray(summary_statistics(per_halo.log_mhalo_z0, s, valid, obs, config)[0]) - e)))
        for s, e in zip(states_test, exact)
    )
    targets = relation_targets(np.asarray(ts.halo_log_state.compute()), per_halo.log_mhalo_z0)
    fit = per_halo.fit(np.asarray(ts.theta.compute()), targets, args.steps, args.learning_rate, args.seed)
    timings["per_halo_train_s"] = fit["seconds"]
    summaries = jax.jit(per_halo.summaries)
    jacobian = jax.jit(jax.jacfwd(per_halo.summaries))
    pred = np.stack([np.asarray(summaries(t)) for t in theta_test])
    jac = np.stack([np.asarray(jacobian(t)) for t in theta_test])
    results[f"per-halo MLP ({args.hidden}, values only) + exact kernel regression"] = scores(
        pred, exact, sigma, jac, jac_exact
    )
    held_targets = relation_targets(states_test, per_halo.log_mhalo_z0)
    pred_targets = np.stack([np.asarray(per_halo.model(per_halo.inputs(t))) for t in theta_test])
    pred_targets = pred_targets * per_halo.y_std + per_halo.y_mean
    per_halo_rms = np.sqrt(np.nanmean((pred_targets - held_targets) ** 2, axis=(0, 1)))

    record = {
        "settings": vars(args),
        "machine": f"{platform.node()} ({platform.machine()}, {jax.devices()[0].platform})",
        "n_train": int(ts.n_points),
        "n_held_out": int(test.n_points),
        "failed_halos": {"train": int(ts.n_failed.sum().compute()), "held_out": int(test.n_failed.sum().compute())},
        "kernel_regression_of_exact_states_max_abs_diff_dex": check,
        "per_halo_fit": fit,
        "per_halo_rms_error_dex": dict(
            zip(("log Mstar/Mh", "log MISM/Mstar", "log MZ,ISM/MISM"), per_halo_rms.tolist())
        ),
        "timings_s": timings,
        "scores": results,
    }
    (out / "head_to_head.json").write_text(json.dumps(record, indent=1))
    lines = [
        f"# Per-halo vs summary emulator: {ts.n_points} exact points (x{args.halos} halos), {test.n_points} held-out posterior draws",
        "",
        "| emulator | value error median / p95 / max [sigma_obs] | worst-summary p95 | Jacobian error median / p95 |",
        "| --- | --- | --- | --- |",
    ]
    for name, s in results.items():
        lines.append(
            f"| {name} | {s['value_error_median']:.3f} / {s['value_error_p95']:.3f} / {s['value_error_max']:.2f} | "
            f"{s['worst_summary_p95']:.2f} | {s['jacobian_error_median']:.2f} / {s['jacobian_error_p95']:.2f} |"
        )
    lines += ["", f"Timings (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}; {record['machine']}."]
    (out / "head_to_head.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
