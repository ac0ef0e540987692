"""Which halos, and which physical switch, make the steepest summaries (issue 16's "per halo").

    python benchmarks/steepest_points_per_halo.py --store TS.zarr [--points 3] [--step 0.01] \
        [--out benchmarks/results/emulator/issue16_definition2/steepest_points.json]

Among the store's test rows (the last ``--test`` rows, as ``learning_curve_same_points.py`` lays
them out) in the lower half of A_etaM's prior range, takes the ``--points`` rows with the largest
|d summary / d A_etaM| in units of sigma_obs per prior width (the exact, stored Jacobian): where
the emulator's errors concentrate (docs/design.md s.9).  At each, evolves the store's halos at
theta and at theta + ``--step`` in A_etaM and splits that summary's change into per-halo parts
(the summary recomputed with only halo j moved).  Prints, for the halos that carry most of the
change, their z = 0 halo mass, share, t_cool / t_ff at r_0, f_prev and log M_* before and after:
a cooling / hot-CGM switch shows as t_cool / t_ff crossing ~1 (and f_prev moving) in that halo.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import sapphire
import training_sets
from sapphire.summaries import summary_statistics
from training_sets.generate import model_from_attrs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True)
    p.add_argument("--test", type=int, default=640, help="the store's last rows are the test split")
    p.add_argument("--points", type=int, default=3)
    p.add_argument("--step", type=float, default=0.01, help="A_etaM step [parameter units]")
    p.add_argument("--top", type=int, default=4, help="halos listed per point")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    ts = training_sets.open_training_set(args.store)
    model, halos, obs = model_from_attrs(ts.attrs), ts.halos(), ts.observations
    prior = ts.prior
    rows = np.arange(ts.n_points - args.test, ts.n_points)
    data = ts.load(rows)
    a = prior.names.index("A_etaM")
    lower = prior.to_unit(data["theta"])[:, a] < 0.5
    steep = np.abs(data["summary_jacobian"][:, :, a]) * prior.width[a] / obs.sigma[None, :]  # (n, S)
    order = np.argsort(-np.where(lower, steep.max(axis=1), -np.inf))[: args.points]
    names = ts.summary_names
    results = []
    for i in order:
        theta = data["theta"][i]
        s_star = int(np.argmax(steep[i]))
        moved = theta.copy()
        moved[a] += args.step
        base, after = model.evolve(theta, halos), model.evolve(moved, halos)
        log_mh = np.asarray(base.log_mhalo)
        y0, y1 = np.asarray(base.log_state), np.asarray(after.log_state)
        ok = np.asarray(base.success) & np.asarray(after.success)
        mean0 = np.asarray(summary_statistics(log_mh, y0, ok, obs, model.config)[0])[s_star]
        mean1 = np.asarray(summary_statistics(log_mh, y1, ok, obs, model.config)[0])[s_star]
        parts = np.zeros(y0.shape[0])
        for j in range(y0.shape[0]):
            mixed = y0.copy()
            mixed[j] = y1[j]
            parts[j] = np.asarray(summary_statistics(log_mh, mixed, ok, obs, model.config)[0])[s_star] - mean0
        total = mean1 - mean0
        top = np.argsort(-np.abs(parts))[: args.top]
        d0, d1 = base.diagnostics, after.diagnostics
        entry = {
            "row": int(rows[i]),
            "theta": theta.tolist(),
            "summary": names[s_star],
            "d_summary_d_A_etaM_sigma_per_width": float(steep[i, s_star]),
            "change_sigma_obs": float(total / obs.sigma[s_star]),
            "sum_of_parts_sigma_obs": float(parts.sum() / obs.sigma[s_star]),
            "halos": [
                {
                    "halo": int(j),
                    "log_mh_z0": float(log_mh[j]),
                    "share": float(parts[j] / total) if total else None,
                    "t_cool_over_t_ff_r0": [
                        float(np.asarray(d0["t_cool_over_t_ff_r0"])[j]),
                        float(np.asarray(d1["t_cool_over_t_ff_r0"])[j]),
                    ],
                    "f_prev": [float(np.asarray(d0["f_prev"])[j]), float(np.asarray(d1["f_prev"])[j])],
                    "log_mstar": [float(y0[j, 0]), float(y1[j, 0])],
                }
                for j in top
            ],
        }
        results.append(entry)
        print(
            f"row {entry['row']}: {entry['summary']} steepness {entry['d_summary_d_A_etaM_sigma_per_width']:.0f} "
            f"sigma_obs per width; A_etaM {theta[a]:.3f} -> +{args.step}: change {entry['change_sigma_obs']:+.3f} "
            f"sigma_obs (sum of per-halo parts {entry['sum_of_parts_sigma_obs']:+.3f})"
        )
        for h in entry["halos"]:
            print(
                f"   halo {h['halo']:3d} (log Mh {h['log_mh_z0']:.2f}): share {h['share']:+.2f}; t_cool/t_ff "
                f"{h['t_cool_over_t_ff_r0'][0]:.3g} -> {h['t_cool_over_t_ff_r0'][1]:.3g}; f_prev "
                f"{h['f_prev'][0]:.2f} -> {h['f_prev'][1]:.2f}; log M* {h['log_mstar'][0]:.2f} -> {h['log_mstar'][1]:.2f}"
            )
    if args.out:
        Path(args.out).write_text(json.dumps({"store": args.store, "step": args.step, "points": results}, indent=1))


if __name__ == "__main__":
    sapphire.set_host_device_count()
    main()
