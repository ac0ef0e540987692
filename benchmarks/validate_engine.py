#!/usr/bin/env python
"""Engine acceptance figures for sapphire (failures, accuracy, gradients, budgets).

Usage::

    python benchmarks/validate_engine.py                 # full run (26.5 min measured on the shared 2-core box, load ~3-4)
    python benchmarks/validate_engine.py --quick         # smaller run (~3 min)
    python benchmarks/validate_engine.py --out results.json

Sections (MODEL.md sections 7 and 9 for the physics and the known solver behaviour):

a. Failures: Latin-hypercube draws of the prior box (scipy ``LatinHypercube``, seeded,
   ``optimization="random-cd"``) x diffmah halos (seed 0), default ``Model()``: failed solves,
   NaNs, steps, implicit fraction.
b. Accuracy: default-tolerance final log states vs the same model at rtol 1e-9 / atol 1e-10
   (fraction of entries within 2e-3 dex, median, max); and vs SciPy Radau (rtol 1e-9) on the
   same vector field for a few halos at the prior centre, an ordinary draw and the stiff corner.
c. Gradients: exact Jacobians (forward sensitivities) at rtol = atol = 1e-10 vs central finite
   differences of ``Model.evolve`` at the same tolerance; default-tolerance Jacobians vs
   tight ones.  FD step choice (documented in ``choose_fd_steps``) never looks at the AD result.
d. Budgets: the 7 log states augmented with the cumulative inflow/outflow integrals, solved
   with diffrax at rtol 1e-10; the baryon and metal budgets of MODEL.md section 7 must close.
"""

from __future__ import annotations

import argparse
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
from scipy.stats import qmc
from tqdm import tqdm

import sapphire  # noqa: F401  (enables x64)
from sapphire import DEFAULT_PRIOR, HaloPopulation, Model, Prior, cosmology
from sapphire.config import DEFAULT_CONFIG
from sapphire.physics import (
    N_STATE,
    STATE_NAMES,
    compute_rates,
    initial_log_state,
    log_state_derivative,
)
from sapphire.prior import PARAMETER_NAMES
from sapphire.reference import scipy_reference_solve
from sapphire.solve import stiffness_estimate

#: The stiff corner of MODEL.md section 9.
STIFF_CORNER = np.array([2.0, -3.0, 0.0, -3.0, -2.0, 0.0, -0.5, 0.0])
#: An ordinary draw (MODEL.md section 9, "preventive").
ORDINARY = np.array([0.2, -1.0, -0.55, -0.93, -1.2, -1.4, 0.88, -2.3])

#: Targets.
ACC_DEX = 2e-3
ACC_FRACTION_TARGET = 0.99
GRAD_MEDIAN_TARGET = 2e-3
GRAD_P95_TARGET = 2e-2
DEFAULT_VS_TIGHT_MEDIAN_TARGET = 1e-2
JAC_ENTRY_FLOOR = 1e-3
DISAGREEMENT_REPORT = 0.10
BUDGET_TARGET = 1e-6

#: Steps of the tight solves; the stiff corner needs ~25k Kvaerno3 steps at rtol 1e-10
#: (more than the default cap of 16384).
TIGHT_MAX_STEPS = 400_000

#: Run sizes.  The gradient section is the expensive one: at rtol 1e-10 a stiff draw needs
#: ~10^4 (the stiff corner ~2.5 x 10^4) Kvaerno3 steps per solve, and each FD step of the
#: scan costs 16 solves per draw, so it runs on 8 halos (every 8th of the 64) and a 3-step
#: scan instead of 16 halos and 5 steps (the plateau criterion picks h = 1e-3 or 3e-4;
#: larger steps are truncation-dominated, see the results' ``fd_steps_chosen``).
SIZES = {
    "full": dict(
        fail_draws=512,
        n_halos=64,
        acc_draws=64,
        scipy_halos=(0, 21, 42, 63),
        grad_draws=16,
        grad_halos=tuple(range(0, 64, 8)),
        fd_params=tuple(range(8)),
        fd_steps=(3e-3, 1e-3, 3e-4),
        budget_halos=(0, 21, 42, 63),
        budget_times=64,
    ),
    "quick": dict(
        fail_draws=24,
        n_halos=64,
        acc_draws=4,
        scipy_halos=(0,),
        grad_draws=2,
        grad_halos=(32, 63),
        fd_params=(0, 1, 6),
        fd_steps=(3e-3, 1e-3, 3e-4),
        budget_halos=(0, 63),
        budget_times=32,
    ),
}
REDUCTIONS = {
    "full": "c. gradients: 16 draws x 8 halos (not 16) and FD steps {3e-3, 1e-3, 3e-4} (not 5 steps), for runtime",
    "quick": "quick mode: every section reduced (see sizes); its figures are smoke tests, not acceptance figures",
}


