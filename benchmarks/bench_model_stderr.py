"""What the emulator likelihood's model stderr costs, side by side with the network.

Times jit-compiled value-and-gradient of theta -> sum(log model_stderr(theta)) for 4 thetas
(vmapped, as 4 vectorized NUTS chains call it) on a trained emulator artifact, for:

* ``kernel mean``: the Nadaraya-Watson mean at one design spacing (before 2026-12-01);
* ``local-linear, full``: the local-linear fit solving for every coefficient of every summary
  (the first version of 2026-12-01);
* ``local-linear, intercept``: ``SobolevEmulator.model_stderr`` (only the intercept is solved for);

and, as the yardstick, theta -> sum(predict(theta) mean) (the ensemble network).  Best of
``--repeats`` x 50 calls each, compiled first.

    python benchmarks/bench_model_stderr.py EMULATOR [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)


def kernel_mean(model, theta, spacing_factor):
    unit, log_stderr, h, low, width = model
    h = h / spacing_factor  # the artifact's bandwidth is STDERR_BANDWIDTH x spacing
    u = (theta - low) / width
    logw = -0.5 * jnp.sum((u[..., None, :] - unit) ** 2, axis=-1) / h**2
    w = jnp.exp(logw - jnp.max(logw, axis=-1, keepdims=True))
    return jnp.exp((w @ log_stderr) / jnp.sum(w, axis=-1, keepdims=True))


def local_linear_full(model, theta, ridge):
    unit, log_stderr, h, low, width = model
    du = (unit - ((theta - low) / width)[..., None, :]) / h
    logw = -0.5 * jnp.sum(du**2, axis=-1)
    w = jnp.exp(logw - jnp.max(logw, axis=-1, keepdims=True))
    x = jnp.concatenate([jnp.ones(du.shape[:-1] + (1,)), du], axis=-1)
    xtw = jnp.swapaxes(x * w[..., None], -1, -2)
    penalty = np.diag(np.r_[0.0, np.ones(unit.shape[1])])
    a = xtw @ x + ridge * jnp.sum(w, axis=-1)[..., None, None] * penalty
    return jnp.exp(jnp.linalg.solve(a, xtw @ log_stderr)[..., 0, :])


def best_time(fn, theta, repeats: int) -> float:
    jax.block_until_ready(fn(theta))
    best = np.inf
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(50):
            out = fn(theta)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - started) / 50)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("emulator", help="a trained SobolevEmulator artifact with training stderr")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from emulator import SobolevEmulator
    from emulator.artifact import STDERR_BANDWIDTH, STDERR_RIDGE

    emu = SobolevEmulator.load(args.emulator)
    theta = jnp.asarray(emu.prior.from_unit(np.random.default_rng(0).uniform(0.3, 0.7, size=(4, emu.prior.ndim))))
    from scipy.spatial import cKDTree

    unit = np.asarray(emu.prior.to_unit(emu.training_theta), np.float64)
    spacing = float(np.median(cKDTree(unit).query(unit, k=2)[0][:, 1]))
    low, width = np.asarray(emu.prior.low, np.float64), np.asarray(emu.prior.width, np.float64)
    model = (unit, np.log(emu.training_stderr), STDERR_BANDWIDTH * spacing, low, width)
    variants = {
        "network (predict mean)": lambda t: jnp.sum(emu.predict(t)[0]),
        "kernel mean, 1 spacing (before)": lambda t: jnp.sum(jnp.log(kernel_mean(model, t, STDERR_BANDWIDTH))),
        "local-linear, full solve": lambda t: jnp.sum(jnp.log(local_linear_full(model, t, STDERR_RIDGE))),
        "local-linear, intercept (now)": lambda t: jnp.sum(jnp.log(emu.model_stderr(t))),
    }
    print(
        f"{emu.training_theta.shape[0]} training points, {emu.n_summary} summaries; {platform.node()}, {jax.devices()[0]}"
    )
    reference = None
    for name, f in variants.items():
        seconds = best_time(jax.jit(jax.value_and_grad(f)), theta, args.repeats)
        reference = reference or seconds
        print(f"{name:34s} {1e6 * seconds:9.1f} us per value+grad of 4 thetas ({seconds / reference:.2f}x the network)")
    now = np.asarray(emu.model_stderr(theta))
    full = np.asarray(local_linear_full(model, theta, STDERR_RIDGE))
    print(f"intercept-only vs full solve: max relative difference {np.max(np.abs(now / full - 1)):.2e}")


if __name__ == "__main__":
    main()
