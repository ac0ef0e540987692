"""Wall time of successive ``run_hmc`` calls on the exact model, as forecasts.decisive makes them:
a first run, the same run extended through its checkpoint, and a run with another seed.

    python benchmarks/bench_hmc_calls.py [--halos 8] [--warmup 10] [--samples 20]

Prints one line per call (seconds in total, in compilation, in warmup and sampling).  The first
call pays numpyro's eager init (~40 s, its first evaluations of the model compile op by op) and
the block's compilation; the later two reuse the block's compilation (design.md s.18).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import sapphire
from forecasts import ExactForward, mock_observations, run_hmc


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--halos", type=int, default=8)
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--samples", type=int, default=20)
    args = p.parse_args(argv)
    model = sapphire.Model()
    halos = sapphire.HaloPopulation.from_diffmah(args.halos, seed=0)
    truth = np.asarray(sapphire.DEFAULT_PRIOR.centre, float).copy()
    mock = mock_observations(model, halos, None, truth)
    fm = ExactForward(model, halos, mock, free=["A_etaM", "A_tdep"], fixed=truth)
    options = dict(num_chains=args.chains, num_warmup=args.warmup, block_size=10, init=truth[[0, 6]])
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "run.npz"
        calls = [
            ("first call", dict(num_samples=args.samples, seed=0, checkpoint=checkpoint)),
            ("extended (+10 draws)", dict(num_samples=args.samples + 10, seed=0, checkpoint=checkpoint)),
            ("another seed", dict(num_samples=args.samples, seed=1)),
        ]
        for label, extra in calls:
            t0 = time.perf_counter()
            post = run_hmc(fm, **options, **extra)
            wall = time.perf_counter() - t0
            times = ", ".join(f"{k} {v:.1f} s" for k, v in post.times.items())
            print(f"{label:22s} {wall:6.1f} s  ({times}; draws {post.samples.shape[1]})", flush=True)


if __name__ == "__main__":
    main()