# ----------------------------------------------------------------------------- helpers
def lhs_draws(n: int, seed: int, prior: Prior = DEFAULT_PRIOR) -> np.ndarray:
    sampler = qmc.LatinHypercube(d=prior.ndim, optimization="random-cd", rng=seed)
    return prior.from_unit(sampler.random(n))


def widened(prior: Prior, margin: float) -> Prior:
    """The prior box grown by ``margin`` on each side, so that central differences at the
    box's faces (the stiff corner lies on them) pass ``Model``'s input check.  The physics
    is defined outside the box; only the validation changes."""
    return Prior(prior.names, tuple(np.asarray(prior.low) - margin), tuple(np.asarray(prior.high) + margin))


def block(x):
    return jax.block_until_ready(x)


def unstack(forcing, i):
    return jax.tree.map(lambda a: a[i], forcing)


def fmt(x, spec=".3g"):
    if x is None:
        return "-"
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return format(float(x), spec)


def stiff_mask(theta, halos, config=DEFAULT_CONFIG, threshold=1000.0) -> np.ndarray:
    est = jax.vmap(stiffness_estimate, in_axes=(None, 0, None))(jnp.asarray(theta), halos.forcing(), config)
    return np.asarray(est) > threshold


# ----------------------------------------------------------------------------- a. failures
def section_failures(draws, halos, model, log):
    n_draws = draws.shape[0]
    finals = np.full((n_draws, halos.n_halos, N_STATE), np.nan)
    success = np.zeros((n_draws, halos.n_halos), bool)
    steps = np.zeros((n_draws, halos.n_halos), int)
    implicit = np.zeros((n_draws, halos.n_halos), bool)
    seconds = np.zeros(n_draws)
    t_all = time.perf_counter()
    for i in tqdm(range(n_draws), desc="a. failures", file=sys.stderr):
        t = time.perf_counter()
        out = model.evolve(draws[i], halos)
        finals[i] = np.asarray(block(out.log_state))
        success[i] = np.asarray(out.success)
        steps[i] = np.asarray(out.num_steps)
        implicit[i] = np.asarray(out.implicit)
        seconds[i] = time.perf_counter() - t
    nan_entries = ~np.isfinite(finals)
    failed = [(int(i), int(h)) for i, h in np.argwhere(~success)]
    nan_pairs = [(int(i), int(h)) for i, h in np.argwhere(nan_entries.any(axis=2) & success)]
    res = {
        "n_draws": n_draws,
        "n_halos": halos.n_halos,
        "n_solves": int(success.size),
        "n_failed": int((~success).sum()),
        "failed_pairs": failed,
        "n_nan_entries": int(nan_entries.sum()),
        "nan_in_successful_pairs": nan_pairs,
        "steps_mean": float(steps.mean()),
        "steps_max": int(steps.max()),
        "steps_p99": float(np.percentile(steps, 99)),
        "implicit_fraction": float(implicit.mean()),
        "draws_with_implicit_group": int(implicit.any(axis=1).sum()),
        "seconds_per_draw_median": float(np.median(seconds[1:])) if n_draws > 1 else float(seconds[0]),
        "seconds_per_draw_max": float(seconds[1:].max()) if n_draws > 1 else float(seconds[0]),
        "seconds_first_draw_incl_compile": float(seconds[0]),
        "seconds_total": time.perf_counter() - t_all,
    }
    log(
        f"[a] {res['n_solves']} solves, {res['n_failed']} failed, {res['n_nan_entries']} NaN entries; "
        f"steps mean {res['steps_mean']:.0f} max {res['steps_max']}; implicit fraction {res['implicit_fraction']:.3f}"
    )
    if failed:
        log(f"[a] failing (draw, halo): {failed}")
    return res, finals, success


