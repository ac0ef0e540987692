"""The exact model at each mode's MAP of a ``sapphire forecast`` run with modes (issue 19):
does the exact model confirm the emulator's chi^2, and which feedback picture is each mode?

For each mode of ``FORECAST/forecast.json`` (its ``map_theta``, the other parameters held at the
run's fixed values) this evaluates, with the exact model on the halos of ``--store`` (the halos
the emulator was trained on) and the run's observations and relations:

* chi^2 of the exact summaries against the data (variance: the model's stderr^2 + sigma_obs^2;
  ``forecasts.modes.chi2_at``), next to the emulator's chi^2 from the JSON;
* ``Model.evolve`` diagnostics at z = 0, median over the halos in three bins of log10 M_h(z=0):
  f_prev (inflow let through by an over-pressured CGM: < 1 is preventive feedback), eta_m (the
  wind's mass loading: ejective feedback), the CGM's outflow and inflow rates (Msun/Gyr; gas
  pushed out of the halo, gas let in), t_cool / t_ff at r_0 (cooling regime), log10 M_*/M_h.

Command (the real-data run of docs/real_data_modes.md)::

    PYTHONPATH=$PWD:/tmp/archmeta python benchmarks/real_data_modes.py RUN/forecast.json --store ts.zarr --out RUN/exact_at_modes.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

BINS = ((10.0, 11.0), (11.0, 12.0), (12.0, 12.6))
KEYS = ("f_prev", "eta_m", "outflow_rate", "inflow_rate", "t_cool_over_t_ff_r0", "log_smhm")


def feedback_picture(rows: dict) -> str:
    """From the dwarfs' (10 <= log10 M_h < 11) medians: preventive when f_prev < 0.5 (most
    cosmic inflow held back by an over-pressured CGM), ejective when eta_m > 3 (the wind carries
    more than 3x the star formation rate out of the ISM); both, one, or 'weak feedback'."""
    dwarfs = rows[f"{BINS[0][0]:g}-{BINS[0][1]:g}"]
    kinds = [k for k, on in (("preventive", dwarfs["f_prev"] < 0.5), ("ejective", dwarfs["eta_m"] > 3.0)) if on]
    return " + ".join(kinds) if kinds else "weak feedback"


def main(argv=None) -> int:
    import sapphire
    import training_sets
    from forecasts import ExactForward
    from forecasts.modes import chi2_at
    from training_sets.generate import model_from_attrs

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("forecast", help="forecast.json of a sapphire forecast run with modes")
    p.add_argument("--store", required=True, help="training-set store: the exact model and halos")
    p.add_argument("--out", required=True, help="JSON to write (a Markdown table is printed)")
    args = p.parse_args(argv)
    data = json.loads(Path(args.forecast).read_text())
    if not data.get("modes"):
        raise SystemExit(f"{args.forecast}: no modes (run sapphire forecast with --modes or --hmc)")
    ts = training_sets.open_training_set(args.store)
    model, halos = model_from_attrs(ts.attrs), ts.halos()
    forward = data["forward"]
    names = sapphire.PARAMETER_NAMES
    fixed = np.array([forward["fixed"].get(n, np.nan) for n in names])
    free = forward["free"]
    fm = ExactForward(
        model,
        halos,
        sapphire.Observations.default(),
        free=free,
        fixed=np.where(np.isfinite(fixed), fixed, sapphire.DEFAULT_PRIOR.centre),
        relations=forward["relations"],
        sigma_scale=forward["sigma_scale"],
    )
    out = []
    for k, mode in enumerate(data["modes"]):
        theta = np.asarray(mode.get("map_theta") or mode["best_theta"], float)
        t0 = time.perf_counter()
        chi2, dof = chi2_at(fm, theta)
        run = model.evolve(np.asarray(fm.full_theta(theta)), halos)
        diag = {key: np.asarray(v) for key, v in run.diagnostics.items()}
        log_mh = np.asarray(run.log_mhalo)
        ok = np.asarray(run.success, bool)
        rows = {}
        for lo, hi in BINS:
            sel = ok & (log_mh >= lo) & (log_mh < hi)
            rows[f"{lo:g}-{hi:g}"] = {key: float(np.median(diag[key][sel])) if sel.any() else None for key in KEYS} | {
                "n_halos": int(sel.sum())
            }
        out.append(
            {
                "mode": k,
                "weight": mode["weight"],
                "map_theta": theta.tolist(),
                "emulator_chi2": mode.get("chi2"),
                "dof": dof,
                "exact_chi2": chi2,
                "exact_neg_log_likelihood": -float(fm.log_likelihood(theta)),
                "n_failed": int((~ok).sum()),
                "diagnostics_z0_median": rows,
                "picture": feedback_picture(rows),
                "seconds": time.perf_counter() - t0,
            }
        )
    Path(args.out).write_text(
        json.dumps({"forecast": args.forecast, "store": args.store, "free": free, "modes": out}, indent=2)
    )
    head = (
        "| mode | weight | chi^2/dof emulator | chi^2/dof exact | "
        + " | ".join(
            f"{key} ({b})" for key in ("f_prev", "eta_m", "outflow", "inflow", "t_cool/t_ff") for b in ("dwarf", "MW")
        )
        + " | picture |"
    )
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for m in out:
        d, mw = m["diagnostics_z0_median"]["10-11"], m["diagnostics_z0_median"]["12-12.6"]
        cells = []
        for key in ("f_prev", "eta_m", "outflow_rate", "inflow_rate", "t_cool_over_t_ff_r0"):
            cells += [
                f"{d[key]:.3g}" if d[key] is not None else "n/a",
                f"{mw[key]:.3g}" if mw[key] is not None else "n/a",
            ]
        emu = "n/a" if m["emulator_chi2"] is None else f"{m['emulator_chi2']:.1f}/{m['dof']}"
        print(
            f"| {m['mode']} | {m['weight']:.3f} | {emu} | {m['exact_chi2']:.1f}/{m['dof']} | "
            + " | ".join(cells)
            + f" | {m['picture']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
