"""Sobolev weight sweep: one emulator (K = 1) per gradient weight lambda on the same store,
split and seed, trained on the whole training split and validated on the test split (one
point of :func:`emulator.learning_curve` per lambda).

    python benchmarks/emulator_lambda_sweep.py --data TS.zarr [--weights 0,1,4,16] [--out DIR]

Writes DIR/lambda_sweep.json: per lambda the learning-curve entry (median Jacobian relative
error, worst per-summary median and 95th-percentile value errors [sigma_obs], median Fisher
overlap, epochs run, training seconds).  Why: the acceptance asks lambda > 0 to halve the
values-only gradient error; this shows whether a larger lambda gets there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--weights", default="0,1,4,16")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--patience", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/emulator")
    args = p.parse_args(argv)
    from emulator import as_training_set, exclusion_counts, learning_curve, split_design

    weights = [float(w) for w in args.weights.split(",")]
    ts = as_training_set(args.data)
    n_train = split_design(exclusion_counts(ts)[0], seed=args.seed)["train"].size
    curve = learning_curve(
        ts,
        [n_train],
        gradient_weights=weights,
        gp_sizes=(),
        ensemble=1,
        seed=args.seed,
        progress=False,
        epochs=args.epochs,
        patience=args.patience,
    )
    command = " ".join(["python", "benchmarks/emulator_lambda_sweep.py", *(sys.argv[1:] if argv is None else argv)])
    results = {
        "command": command,
        "data": args.data,
        "ensemble": 1,
        "epochs": args.epochs,
        "patience": args.patience,
        "seed": args.seed,
        "n_train": int(n_train),
        "n_test": curve["n_test"],
        "weights": {f"{lam:g}": curve["curves"][f"sobolev_lambda_{lam:g}"][0] for lam in weights},
    }
    for lam, row in results["weights"].items():
        print(f"lambda {lam}: {row}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lambda_sweep.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