# ----------------------------------------------------------------------------- b. accuracy
def section_accuracy(draws, finals_default, halos, tight_model, default_model, scipy_halos, log):
    n = draws.shape[0]
    tight = np.full((n, halos.n_halos, N_STATE), np.nan)
    tight_success = np.zeros((n, halos.n_halos), bool)
    t0 = time.perf_counter()
    for i in tqdm(range(n), desc="b. accuracy (rtol 1e-9)", file=sys.stderr):
        out = tight_model.evolve(draws[i], halos)
        tight[i] = np.asarray(block(out.log_state))
        tight_success[i] = np.asarray(out.success)
    diff = np.abs(finals_default[:n] - tight)
    finite = np.isfinite(diff)
    d = diff[finite]
    worst = np.unravel_index(np.nanargmax(np.where(finite, diff, -1.0)), diff.shape)
    per_state = {name: float(np.nanmax(diff[..., k])) for k, name in enumerate(STATE_NAMES)}
    res = {
        "n_draws": n,
        "n_halos": halos.n_halos,
        "tight_failed": int((~tight_success).sum()),
        "n_entries": int(diff.size),
        "n_nonfinite": int((~finite).sum()),
        "fraction_within_2e-3_dex": float(np.mean(d <= ACC_DEX)) if d.size else float("nan"),
        "median_dex": float(np.median(d)),
        "p99_dex": float(np.percentile(d, 99)),
        "max_dex": float(d.max()),
        "max_at": {
            "draw": int(worst[0]),
            "halo": int(worst[1]),
            "state": STATE_NAMES[worst[2]],
            "theta": draws[worst[0]].tolist(),
        },
        "max_dex_per_state": per_state,
        "fraction_within_per_state": {
            name: float(np.mean(diff[..., k][finite[..., k]] <= ACC_DEX)) for k, name in enumerate(STATE_NAMES)
        },
        "fraction_within_per_draw": [float(np.mean(diff[i][finite[i]] <= ACC_DEX)) for i in range(n)],
        "n_draws_below_99pct": int(sum(np.mean(diff[i][finite[i]] <= ACC_DEX) < ACC_FRACTION_TARGET for i in range(n))),
        "n_pairs_above_2e-3": int((np.where(finite, diff, 0.0).max(axis=2) > ACC_DEX).sum()),
        "seconds": time.perf_counter() - t0,
    }
    log(
        f"[b] default vs rtol 1e-9: {100 * res['fraction_within_2e-3_dex']:.3f}% within 2e-3 dex, "
        f"median {res['median_dex']:.2e}, max {res['max_dex']:.2e} at {res['max_at']}"
    )
    log(
        "[b] per state: "
        + ", ".join(f"{k} {100 * v:.2f}%" for k, v in res["fraction_within_per_state"].items())
        + f"; {res['n_draws_below_99pct']} of {n} draws below 99%; {res['n_pairs_above_2e-3']} (draw, halo) pairs off by > 2e-3 dex"
    )

    # --- SciPy Radau on the same vector field
    forcing = halos.forcing()
    rows = []
    t0 = time.perf_counter()
    for label, theta in (("centre", DEFAULT_PRIOR.centre), ("ordinary", ORDINARY), ("stiff_corner", STIFF_CORNER)):
        eng = np.asarray(block(default_model.evolve(theta, halos).log_state))
        eng_tight = np.asarray(block(tight_model.evolve(theta, halos).log_state))
        for h in tqdm(scipy_halos, desc=f"b. SciPy Radau ({label})", file=sys.stderr):
            ts = time.perf_counter()
            ref, ok = scipy_reference_solve(theta, unstack(forcing, h), rtol=1e-9, atol=1e-10)
            rows.append(
                {
                    "theta": label,
                    "halo": int(h),
                    "log_mh0": float(halos.log_mhalo_z0[h]),
                    "scipy_success": ok,
                    "max_dex_default": float(np.max(np.abs(eng[h] - ref))),
                    "max_dex_tight": float(np.max(np.abs(eng_tight[h] - ref))),
                    "seconds_scipy": time.perf_counter() - ts,
                }
            )
    res["scipy"] = rows
    res["scipy_max_dex_default"] = float(max(r["max_dex_default"] for r in rows))
    res["scipy_max_dex_tight"] = float(max(r["max_dex_tight"] for r in rows))
    res["scipy_all_success"] = bool(all(r["scipy_success"] for r in rows))
    res["scipy_seconds"] = time.perf_counter() - t0
    for r in rows:
        log(
            f"[b] Radau {r['theta']:>12s} halo {r['halo']:2d} (log Mh0 {r['log_mh0']:.2f}): "
            f"max |default - Radau| {r['max_dex_default']:.2e} dex, |rtol1e-9 - Radau| {r['max_dex_tight']:.2e} "
            f"(Radau ok={r['scipy_success']}, {r['seconds_scipy']:.1f} s)"
        )
    return res


