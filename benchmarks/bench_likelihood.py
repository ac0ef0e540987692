"""Cost of the likelihood and its gradient against ``Model.jacobian``, side by side.

    python benchmarks/bench_likelihood.py [--halos 256] [--repeats 5] [--out benchmarks/results/bench_likelihood.json]

Acceptance (issue 3): ``log_likelihood`` + gradient for 256 halos costs <= 1.5x ``model.jacobian``
on the same halos.  Both are called once first (compilation excluded; they share the compiled
sensitivity solve), then alternately ``--repeats`` times; best and median are reported.  Also
timed: ``log_likelihood`` alone against ``model.evolve`` (the plain solve), and ``jax.grad`` of
``log_likelihood`` (reverse mode through the custom_jvp; it compiles its own solver copy).
Parameter points: the prior centre and one Latin-hypercube draw.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import sapphire
from sapphire.prior import latin_hypercube


def timed(fn):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def side_by_side(fns: dict, repeats: int, label: str) -> dict:
    first = {}
    for name, fn in fns.items():
        first[name] = timed(fn)
        print(f"  [{label}] {name}: first call (incl. compilation) {first[name]:.2f} s", flush=True)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    out = {}
    for name, values in times.items():
        out[name] = {
            "best_s": min(values),
            "median_s": float(np.median(values)),
            "first_call_s": first[name],
            "all_s": values,
        }
        print(f"  [{label}] {name}: best {min(values):.3f} s, median {np.median(values):.3f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--halos", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-jax-grad", action="store_true", help="skip jax.grad(log_likelihood) (its own compilation)"
    )
    parser.add_argument("--out", default="benchmarks/results/bench_likelihood.json")
    args = parser.parse_args()

    model = sapphire.Model()
    obs = sapphire.Observations.default()
    halos = sapphire.HaloPopulation.from_diffmah(args.halos, seed=args.seed)
    points = {"centre": sapphire.DEFAULT_PRIOR.centre, "lhs_draw": latin_hypercube(sapphire.DEFAULT_PRIOR, 1, 7)[0]}
    report = {
        "halos": args.halos,
        "repeats": args.repeats,
        "solver": model.settings.to_dict(),
        "machine": {
            "platform": platform.platform(),
            "backend": jax.default_backend(),
            "cpus": os.cpu_count(),
            "jax": jax.__version__,
            "load_average_at_start": list(os.getloadavg()),
        },
        "points": {},
    }
    for label, theta in points.items():
        print(f"theta = {label}: {np.round(theta, 3).tolist()}", flush=True)
        fns = {
            "model.jacobian": lambda: model.jacobian(theta, halos),
            "log_likelihood_and_grad": lambda: sapphire.log_likelihood_and_grad(theta, model, halos, obs).grad,
            "model.evolve": lambda: model.evolve(theta, halos).log_state,
            "log_likelihood": lambda: sapphire.log_likelihood(theta, model, halos, obs),
        }
        if not args.no_jax_grad:
            grad = jax.grad(lambda t: sapphire.log_likelihood(t, model, halos, obs))
            theta_j = jnp.asarray(theta)
            fns["jax.grad(log_likelihood)"] = lambda: grad(theta_j)
        rows = side_by_side(fns, args.repeats, label)
        ratio = rows["log_likelihood_and_grad"]["best_s"] / rows["model.jacobian"]["best_s"]
        ratio_median = rows["log_likelihood_and_grad"]["median_s"] / rows["model.jacobian"]["median_s"]
        value = sapphire.log_likelihood_and_grad(theta, model, halos, obs)
        entry = {
            "theta": theta.tolist(),
            "timings": rows,
            "ratio_loglike_and_grad_over_jacobian_best": ratio,
            "ratio_loglike_and_grad_over_jacobian_median": ratio_median,
            "ratio_loglike_over_evolve_best": rows["log_likelihood"]["best_s"] / rows["model.evolve"]["best_s"],
            "log_likelihood": float(value.value),
            "n_failed": value.n_failed,
            "acceptance_ratio_le_1.5": bool(ratio <= 1.5),
        }
        if "jax.grad(log_likelihood)" in rows:
            entry["ratio_jax_grad_over_jacobian_best"] = (
                rows["jax.grad(log_likelihood)"]["best_s"] / rows["model.jacobian"]["best_s"]
            )
        report["points"][label] = entry
        print(
            f"  [{label}] log-likelihood + gradient / jacobian = {ratio:.3f} (best), {ratio_median:.3f} (median); "
            f"n_failed = {value.n_failed}",
            flush=True,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
