"""How smooth are the exact summaries of a training set?  (issue 5: the emulator's floor)

    python benchmarks/summary_smoothness.py STORE.zarr [--points 16] [--out benchmarks/results/summary_smoothness.json]

For ``--points`` seeded design points of the store, the stored exact summary Jacobian is
compared with central secants of the exact summaries (same model and halos as the store) over
steps of 0.1%, 1% and 3% of each parameter's prior width, with the emulator report's metric:
||(J - secant) W||_F / ||J W||_F, W = diag(1/sigma_obs) diag(prior width).  A smooth function
gives differences that shrink with the step; where the exact summaries change slope on scales
below a few % of the prior box, no smooth emulator trained on a design much coarser than that
can match the exact Jacobian more closely than these numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from training_sets import open_training_set
from training_sets.generate import model_from_attrs
from training_sets.store import open_group, read_halos

STEPS = (0.001, 0.01, 0.03)  # fractions of the prior width


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store")
    parser.add_argument("--points", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/summary_smoothness.json")
    args = parser.parse_args(argv)
    root = open_group(args.store)
    model, halos, ts = model_from_attrs(dict(root.attrs)), read_halos(root), open_training_set(args.store)
    obs, prior = ts.observations, model.prior
    sigma, width = np.asarray(obs.sigma), np.asarray(prior.width)
    weighted = lambda jac: jac / sigma[:, None] * width[None, :]
    picked = np.sort(np.random.default_rng(args.seed).choice(ts.n_points, args.points, replace=False))
    rows = ts.load(picked)
    differences = {step: [] for step in STEPS}
    for k, theta in enumerate(rows["theta"]):
        exact = rows["summary_jacobian"][k]
        for step in STEPS:
            secant = np.zeros_like(exact)
            for j in range(prior.ndim):
                lower, upper = theta.copy(), theta.copy()
                lower[j] = max(theta[j] - step * width[j], prior.low[j])
                upper[j] = min(theta[j] + step * width[j], prior.high[j])
                rise = np.asarray(model.summaries(upper, halos, obs).mean) - np.asarray(
                    model.summaries(lower, halos, obs).mean
                )
                secant[:, j] = rise / (upper[j] - lower[j])
            differences[step].append(float(np.linalg.norm(weighted(exact - secant)) / np.linalg.norm(weighted(exact))))
        print(f"point {picked[k]}: " + ", ".join(f"{s:g} width: {differences[s][-1]:.4f}" for s in STEPS), flush=True)
    result = {
        "store": str(args.store),
        "points": picked.tolist(),
        "n_halos": halos.n_halos,
        "metric": "||(J_exact - secant) W||_F / ||J_exact W||_F, W = diag(1/sigma_obs) diag(prior width)",
        "per_point": {str(s): v for s, v in differences.items()},
        "median": {str(s): float(np.median(v)) for s, v in differences.items()},
        "p75": {str(s): float(np.percentile(v, 75)) for s, v in differences.items()},
    }
    print("median:", result["median"], "p75:", result["p75"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