# ----------------------------------------------------------------------------- c. gradients
def fd_scan(fd_model, theta, halos, steps, params):
    """Central differences of ``Model.evolve`` for parameters ``params`` at every step:
    (n_steps, n_halo, 7, 8), NaN in the columns of parameters not differenced."""
    out = np.full((len(steps), halos.n_halos, N_STATE, len(theta)), np.nan)
    for j in params:
        for k, h in enumerate(steps):
            e = np.zeros(len(theta))
            e[j] = h
            plus = np.asarray(block(fd_model.evolve(theta + e, halos).log_state))
            minus = np.asarray(block(fd_model.evolve(theta - e, halos).log_state))
            out[k, :, :, j] = (plus - minus) / (2.0 * h)
    return out


def choose_fd_steps(fd: np.ndarray, params, floor: float = JAC_ENTRY_FLOOR):
    """Pick, per parameter, the step from the scan WITHOUT reference to the AD Jacobian.

    Criterion (stability / plateau): for consecutive steps h_k > h_{k+1} of the scan, the
    difference FD(h_k) - FD(h_{k+1}) is dominated by truncation error (O(h^2)) when h is
    large and by solver noise (O(tol/h)) when h is small; it is smallest on the plateau where
    both are small.  For each parameter we take the pair with the smallest median (over halos
    and states with |FD| > floor) relative difference |FD(h_k) - FD(h_{k+1})| / |FD(h_{k+1})|,
    and use FD(h_{k+1}) (the smaller step of that pair).  |FD(h_k) - FD(h_{k+1})| is kept as
    the FD's own error estimate for each entry.

    Returns (fd_chosen (n_halo, 7, 8), error_estimate (n_halo, 7, 8), chosen step index per
    parameter (8,)).
    """
    n_steps = fd.shape[0]
    n_par = fd.shape[-1]
    chosen = np.full(n_par, -1)
    best = np.full(fd.shape[1:], np.nan)
    err = np.full(fd.shape[1:], np.nan)
    for j in params:
        scores = []
        for k in range(n_steps - 1):
            a, b = fd[k, ..., j], fd[k + 1, ..., j]
            mask = np.isfinite(a) & np.isfinite(b) & (np.abs(b) > floor)
            rel = np.abs(a - b)[mask] / np.abs(b)[mask]
            scores.append(np.median(rel) if rel.size else np.inf)
        k = int(np.argmin(scores)) if np.isfinite(scores).any() else n_steps - 2
        chosen[j] = k + 1
        best[..., j] = fd[k + 1, ..., j]
        err[..., j] = np.abs(fd[k, ..., j] - fd[k + 1, ..., j])
    return best, err, chosen


def relative_errors(test, ref, floor=JAC_ENTRY_FLOOR):
    """|test - ref| / |ref| on entries with |ref| > floor (finite both)."""
    mask = np.isfinite(test) & np.isfinite(ref) & (np.abs(ref) > floor)
    return np.abs(test - ref)[mask] / np.abs(ref)[mask], mask


