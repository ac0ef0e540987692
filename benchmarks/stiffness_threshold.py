"""Where to put ``SolverSettings.stiffness_threshold`` now that each halo's solver is chosen from
its own stiffness estimate (issue 16): explicit and implicit step counts per halo against the
estimate.

    python benchmarks/stiffness_threshold.py [--draws 512] [--lanes 256] [--out FILE.json]

Takes the Latin-hypercube draws of ``validate_engine.py`` section a (seed 0) x 64 diffmah halos
(seed 0), picks ``--lanes`` (draw, halo) pairs spread evenly in log stiffness estimate between
1/30 and 3x the current threshold, and solves all of them as one batch (one theta per lane) with
Tsit5 alone and with Kvaerno3 alone (default tolerances): steps per lane for each.  The cost of a
lane is ~its steps x the cost of a step of its solver, and a vmapped group runs until its
slowest lane; the JSON and the printed table give the steps in bins of the estimate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import sapphire
from sapphire.solve import SolverSettings, solve_population, stiffness_estimate

sys.path.insert(0, str(Path(__file__).parent))
from validate_engine import lhs_draws  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--draws", type=int, default=512)
    p.add_argument("--lanes", type=int, default=256)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    config = sapphire.DEFAULT_CONFIG
    threshold = SolverSettings().stiffness_threshold
    thetas = lhs_draws(args.draws, 0)
    forcing = sapphire.HaloPopulation.from_diffmah(64, seed=0).forcing()
    estimate = jax.jit(
        jax.vmap(jax.vmap(stiffness_estimate, in_axes=(None, 0, None)), in_axes=(0, None, None)), static_argnums=2
    )
    stiff = np.asarray(estimate(jnp.asarray(thetas), forcing, config))  # (draws, halos)
    log_s = np.log10(np.maximum(stiff, 1e-30))
    targets = np.linspace(np.log10(threshold / 30), np.log10(threshold * 3), args.lanes)
    flat = np.argsort(log_s, axis=None)
    picks = flat[np.clip(np.searchsorted(log_s.ravel()[flat], targets), 0, flat.size - 1)]
    draw, halo = np.unravel_index(picks, stiff.shape)
    lane_theta = jnp.asarray(thetas[draw])
    lane_forcing = jax.tree.map(lambda a: a[halo], forcing)
    rows = {"stiffness": stiff[draw, halo].tolist(), "draw": draw.tolist(), "halo": halo.tolist()}
    for name in ("tsit5", "kvaerno3"):
        settings = SolverSettings(solver=name)
        solve = jax.jit(lambda th, f, s=settings: solve_population(th, f, None, s, config))
        start = time.perf_counter()
        sol = jax.block_until_ready(solve(lane_theta, lane_forcing))
        rows[f"{name}_steps"] = np.asarray(sol.num_steps).tolist()
        rows[f"{name}_success"] = np.asarray(sol.success).tolist()
        print(f"{name}: {time.perf_counter() - start:.1f} s incl. compilation", flush=True)
    s = np.asarray(rows["stiffness"])
    edges = threshold * np.array([1 / 30, 1 / 10, 1 / 5, 1 / 3, 1 / 2, 1, 2, 3.01])
    print(f"{'stiffness / threshold':>22} {'lanes':>5} {'tsit5 median/max':>17} {'kvaerno3 median/max':>20}")
    table = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (s >= lo) & (s < hi)
        if not m.any():
            continue
        e, i = np.asarray(rows["tsit5_steps"])[m], np.asarray(rows["kvaerno3_steps"])[m]
        table.append(
            {
                "low": lo / threshold,
                "high": hi / threshold,
                "lanes": int(m.sum()),
                "tsit5_median": float(np.median(e)),
                "tsit5_max": int(e.max()),
                "kvaerno3_median": float(np.median(i)),
                "kvaerno3_max": int(i.max()),
            }
        )
        print(
            f"{lo / threshold:9.3f} - {hi / threshold:6.3f}    {m.sum():5d} {np.median(e):8.0f} / {e.max():6d} "
            f"{np.median(i):9.0f} / {i.max():6d}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"threshold": threshold, "lanes": rows, "table": table}, indent=1))


if __name__ == "__main__":
    main()
