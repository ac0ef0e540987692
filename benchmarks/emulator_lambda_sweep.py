"""Sobolev weight sweep: one emulator (K = 1) per gradient weight lambda on the same store,
split and seed, validated on the store's test split.

    python benchmarks/emulator_lambda_sweep.py --data TS.zarr [--weights 0,1,4,16] [--out DIR]

Writes DIR/lambda_sweep.json: per lambda the median Jacobian relative error, the worst
per-summary median and 95th-percentile value errors (sigma_obs), the median Fisher-ellipse
overlap, epochs run and wall time.  Why: the acceptance asks lambda > 0 to halve the
values-only gradient error; this shows whether a larger lambda gets there.
"""

from __future__ import annotations

import argparse
import json
import time
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
    from emulator import emulator_report, train_emulator

    out = Path(args.out)
    results = {"data": args.data, "ensemble": 1, "epochs": args.epochs, "patience": args.patience, "seed": args.seed,
               "weights": {}}
    for lam in (float(w) for w in args.weights.split(",")):
        started = time.perf_counter()
        emu = train_emulator(args.data, gradient_weight=lam, ensemble=1, epochs=args.epochs, patience=args.patience,
                             seed=args.seed, progress=False)
        rep = emulator_report(emu, args.data, out / f"sweep_lambda{lam:g}", progress=False)
        row = {"jacobian_rel_error_median": rep["jacobian_rel_error"]["median"],
               "value_worst_median": rep["value_error_sigma_obs"]["worst_median"],
               "value_worst_p95": rep["value_error_sigma_obs"]["worst_p95"],
               "fisher_overlap_median": rep["fisher"]["overlap_median"],
               "epochs_run": emu.training["epochs_run"], "seconds": time.perf_counter() - started}
        results["weights"][f"{lam:g}"] = row
        print(f"lambda {lam:g}: {row}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lambda_sweep.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