def section_gradients(grad_draws, halos, halo_ids, tight_model, fd_model, default_model, steps, params, log):
    n = grad_draws.shape[0]
    shape = (n, halos.n_halos, N_STATE, grad_draws.shape[1])
    jac_tight = np.full(shape, np.nan)
    jac_default = np.full(shape, np.nan)
    fd_best = np.full(shape, np.nan)
    fd_err = np.full(shape, np.nan)
    chosen = np.zeros((n, grad_draws.shape[1]), int)
    states_tight = np.full(shape[:3], np.nan)
    implicit = np.zeros((n, halos.n_halos), bool)
    nan_count = {"jac_tight": 0, "jac_default": 0, "fd": 0, "states": 0}
    seconds = {"jac_tight": 0.0, "jac_default": 0.0, "fd": 0.0}
    for i in tqdm(range(n), desc="c. gradients", file=sys.stderr):
        theta = grad_draws[i]
        t = time.perf_counter()
        ev, jac = default_model.evolve_with_jacobian(theta, halos)
        jac_default[i] = np.asarray(block(jac))
        seconds["jac_default"] += time.perf_counter() - t
        t = time.perf_counter()
        ev, jac = tight_model.evolve_with_jacobian(theta, halos)
        jac_tight[i] = np.asarray(block(jac))
        states_tight[i] = np.asarray(ev.log_state)
        implicit[i] = np.asarray(ev.implicit)
        seconds["jac_tight"] += time.perf_counter() - t
        t = time.perf_counter()
        scan = fd_scan(fd_model, theta, halos, steps, params)
        seconds["fd"] += time.perf_counter() - t
        fd_best[i], fd_err[i], chosen[i] = choose_fd_steps(scan, params)
        nan_count["fd"] += int((~np.isfinite(scan[..., list(params)])).sum())
    nan_count["jac_tight"] = int((~np.isfinite(jac_tight)).sum())
    nan_count["jac_default"] = int((~np.isfinite(jac_default)).sum())
    nan_count["states"] = int((~np.isfinite(states_tight)).sum())

    rel_fd, mask_fd = relative_errors(jac_tight, fd_best)
    rel_def, mask_def = relative_errors(jac_default, jac_tight)

    def locate(rel_full, mask, test, ref, label, extra=None):
        rows = []
        full = np.full(mask.shape, 0.0)
        full[mask] = rel_full
        for i, h, s, p in np.argwhere(full > DISAGREEMENT_REPORT):
            row = {
                "comparison": label,
                "draw": int(i),
                "theta": grad_draws[i].round(4).tolist(),
                "halo": int(halo_ids[h]),
                "state": STATE_NAMES[s],
                "parameter": PARAMETER_NAMES[p],
                "test": float(test[i, h, s, p]),
                "reference": float(ref[i, h, s, p]),
                "rel_err": float(full[i, h, s, p]),
                "implicit": bool(implicit[i, h]),
            }
            if extra is not None:
                row["fd_error_estimate"] = float(extra[i, h, s, p])
                row["fd_step"] = float(steps[chosen[i, p]])
            rows.append(row)
        rows.sort(key=lambda r: -r["rel_err"])
        return rows

    dis_fd = locate(rel_fd, mask_fd, jac_tight, fd_best, "exact(1e-10) vs FD(1e-10)", fd_err)
    dis_def = locate(rel_def, mask_def, jac_default, jac_tight, "exact(default) vs exact(1e-10)")
    step_hist = {fmt(h): int((chosen[:, list(params)] == k).sum()) for k, h in enumerate(steps)}
    # FD's own consistency on the same entries (how good is the reference?)
    fd_self, _ = relative_errors(fd_best + fd_err, fd_best)
    res = {
        "n_draws": n,
        "n_halos": halos.n_halos,
        "halo_ids": [int(h) for h in halo_ids],
        "draws": grad_draws.tolist(),
        "fd_steps_scanned": list(steps),
        "fd_steps_chosen_histogram": step_hist,
        "fd_parameters": [PARAMETER_NAMES[j] for j in params],
        "fd_steps_chosen": [[float(steps[k]) if k >= 0 else None for k in row] for row in chosen],
        "n_entries_fd": int(mask_fd.sum()),
        "fd_median_rel": float(np.median(rel_fd)),
        "fd_p95_rel": float(np.percentile(rel_fd, 95)),
        "fd_max_rel": float(rel_fd.max()),
        "fd_self_consistency_median_rel": float(np.median(fd_self)),
        "n_entries_default": int(mask_def.sum()),
        "default_vs_tight_median_rel": float(np.median(rel_def)),
        "default_vs_tight_p95_rel": float(np.percentile(rel_def, 95)),
        "default_vs_tight_max_rel": float(rel_def.max()),
        "per_draw_fd_median_rel": [],
        "implicit_fraction": float(implicit.mean()),
        "nan_counts": nan_count,
        "disagreements_fd": dis_fd,
        "disagreements_default": dis_def,
        "seconds": seconds,
    }
    for i in range(n):
        r, _ = relative_errors(jac_tight[i], fd_best[i])
        res["per_draw_fd_median_rel"].append(float(np.median(r)) if r.size else float("nan"))
    log(
        f"[c] exact vs FD (rtol 1e-10, {res['n_entries_fd']} entries |J|>1e-3): median {res['fd_median_rel']:.2e}, "
        f"p95 {res['fd_p95_rel']:.2e}, max {res['fd_max_rel']:.2e}; FD steps chosen {step_hist}"
    )
    log(
        f"[c] default vs tight exact Jacobians ({res['n_entries_default']} entries): median "
        f"{res['default_vs_tight_median_rel']:.2e}, p95 {res['default_vs_tight_p95_rel']:.2e}, "
        f"max {res['default_vs_tight_max_rel']:.2e}; NaN counts {nan_count}"
    )
    for rows in (dis_fd, dis_def):
        if rows:
            log(f"[c] {len(rows)} disagreements > {DISAGREEMENT_REPORT:.0%} ({rows[0]['comparison']}):")
        for r in rows:
            extra = f" FD err.est {r['fd_error_estimate']:.2e} (h={r['fd_step']:g})" if "fd_error_estimate" in r else ""
            log(
                f"    draw {r['draw']:2d} halo {r['halo']:2d} {r['state']:>8s} d/d{r['parameter']:<7s} "
                f"test {r['test']: .5e} ref {r['reference']: .5e} rel {r['rel_err']:.2e} implicit={r['implicit']}{extra}"
            )
    return res


