"""Engine throughput per core (issue 20), measured side by side in one process on ONE device.

    python benchmarks/bench_throughput.py [--halos 256] [--repeats 3] [--rows ...] [--before DIR]

Rows (256 diffmah halos, seed 0, prior centre unless named; compilation excluded).  Every row is
compiled first, then timed round-robin -- one call of each row per round, ``--repeats`` rounds,
best per row -- so that the shared machine's changing load hits every row alike:

* ``baseline``: a plain ``jax.vmap`` of diffrax Tsit5 (rtol 1e-5, atol 1e-6, PID) over a
  straightforward vector field: ``sapphire.physics.log_state_derivative``, which computes the
  halo's cosmology (z(t), V_vir, R_vir, t_ff, f_UV) directly at every call;
* ``before`` (with ``--before DIR``, DIR holding a copy of the package as ``sapphire_before``):
  the engine as it was before this change, for a before/after figure from the same run;
* ``engine`` / ``engine_stiff``: the default engine's jitted solve (``solve_population``);
* ``jacobian``: ``solve_population_with_jacobian`` (all 8 parameters);
* ``grad_k1/2/4/8``: ``jax.value_and_grad`` of ``ExactForward.log_likelihood`` (default
  observations) with k free parameters, the others at the prior centre;
* ``hmc_grad``: the quickstart's exact-HMC problem (small scale: 32 halos, A_etaM and A_tdep free,
  the others at the mock truth, noise-free mock of the default observations): one ln L +
  gradient, i.e. one leapfrog step of exact NUTS; ``hmc_grad_8_tangents`` the same with all 8
  tangents carried; ``hmc``: 20 warmup + 20 sampling iterations of exact NUTS on it (1 chain).

Step counts (mean / max over halos) are reported for the baseline and the engine.  Writes JSON
to ``--out`` after every row (the load average is recorded with it).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import sapphire
from forecasts.forward import ExactForward, jit_value_and_grad
from forecasts.hmc import run_hmc
from sapphire import cosmology
from sapphire.likelihood import gaussian_log_likelihood, summary_function
from sapphire.physics import initial_log_state, log_state_derivative
from sapphire.solve import solve_population, solve_population_with_jacobian

STIFF_CORNER = np.array([2.0, -3.0, 0.0, -3.0, -2.0, 0.0, -0.5, 0.0])
FREE_SETS = {
    1: ("A_etaM",),
    2: ("A_etaM", "A_tdep"),
    4: ("A_etaM", "B_etaM", "A_tdep", "B_tdep"),
    8: sapphire.PARAMETER_NAMES,
}
#: The quickstart mock truth in the unit cube (forecasts.quickstart.TRUTH_UNIT).
TRUTH_UNIT = np.array([0.55, 0.6, 0.45, 0.5, 0.4, 0.55, 0.5, 0.45])
ROWS = (
    "baseline",
    "before",
    "engine",
    "engine_stiff",
    "jacobian",
    "grad_k1",
    "grad_k2",
    "grad_k4",
    "grad_k8",
    "hmc_grad",
)


def baseline_solver(config=sapphire.DEFAULT_CONFIG, rtol=1e-5, atol=1e-6):
    """Plain vmap of Tsit5 over the straightforward vector field: theta (8,), forcings -> (states, steps)."""
    t_end = cosmology.present_age(config.cosmology)

    def one(theta, forcing):
        def field(t, y, args):
            mhalo, rate = forcing(t)
            return log_state_derivative(t, y, theta, mhalo, rate, config)

        mh0, _ = forcing(forcing.t_start)
        y0 = initial_log_state(mh0, cosmology.redshift_at_age(forcing.t_start, config.cosmology), config)
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            diffrax.Tsit5(),
            forcing.t_start,
            t_end,
            None,
            y0,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            max_steps=16384,
            throw=False,
        )
        return sol.ys[-1], sol.stats["num_steps"]

    return jax.jit(jax.vmap(one, in_axes=(None, 0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--halos", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", default="", help="comma-separated subset of: " + ", ".join(ROWS))
    parser.add_argument("--before", default="", help="directory holding the previous package as sapphire_before")
    parser.add_argument("--out", default="benchmarks/results/bench_throughput.json")
    args = parser.parse_args()
    rows_wanted = tuple(r for r in args.rows.split(",") if r) or ROWS
    if "before" in rows_wanted and not args.before:
        rows_wanted = tuple(r for r in rows_wanted if r != "before")
    device = jax.devices()[0]
    out = {
        "machine": f"{platform.node()} {platform.machine()} | jax {jax.__version__} on {device.platform}, "
        f"{jax.local_device_count()} device(s), {os.cpu_count()} cores",
        "command": " ".join(sys.argv),
        "load_average_start": os.getloadavg(),
        "n_halos": args.halos,
        "rows_s": {},
        "steps": {},
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)

    def save():
        out["load_average_end"] = os.getloadavg()
        s = out["rows_s"]
        ratios = {}
        if "baseline" in s:
            for key in ("before", "engine"):
                if key in s:
                    ratios[f"{key}_speedup_vs_baseline"] = s["baseline"] / s[key]
        if "engine" in s:
            ratios["engine_solves_per_s"] = args.halos / s["engine"]
            for key in ("engine_stiff", "jacobian", "grad_k1", "grad_k2", "grad_k4", "grad_k8"):
                if key in s:
                    ratios[f"{key}_over_solve"] = s[key] / s["engine"]
        if "hmc_grad" in s and "hmc_grad_8_tangents" in s:
            ratios["hmc_grad_8_tangents_over_2"] = s["hmc_grad_8_tangents"] / s["hmc_grad"]
        if "baseline" in s:
            ratios["baseline_solves_per_s"] = args.halos / s["baseline"]
        out["ratios"] = ratios
        path.write_text(json.dumps(out, indent=2))

    halos = sapphire.HaloPopulation.from_diffmah(args.halos, seed=0)
    forcing = halos.forcing()
    config = sapphire.DEFAULT_CONFIG
    centre = jnp.asarray(sapphire.DEFAULT_PRIOR.centre)
    settings = sapphire.SolverSettings()
    model = sapphire.Model()
    engine = jax.jit(lambda th, f: solve_population(th, f, None, settings, config))
    jacobian = jax.jit(lambda th, f: solve_population_with_jacobian(th, f, None, settings, config).jacobian)
    calls = {}  # row -> (function, args)
    fm_hmc = None
    for key in ROWS:
        if key not in rows_wanted:
            continue
        if key == "baseline":
            fn = baseline_solver()
            calls[key] = (fn, (centre, forcing))
            steps = np.asarray(fn(centre, forcing)[1])
            out["steps"][key] = {"mean": float(steps.mean()), "max": int(steps.max())}
        elif key == "before":
            sys.path.insert(0, args.before)
            old = importlib.import_module("sapphire_before.solve")
            calls[key] = (
                jax.jit(lambda th, f: old.solve_population(th, f, None, old.SolverSettings(), config).log_state),
                (centre, forcing),
            )
        elif key in ("engine", "engine_stiff"):
            theta = centre if key == "engine" else jnp.asarray(STIFF_CORNER)
            calls[key] = (engine, (theta, forcing))
            sol = engine(theta, forcing)
            steps = np.asarray(sol.num_steps)
            out["steps"][key] = {
                "mean": float(steps.mean()),
                "max": int(steps.max()),
                "failed": int(np.sum(~np.asarray(sol.success))),
            }
        elif key == "jacobian":
            calls[key] = (jacobian, (centre, forcing))
        elif key.startswith("grad_k"):
            k = int(key[len("grad_k") :])
            fm = ExactForward(model, halos, free=list(FREE_SETS[k]))
            theta_free = jnp.asarray(np.asarray(sapphire.DEFAULT_PRIOR.centre)[list(fm.free_index)])
            calls[key] = (jit_value_and_grad, (fm.spec, fm.data, theta_free))
        elif key == "hmc_grad":
            from sapphire.observations import Observations

            prior = sapphire.DEFAULT_PRIOR
            truth = np.asarray(prior.low) + TRUTH_UNIT * (np.asarray(prior.high) - np.asarray(prior.low))
            small = sapphire.HaloPopulation.from_diffmah(32, seed=0)
            mean = model.summaries(truth, small).mean
            obs = Observations.default()
            mock = Observations(
                tuple(dataclasses.replace(rel, y=np.asarray(mean)[obs.slices[rel.name]]) for rel in obs.relations)
            )
            fm_hmc = ExactForward(model, small, mock, free=["A_etaM", "A_tdep"], fixed=truth)
            theta_free = jnp.asarray(truth[list(fm_hmc.free_index)])
            calls[key] = (jit_value_and_grad, (fm_hmc.spec, fm_hmc.data, theta_free))
            # The same ln L with all 8 tangents carried (what ExactForward did before issue 20).
            full = summary_function(model, small, mock)
            index = np.asarray(fm_hmc.free_index)

            def log_l_8(t, fixed=jnp.asarray(truth), y=jnp.asarray(mock.y), sigma=jnp.asarray(mock.sigma)):
                mean, stderr, _ = full(fixed.at[index].set(t))
                return gaussian_log_likelihood(mean, stderr**2, y, sigma)

            calls["hmc_grad_8_tangents"] = (jax.jit(jax.value_and_grad(log_l_8)), (theta_free,))
    # Compile everything, then time round-robin (one call of every row per round, best over the
    # rounds), so that a change of the machine's load hits every row alike.
    for key, (fn, fargs) in calls.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(*fargs))
        print(f"  [{key}] first call (incl. compilation) {time.perf_counter() - start:.2f} s", flush=True)
    times = {key: [] for key in calls}
    for r in range(args.repeats):
        for key, (fn, fargs) in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*fargs))
            times[key].append(time.perf_counter() - start)
        out["rows_s"] = {key: min(v) for key, v in times.items()}
        out["load_per_round"] = out.get("load_per_round", []) + [os.getloadavg()[0]]
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in times.items()), flush=True)
        save()
    out["all_times_s"] = times
    if fm_hmc is not None:
        # Exact NUTS on the quickstart problem (1 chain, dense mass, forecasts.hmc.run_hmc).
        n_iter = 20
        result = run_hmc(fm_hmc, num_chains=1, num_warmup=n_iter, num_samples=n_iter, seed=0)
        out["hmc"] = {
            "iterations": 2 * n_iter,
            "times_s": result.times,
            "leapfrog_steps_mean_sampling": float(np.mean(result.num_steps)),
            "s_per_sampling_iteration": result.times["sampling"] / n_iter,
            "s_per_leapfrog_sampling": result.times["sampling"] / float(np.sum(result.num_steps)),
        }
        print("  [hmc]", out["hmc"], flush=True)
    save()
    print(json.dumps({k: out[k] for k in ("rows_s", "steps", "ratios")}, indent=2))


if __name__ == "__main__":
    main()
