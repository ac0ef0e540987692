"""Emulator learning curve on the design points of a larger seeded store, computing only the
rows the curve needs (issue 16's before/after comparison).

    python benchmarks/learning_curve_same_points.py --store lhs6400_subset.zarr \
        --out benchmarks/results/emulator/issue16_definition2 [--reference-points 6400] \
        [--sizes 1280,2560] [--epochs 1000 --patience 200]

The reference curve (``benchmarks/results/emulator/p6400``) trained on the first n points of the
seeded split (seed 0, 0.8/0.1/0.1) of ``sapphire generate --points 6400 --design-seed 0
--halos 128 --chunk 16`` (every point valid) and scored on its 640 test points.  This script
takes the same Latin hypercube, the same split, and evaluates with the current summary
definition only those design points: the first max(sizes) of the training split (in blocks of
the sizes, so that n = sizes[0] trains on exactly the same rows in the same order), the
validation split and the test split -- 3,840 of 6,400 points for sizes up to 2,560.  It then
trains one Sobolev member (lambda = 1, 3 x 128 silu, seed 0) per size on those rows
(``learning_curve(..., split_indices=...)``) and writes ``learning_curve.json``/``.png`` with
the errors overall and by A_etaM half.  The store is resumable: rerun the same command.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import sapphire
import training_sets
from emulator.data import split_design
from emulator.report import learning_curve


def subset_rows(n_reference: int, sizes: list[int], seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(reference rows to evaluate, in store order; the split in the subset store's numbering)."""
    splits = split_design(np.arange(n_reference), (0.8, 0.1, 0.1), seed)
    edges = [0, *sorted(sizes)]
    train = np.concatenate([np.sort(splits["train"][a:b]) for a, b in zip(edges[:-1], edges[1:])])
    rows = np.concatenate([train, splits["val"], splits["test"]])
    n_train, n_val = train.size, splits["val"].size
    subset = {
        "train": np.arange(n_train),
        "val": n_train + np.arange(n_val),
        "test": n_train + n_val + np.arange(splits["test"].size),
    }
    return rows, subset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="the subset store to create or resume (.zarr)")
    p.add_argument("--out", required=True)
    p.add_argument("--reference-points", type=int, default=6400)
    p.add_argument("--design-seed", type=int, default=0)
    p.add_argument("--halos", type=int, default=128)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--sizes", default="1280,2560")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--patience", type=int, default=200)
    p.add_argument("--values-only-too", action="store_true", help="also train lambda = 0 members")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    sapphire.set_host_device_count()
    prior = sapphire.DEFAULT_PRIOR
    design = training_sets.latin_hypercube_design(prior, args.reference_points, args.design_seed)
    rows, split = subset_rows(args.reference_points, sizes, args.design_seed)
    store = Path(args.store)
    started = time.perf_counter()
    report = training_sets.generate(
        store,
        design_table=design[rows],
        n_halos=args.halos,
        chunk=args.chunk,
        resume=store.exists(),
        devices="all",
    )
    generated = time.perf_counter() - started
    print(f"store: {report}", flush=True)
    curve = learning_curve(
        str(store),
        sizes,
        gradient_weights=(1.0, 0.0) if args.values_only_too else (1.0,),
        gp_sizes=(),
        ensemble=1,
        seed=args.design_seed,
        split_indices=split,
        out_dir=args.out,
        epochs=args.epochs,
        patience=args.patience,
        hidden=(128, 128, 128),
    )
    (Path(args.out) / "README.txt").write_text(
        f"store {store} ({rows.size} of {args.reference_points} reference rows, design seed {args.design_seed}, "
        f"{args.halos} halos, chunk {args.chunk}); generation {generated:.0f} s this run; sapphire "
        f"{sapphire.__version__}\n"
    )
    for method, entries in curve["curves"].items():
        for e in entries:
            half = e["error_by_parameter_half"].get("A_etaM", {})
            print(
                f"{method} n={e['n_train']}: jacobian median {e['jacobian_rel_error_median']:.3f}, "
                f"worst-summary p95 {e['value_worst_p95']:.3f} sigma_obs, A_etaM halves {half}"
            )


if __name__ == "__main__":
    main()