# ----------------------------------------------------------------------------- d. budgets
def make_budget_solver(config=DEFAULT_CONFIG, rtol=1e-10, atol=1e-10, max_steps=TIGHT_MAX_STEPS):
    """jit(vmap) solve of the 7 log states augmented with five cumulative flows, scaled by
    f_b M_h(t0): int Mdot_in, int Mdot_out, int Z_in Mdot_in, int y_Z SFR, int Z_CGM Mdot_out.

    The state part is the package's ``log_state_derivative``; the flows are the package's
    ``compute_rates``.  Returns (ts (n_halo, n_t), ys (n_halo, n_t, 12), success)."""
    t_end = cosmology.present_age(config.cosmology)

    def one(theta, forcing, frac, solver_name):
        scale = config.baryon_fraction * 10.0**forcing.log_mhalo_z0

        def field(t, u, args):
            y = u[:N_STATE]
            mh, mdot = forcing(t)
            r = compute_rates(t, y, theta, mh, mdot, config)
            dy = log_state_derivative(t, y, theta, mh, mdot, config)
            flows = (
                jnp.stack(
                    [
                        r.inflow_rate,
                        r.outflow_rate,
                        config.inflow_metallicity * r.inflow_rate,
                        config.metal_yield * r.sfr,
                        r.z_cgm * r.outflow_rate,
                    ]
                )
                / scale
            )
            return jnp.concatenate([dy, flows])

        t0 = forcing.t_start
        mh0, _ = forcing(t0)
        y0 = initial_log_state(mh0, cosmology.redshift_at_age(t0, config.cosmology), config)
        u0 = jnp.concatenate([y0, jnp.zeros(5)])
        ts = t0 + (t_end - t0) * frac
        solver = diffrax.Kvaerno5() if solver_name == "kvaerno5" else diffrax.Tsit5()
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            solver,
            t0=t0,
            t1=t_end,
            dt0=None,
            y0=u0,
            saveat=diffrax.SaveAt(ts=ts),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            max_steps=max_steps,
            throw=False,
        )
        return ts, sol.ys, sol.result == diffrax.RESULTS.successful, sol.stats["num_steps"]

    solvers = {
        name: jax.jit(jax.vmap(lambda th, f, fr, name=name: one(th, f, fr, name), in_axes=(None, 0, None)))
        for name in ("tsit5", "kvaerno5")
    }
    return solvers


def budget_errors(ts, ys, forcing_z0, config=DEFAULT_CONFIG):
    """Relative budget errors per halo and time (numpy)."""
    scale = config.baryon_fraction * 10.0 ** np.asarray(forcing_z0)[:, None]
    lin = 10.0 ** ys[..., :N_STATE]
    i_in, i_out, i_zin, i_yz, i_zout = (ys[..., N_STATE + k] * scale for k in range(5))
    m_b = lin[..., 0] + lin[..., 2] + lin[..., 4]
    m_z = lin[..., 1] + lin[..., 3] + lin[..., 5]
    d_b = m_b - m_b[:, :1]
    d_z = m_z - m_z[:, :1]
    err_b = np.abs(d_b - (i_in - i_out))
    err_z = np.abs(d_z - (i_zin + i_yz - i_zout))
    # Two normalisations: the present content, and the gross mass that has flowed through
    # (initial content + all inflow + all outflow), which is what the integration errors scale with.
    gross_b = m_b[:, :1] + i_in + i_out
    gross_z = m_z[:, :1] + i_zin + i_yz + i_zout
    return {
        "baryon_rel_to_content": err_b / m_b,
        "baryon_rel_to_gross": err_b / gross_b,
        "metal_rel_to_content": err_z / m_z,
        "metal_rel_to_gross": err_z / gross_z,
    }


