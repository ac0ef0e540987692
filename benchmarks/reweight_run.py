"""The paired reweighting check (``forecasts.reweight``) on a finished quickstart directory.

Rebuilds the decisive check's forward models (the exact model on the run's stored halos, the
refined emulator, the mock, the check's free parameters with the rest at the truth), reweights
``--draws`` ESS-thinned draws of ``emulator_hmc_reduced.npz`` by the exact likelihood, and prints
the paired shifts next to the chains' (``crossval.json``).  Useful on runs made before the
quickstart reweighted by itself.

    python benchmarks/reweight_run.py RUN_DIR [--draws 400] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished sapphire quickstart directory")
    parser.add_argument("--draws", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import sapphire
    from emulator import SobolevEmulator
    from forecasts import EmulatorForward, ExactForward, HmcResult, reweighted_check
    from forecasts.quickstart import TRUTH_UNIT
    from training_sets.evaluate import model_from_attrs
    from training_sets.store import open_group, read_halos

    run = args.run
    free = json.loads((run / "decisive.json").read_text())["free"]
    truth = np.asarray(sapphire.DEFAULT_PRIOR.from_unit(TRUTH_UNIT), np.float64)
    mock = sapphire.Observations.from_dict(json.loads((run / "mock_observations.json").read_text()))
    refined = run / "refine" / "emulator"
    emu = SobolevEmulator.load(refined if refined.exists() else run / "emulator.emu", observations=mock)
    root = open_group(run / "train.zarr")
    model, halos = model_from_attrs(dict(root.attrs)), read_halos(root)
    exact = ExactForward(model, halos, mock, free=free, fixed=truth)
    emu_fm = EmulatorForward(emu, mock, free=free, fixed=truth)
    samples = HmcResult.load(run / "emulator_hmc_reduced.npz").samples
    check = reweighted_check(exact, emu_fm, samples, n_draws=args.draws, seed=args.seed, progress=True)
    chains = json.loads((run / "crossval.json").read_text())["parameters"]
    print(check.line())
    for p in chains:
        print(f"chains: {p['name']} shift {p['shift_in_reference_sigma']:+.3f} +- {p['shift_se']:.3f}")


if __name__ == "__main__":
    main()
