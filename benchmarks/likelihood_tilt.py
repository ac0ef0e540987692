"""Where does the emulator posterior's shift in the quickstart's check come from?

For a finished ``sapphire quickstart`` directory, along each free parameter of its decisive
check (the others at the mock truth), at the exact posterior's mean + k sd (k = -2 ... 2, from
``exact_hmc.npz``), this evaluates:

* the exact model: summaries and their kernel-regression standard error (``Model.summaries``);
* the check's emulator (``refine/emulator``, else ``emulator.emu``): mean, ensemble error, and
  its interpolation of the exact standard error (``SobolevEmulator.model_stderr``);

and ln L (``sapphire.likelihood.gaussian_log_likelihood``, the mock's data and sigma) of four
combinations: exact; emulator (as ``EmulatorForward``); emulator mean with the exact stderr;
exact mean with the emulator's variances.  A least-squares line through each ln L minus the
exact one gives the tilt b (nats per exact sd); for a Gaussian posterior a tilt b moves the
mean by about b sd.  Comparing the four says whether the mean or the variance is tilted.

    python benchmarks/likelihood_tilt.py RUN_DIR [--out RUN_DIR/likelihood_tilt.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

K = np.linspace(-2.0, 2.0, 9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished sapphire quickstart directory")
    parser.add_argument("--out", type=Path, help="JSON output (default RUN/likelihood_tilt.json)")
    args = parser.parse_args()

    import sapphire
    from emulator import SobolevEmulator
    from forecasts.hmc import HmcResult
    from forecasts.quickstart import TRUTH_UNIT
    from sapphire.likelihood import gaussian_log_likelihood
    from training_sets.evaluate import model_from_attrs
    from training_sets.store import open_group, read_halos

    run = args.run
    decisive = json.loads((run / "decisive.json").read_text())
    free = decisive["free"]
    names = list(sapphire.DEFAULT_PRIOR.names)
    index = [names.index(n) for n in free]
    truth = np.asarray(sapphire.DEFAULT_PRIOR.from_unit(TRUTH_UNIT), np.float64)
    mock = sapphire.Observations.from_dict(json.loads((run / "mock_observations.json").read_text()))
    emu_path = run / "refine" / "emulator"
    emu = SobolevEmulator.load(emu_path if emu_path.exists() else run / "emulator.emu", observations=mock)
    root = open_group(run / "train.zarr")
    model, halos = model_from_attrs(dict(root.attrs)), read_halos(root)
    samples = HmcResult.load(run / "exact_hmc.npz").samples.reshape(-1, len(free))
    mean, sd = samples.mean(axis=0), samples.std(axis=0)
    y, sigma = np.asarray(mock.y), np.asarray(mock.sigma)

    def lnl(m, var):
        return float(gaussian_log_likelihood(np.asarray(m), np.asarray(var), y, sigma))

    record = {"run": str(run), "free": free, "posterior_mean": mean, "posterior_sd": sd, "k": K, "axes": {}}
    for a, name in enumerate(free):
        rows = []
        for k in K:
            theta = truth.copy()
            theta[index] = mean
            theta[index[a]] = mean[a] + k * sd[a]
            exact = model.summaries(theta, halos, mock)
            e_mean, e_var = np.asarray(exact.mean), np.asarray(exact.stderr) ** 2
            u_mean, u_err = (np.asarray(v) for v in emu.predict(theta))
            u_var = u_err**2 + np.asarray(emu.model_stderr(theta)) ** 2
            rows.append(
                {
                    "exact": lnl(e_mean, e_var),
                    "emulator": lnl(u_mean, u_var),
                    "emulator mean, exact stderr": lnl(u_mean, e_var),
                    "exact mean, emulator variance": lnl(e_mean, u_var),
                    "exact_stderr_rms": float(np.sqrt(np.mean(e_var))),
                    "emulator_stderr_rms": float(np.sqrt(np.mean(np.asarray(emu.model_stderr(theta)) ** 2))),
                    "n_failed": int(exact.n_failed),
                }
            )
        exact_lnl = np.array([r["exact"] for r in rows])
        tilts = {}
        for key in ("emulator", "emulator mean, exact stderr", "exact mean, emulator variance"):
            diff = np.array([r[key] for r in rows]) - exact_lnl
            tilts[key] = float(np.polyfit(K, diff, 1)[0])
        record["axes"][name] = {"rows": rows, "tilt_nats_per_sd": tilts}
        print(f"{name}: tilt of ln L against the exact one, nats per exact sd (~ the posterior shift in sd):")
        for key, b in tilts.items():
            print(f"  {key:32s} {b:+.3f}")
        print(
            "  stderr rms (exact / emulator's interpolation) over k: "
            + ", ".join(f"{r['exact_stderr_rms']:.4f}/{r['emulator_stderr_rms']:.4f}" for r in rows)
        )
    out = args.out or run / "likelihood_tilt.json"
    out.write_text(json.dumps(record, indent=1, default=lambda v: np.asarray(v).tolist()))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