def section_budgets(halos, budget_halos, n_times, log):
    sub = halos.subset(np.asarray(budget_halos))
    solvers = make_budget_solver()
    frac = jnp.linspace(0.0, 1.0, n_times)
    rows = []
    t0 = time.perf_counter()
    for label, theta in (("centre", DEFAULT_PRIOR.centre), ("ordinary", ORDINARY), ("stiff_corner", STIFF_CORNER)):
        stiff = stiff_mask(theta, sub).any()
        name = "kvaerno5" if stiff else "tsit5"
        ts, ys, ok, nsteps = block(solvers[name](jnp.asarray(theta), sub.forcing(), frac))
        errs = budget_errors(np.asarray(ts), np.asarray(ys), sub.log_mhalo_z0)
        row = {
            "theta": label,
            "solver": name,
            "success": np.asarray(ok).tolist(),
            "num_steps": np.asarray(nsteps).tolist(),
            "halos": [int(h) for h in budget_halos],
        }
        for k, v in errs.items():
            row[f"max_{k}"] = float(np.nanmax(v))
        row["nonfinite"] = int(sum((~np.isfinite(v)).sum() for v in errs.values()))
        rows.append(row)
        log(
            f"[d] {label:>12s} ({name}): baryons max rel err {row['max_baryon_rel_to_content']:.2e} (content) "
            f"{row['max_baryon_rel_to_gross']:.2e} (gross); metals {row['max_metal_rel_to_content']:.2e} (content) "
            f"{row['max_metal_rel_to_gross']:.2e} (gross); success {row['success']}"
        )
    res = {
        "rows": rows,
        "n_times": n_times,
        "rtol": 1e-10,
        "atol": 1e-10,
        "worst_baryon_rel": max(r["max_baryon_rel_to_content"] for r in rows),
        "worst_metal_rel": max(r["max_metal_rel_to_content"] for r in rows),
        "worst_baryon_rel_gross": max(r["max_baryon_rel_to_gross"] for r in rows),
        "worst_metal_rel_gross": max(r["max_metal_rel_to_gross"] for r in rows),
        "all_success": all(all(r["success"]) for r in rows),
        "seconds": time.perf_counter() - t0,
    }
    return res


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller run (~3 min on 2 cores)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "validate_engine.json")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Latin hypercube and of the gradient draws")
    parser.add_argument("--halo-seed", type=int, default=0, help="diffmah seed")
    parser.add_argument("--sections", default="abcd", help="which sections to run (subset of 'abcd')")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    size = SIZES[mode]
    lines: list[str] = []

    def log(msg):
        tqdm.write(msg, file=sys.stdout)
        lines.append(msg)
        sys.stdout.flush()

    t_start = time.perf_counter()
    results = {
        "mode": mode,
        "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in size.items()},
        "seed": args.seed,
        "halo_seed": args.halo_seed,
        "versions": {
            "sapphire": sapphire.__version__,
            "jax": jax.__version__,
            "diffrax": diffrax.__version__,
            "python": platform.python_version(),
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "config": DEFAULT_CONFIG.to_dict(),
    }
    results["reductions"] = REDUCTIONS[mode]
    log(f"sapphire engine validation ({mode}); sizes {results['sizes']}")
    log(f"NOTE: {REDUCTIONS[mode]}")

    halos = HaloPopulation.from_diffmah(size["n_halos"], seed=args.halo_seed)
    default_model = Model()
    results["default_settings"] = default_model.settings.to_dict()
    draws = lhs_draws(size["fail_draws"], args.seed)
    results["lhs"] = {"n": int(draws.shape[0]), "seed": args.seed, "optimization": "random-cd"}

    finals = None
    if "a" in args.sections or "b" in args.sections:
        results["failures"], finals, _ = section_failures(draws, halos, default_model, log)
    if "b" in args.sections:
        tight9 = Model(rtol=1e-9, atol=1e-10, max_steps=TIGHT_MAX_STEPS)
        results["accuracy"] = section_accuracy(
            draws[: size["acc_draws"]], finals, halos, tight9, default_model, size["scipy_halos"], log
        )
        results["accuracy"]["tight_settings"] = tight9.settings.to_dict()
    if "c" in args.sections:
        halo_ids = np.asarray(size["grad_halos"])
        grad_halos = halos.subset(halo_ids)
        rng = np.random.default_rng(args.seed + 1)
        n_random = size["grad_draws"] - 1
        grad_draws = np.vstack(
            [STIFF_CORNER[None], DEFAULT_PRIOR.from_unit(rng.uniform(size=(n_random, DEFAULT_PRIOR.ndim)))]
        )
        tight10 = Model(rtol=1e-10, atol=1e-10, max_steps=TIGHT_MAX_STEPS)
        fd_model = Model(
            rtol=1e-10, atol=1e-10, max_steps=TIGHT_MAX_STEPS, prior=widened(DEFAULT_PRIOR, 1.5 * max(size["fd_steps"]))
        )
        results["gradients"] = section_gradients(
            grad_draws, grad_halos, halo_ids, tight10, fd_model, default_model, size["fd_steps"], size["fd_params"], log
        )
        results["gradients"]["tight_settings"] = tight10.settings.to_dict()
    if "d" in args.sections:
        results["budgets"] = section_budgets(halos, size["budget_halos"], size["budget_times"], log)
    results["seconds_total"] = time.perf_counter() - t_start

    # ---- summary table
    table = []

    def row(name, value, target, ok):
        table.append((name, value, target, "PASS" if ok else "FAIL" if ok is not None else ""))

    if "failures" in results:
        f = results["failures"]
        row(
            f"a. failed solves ({f['n_draws']} draws x {f['n_halos']} halos)",
            fmt(f["n_failed"]),
            "0",
            f["n_failed"] == 0,
        )
        row("a. NaN entries in final states", fmt(f["n_nan_entries"]), "0", f["n_nan_entries"] == 0)
        row("a. steps mean / max", f"{f['steps_mean']:.0f} / {f['steps_max']}", "-", None)
        row("a. implicit fraction (halo solves)", fmt(f["implicit_fraction"]), "-", None)
        row(
            "a. seconds per draw (median / max)",
            f"{f['seconds_per_draw_median']:.2f} / {f['seconds_per_draw_max']:.2f}",
            "-",
            None,
        )
    if "accuracy" in results:
        a = results["accuracy"]
        row(
            f"b. fraction within 2e-3 dex of rtol 1e-9 ({a['n_draws']}x{a['n_halos']}x7)",
            fmt(a["fraction_within_2e-3_dex"], ".5f"),
            ">= 0.99",
            a["fraction_within_2e-3_dex"] >= ACC_FRACTION_TARGET,
        )
        row("b. |default - rtol 1e-9| median / max [dex]", f"{a['median_dex']:.2e} / {a['max_dex']:.2e}", "-", None)
        row("b. tight (rtol 1e-9) failed solves", fmt(a["tight_failed"]), "0", a["tight_failed"] == 0)
        row(
            f"b. max |default - Radau 1e-9| [dex] ({len(a['scipy'])} solves)",
            fmt(a["scipy_max_dex_default"], ".2e"),
            "<= 2e-3",
            a["scipy_max_dex_default"] <= ACC_DEX and a["scipy_all_success"],
        )
        row("b. max |rtol 1e-9 - Radau 1e-9| [dex]", fmt(a["scipy_max_dex_tight"], ".2e"), "-", None)
    if "gradients" in results:
        g = results["gradients"]
        row(
            f"c. exact vs FD median rel ({g['n_draws']}x{g['n_halos']}, |J|>1e-3)",
            fmt(g["fd_median_rel"], ".2e"),
            "<= 2e-3",
            g["fd_median_rel"] <= GRAD_MEDIAN_TARGET,
        )
        row(
            "c. exact vs FD 95th percentile rel",
            fmt(g["fd_p95_rel"], ".2e"),
            "<= 2e-2",
            g["fd_p95_rel"] <= GRAD_P95_TARGET,
        )
        row(
            "c. default vs tight Jacobian median rel",
            fmt(g["default_vs_tight_median_rel"], ".2e"),
            "<= 1e-2",
            g["default_vs_tight_median_rel"] <= DEFAULT_VS_TIGHT_MEDIAN_TARGET,
        )
        row("c. default vs tight Jacobian 95th percentile rel", fmt(g["default_vs_tight_p95_rel"], ".2e"), "-", None)
        row(
            "c. entries > 10% off (FD / default)",
            f"{len(g['disagreements_fd'])} / {len(g['disagreements_default'])}",
            "-",
            None,
        )
        n_nan = sum(g["nan_counts"].values())
        row("c. NaN in Jacobians / FD / states", fmt(n_nan), "0", n_nan == 0)
    if "budgets" in results:
        b = results["budgets"]
        row(
            "d. worst baryon budget error (rel. to content)",
            fmt(b["worst_baryon_rel"], ".2e"),
            "<= 1e-6",
            b["worst_baryon_rel"] <= BUDGET_TARGET and b["all_success"],
        )
        row(
            "d. worst metal budget error (rel. to content)",
            fmt(b["worst_metal_rel"], ".2e"),
            "<= 1e-6",
            b["worst_metal_rel"] <= BUDGET_TARGET and b["all_success"],
        )
    results["table"] = [dict(zip(("figure", "value", "target", "status"), r)) for r in table]
    results["log"] = lines

    width = max(len(r[0]) for r in table) if table else 10
    print()
    print(f"{'figure':<{width}}  {'value':>22}  {'target':>9}  status")
    print("-" * (width + 45))
    for name, value, target, status in table:
        print(f"{name:<{width}}  {value:>22}  {target:>9}  {status}")
    print(f"total {results['seconds_total']:.0f} s ({mode})")
    print(f"NOTE: {REDUCTIONS[mode]}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    print(f"results written to {args.out}")
    return 0 if all(r[3] != "FAIL" for r in table) else 1


if __name__ == "__main__":
    sys.exit(main())
