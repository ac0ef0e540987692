"""Which sampler weighs modes (issue 19)?  Candidates side by side on the two known-answer
problems of tests/test_modes.py (``forecasts.modes.GaussianMixtureTarget.two_modes`` / ``one_mode``):

* ``smc``: blackjax adaptive tempered SMC with random-walk mutation (``forecasts.weigh_modes``);
* ``dynesty``: static nested sampling, multi-ellipsoid bounds, random-slice moves;
* ``jaxns``: nested sampling through ``numpyro.contrib.nested_sampling`` (needs ``jaxns<3``:
  numpyro 0.22's wrapper imports ``jaxns.Model``, gone in jaxns 3; skipped if not importable).

Every candidate's weighted samples go through the same ``forecasts.modes.cluster_modes``, so the
weights compare the samplers, not the clustering.  Per candidate and problem, over ``--seeds``:
wall time (first seed includes compilation, reported apart), likelihood calls, ln Z and its
reported error against the analytic value, and the recovered mode weights.

    PYTHONPATH=$PWD python benchmarks/modes_sampler.py [--seeds smc=5,dynesty=1,jaxns=3]

writes benchmarks/results/modes_sampler.json (after every run, so a killed run keeps its figures).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import forecasts  # noqa: F401  (float64)
from forecasts.modes import GaussianMixtureTarget, cluster_modes, weigh_modes


def run_smc(target: GaussianMixtureTarget, seed: int) -> dict:
    r = weigh_modes(
        target.log_likelihood, prior=target.prior, seed=seed, progress=False
    )  # defaults: 8 runs x 1000 particles
    return {
        "log_z": r.log_evidence,
        "log_z_err": r.log_evidence_error,
        "weights": [m.weight for m in r.modes],
        "means0": [float(m.mean[0]) for m in r.modes],
        "n_calls": r.n_evaluations,
        "n_failed": r.n_failed,
        "time_sampling_s": r.times["sampling"],
    }


def _cluster(target, samples, weights, loglik, seed):
    _, modes = cluster_modes(
        samples, weights, loglik, target.prior, log_likelihood=jax.jit(target.log_likelihood), seed=seed
    )
    return modes


def run_dynesty(target: GaussianMixtureTarget, seed: int) -> dict:
    import dynesty

    low, width = np.asarray(target.prior.low), np.asarray(target.prior.width)
    ll = jax.jit(target.log_likelihood)
    loglike = lambda x: float(ll(jnp.asarray(x)))
    t0 = time.perf_counter()
    sampler = dynesty.NestedSampler(
        loglike,
        lambda u: low + width * u,
        low.size,
        nlive=500,
        bound="multi",
        sample="rslice",
        rstate=np.random.default_rng(seed),
    )
    sampler.run_nested(dlogz=0.1, print_progress=False)
    t = time.perf_counter() - t0
    res = sampler.results
    w = np.exp(res.logwt - res.logz[-1])
    modes = _cluster(target, res.samples, w / w.sum(), res.logl, seed)
    return {
        "log_z": float(res.logz[-1]),
        "log_z_err": float(res.logzerr[-1]),
        "weights": [m.weight for m in modes],
        "means0": [float(m.mean[0]) for m in modes],
        "n_calls": int(np.sum(res.ncall)),
        "n_failed": 0,
        "time_sampling_s": t,
    }


def run_jaxns(target: GaussianMixtureTarget, seed: int) -> dict:
    import numpyro
    import numpyro.distributions as dist
    from numpyro.contrib.nested_sampling import NestedSampler

    low, high = jnp.asarray(target.prior.low), jnp.asarray(target.prior.high)

    def model():
        theta = numpyro.sample("theta", dist.Uniform(low, high).to_event(1))
        numpyro.factor("ll", target.log_likelihood(theta))

    t0 = time.perf_counter()
    ns = NestedSampler(model, constructor_kwargs={"max_samples": 1e5, "devices": jax.devices()[:1]})
    ns.run(jax.random.PRNGKey(seed))
    t = time.perf_counter() - t0
    res = ns._results  # (log_Z_mean / log_Z_uncert live only on the jaxns results)
    samples, log_w = ns.get_weighted_samples()
    theta = np.asarray(samples["theta"])
    w = np.exp(np.asarray(log_w) - np.max(log_w))
    ll = np.asarray(jax.vmap(target.log_likelihood)(jnp.asarray(theta)))
    modes = _cluster(target, theta, w / w.sum(), ll, seed)
    return {
        "log_z": float(res.log_Z_mean),
        "log_z_err": float(res.log_Z_uncert),
        "weights": [m.weight for m in modes],
        "means0": [float(m.mean[0]) for m in modes],
        "n_calls": int(res.total_num_likelihood_evaluations),
        "n_failed": 0,
        "time_sampling_s": t,
    }


RUNNERS = {"smc": run_smc, "dynesty": run_dynesty, "jaxns": run_jaxns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--seeds", default="smc=5,dynesty=1,jaxns=3", help="seeds per candidate (dynesty is the slow one)"
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "modes_sampler.json"))
    args = parser.parse_args()
    problems = {"two_modes": GaussianMixtureTarget.two_modes(), "one_mode": GaussianMixtureTarget.one_mode()}
    report = {
        "problems": {
            k: {"log_evidence": p.log_evidence, "mode_weights": p.mode_weights.tolist()} for k, p in problems.items()
        },
        "cpu_cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "results": {},
    }
    seeds = {k: int(v) for k, v in (item.split("=") for item in args.seeds.split(","))}
    report["seeds"] = seeds
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    for name, n_seeds in seeds.items():
        runner = RUNNERS[name]
        report["results"][name] = {}
        for pname, target in problems.items():
            runs = report["results"][name][pname] = []
            for seed in range(n_seeds):
                t0 = time.perf_counter()
                try:
                    out = runner(target, seed)
                except ImportError as exc:
                    runs.append({"skipped": f"ImportError: {exc}"})
                    print(f"{name}: skipped ({exc})")
                    break
                out["time_total_s"] = time.perf_counter() - t0
                out["seed"] = seed
                out["load_average_1min"] = os.getloadavg()[0]  # the 2-core machine is shared: timings scale with it
                out["log_z_minus_true"] = out["log_z"] - target.log_evidence
                out["log_z_pull"] = out["log_z_minus_true"] / out["log_z_err"] if out["log_z_err"] > 0 else math.inf
                true_w = sorted(target.mode_weights, reverse=True)
                got = out["weights"] + [0.0] * max(0, len(true_w) - len(out["weights"]))
                out["n_modes"] = len(out["weights"])
                out["max_weight_error"] = (
                    float(max(abs(a - b) for a, b in zip(got, true_w))) if out["n_modes"] == len(true_w) else None
                )
                runs.append(out)
                print(
                    f"{name:8s} {pname:9s} seed {seed}: {out['time_total_s']:6.1f} s, {out['n_calls']:8d} calls, "
                    f"lnZ - true = {out['log_z_minus_true']:+.3f} +- {out['log_z_err']:.3f}, weights {np.round(out['weights'], 3)}",
                    flush=True,
                )
                out_path.write_text(json.dumps(report, indent=1))
    out_path.write_text(json.dumps(report, indent=1))
    print("wrote", out_path)


if __name__ == "__main__":
    main()
