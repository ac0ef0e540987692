"""Tangents on (nearly) the primal's steps with a second, propagated 4th-order tangent estimate
as the accuracy check (issue 20 experiment)."""
import sys, os, time, json, numpy as np, jax, jax.numpy as jnp, diffrax, sapphire
from typing import ClassVar
from diffrax._solver.tsit5 import _tsit5_tableau as TB
from sapphire import cosmology
from sapphire.solve import SolverSettings, solve_population_with_jacobian, _state_and_sensitivity_norm
from sapphire.physics import initial_log_state, log_state_derivative_from_kinematics
from sapphire.time_tables import cosmic_table, tabulated_kinematics
A = [np.asarray(a) for a in TB.a_lower]; B = np.asarray(TB.b_sol); BE = np.asarray(TB.b_error); C = np.concatenate([[0.0], np.asarray(TB.c)])
B4 = B - BE

class TwinTsit5(diffrax.AbstractAdaptiveSolver):
    field: object  # (t, x, theta) -> dx
    theta: jax.Array
    free: tuple
    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation
    def order(self, terms): return 5
    def error_order(self, terms): return 5
    def init(self, terms, t0, t1, y0, args): return None
    def func(self, terms, t0, y0, args): raise NotImplementedError
    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        x0, s0, r0 = y0; h = t1 - t0; k = len(self.free)
        eye = jnp.eye(self.theta.shape[0], dtype=x0.dtype)[np.asarray(self.free)]
        kx, ks, kr = [], [], []
        for i in range(7):
            a = A[i - 1] if i else np.zeros(0)
            xi = x0 + h * sum(a[j] * kx[j] for j in range(i)) if i else x0
            si = s0 + h * sum(a[j] * ks[j] for j in range(i)) if i else s0
            ri = r0 + h * sum(a[j] * kr[j] for j in range(i)) if i else r0
            dx, lin = jax.linearize(lambda x_, th_: self.field(t0 + C[i] * h, x_, th_), xi, self.theta)
            dirs_x = jnp.concatenate([si.T, ri.T]); dirs_t = jnp.concatenate([eye, eye])
            out = jax.vmap(lin, out_axes=1)(dirs_x, dirs_t)
            kx.append(dx); ks.append(out[:, :k]); kr.append(out[:, k:])
        x1 = x0 + h * sum(B[i] * kx[i] for i in range(7)); s1 = s0 + h * sum(B[i] * ks[i] for i in range(7))
        r1 = r0 + h * sum(B4[i] * kr[i] for i in range(7))
        ex = h * sum(BE[i] * kx[i] for i in range(7)); es = h * sum(BE[i] * ks[i] for i in range(7))
        y1 = (x1, s1, r1)
        return y1, (ex, es, jnp.zeros_like(r1)), dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful

config = sapphire.DEFAULT_CONFIG; t_end = cosmology.present_age(config.cosmology)
def make(weight, free, rtol=1e-5, atol=1e-6):
    def one(theta, f, table):
        def field(t, x, th):
            return log_state_derivative_from_kinematics(x, th, tabulated_kinematics(t, f, table, config), config)
        mh0, _ = f(f.t_start)
        x0 = initial_log_state(mh0, cosmology.redshift_at_age(f.t_start, config.cosmology), config)
        z = jnp.zeros((7, len(free)), x0.dtype)
        norm = lambda e: jnp.maximum(jnp.sqrt(jnp.mean(e[0] ** 2)), weight * jnp.sqrt(jnp.mean(e[1] ** 2)))
        sol = diffrax.diffeqsolve(diffrax.ODETerm(lambda t, y, a: y), TwinTsit5(field, theta, tuple(free)), f.t_start, t_end, None, (x0, z, z),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, norm=norm), max_steps=16384, throw=False)
        return sol.ys[1][-1], sol.ys[2][-1], sol.stats["num_steps"], sol.result == diffrax.RESULTS.successful
    return jax.jit(lambda th, f: jax.vmap(one, in_axes=(None, 0, None))(th, f, cosmic_table(f.times[0], config)))

if __name__ == "__main__":
    N = int(sys.argv[1]); label = sys.argv[2]; weights = [float(w) for w in sys.argv[3].split(",")]
    STIFF = np.array([2.0, -3.0, 0.0, -3.0, -2.0, 0.0, -0.5, 0.0])
    theta = {"centre": np.asarray(sapphire.DEFAULT_PRIOR.centre), "stiff": STIFF}.get(label)
    if theta is None:
        rng = np.random.default_rng(int(label)); theta = np.asarray(sapphire.DEFAULT_PRIOR.from_unit(rng.uniform(size=8)))
    theta = jnp.asarray(theta)
    halos = sapphire.HaloPopulation.from_diffmah(N, seed=0); forcing = halos.forcing()
    tight = SolverSettings(solver="tsit5", rtol=1e-10, atol=1e-10, max_steps=200000)
    ref = np.asarray(jax.jit(lambda th, f: solve_population_with_jacobian(th, f, None, tight).jacobian)(theta, forcing))[:, -1]
    floor = 1e-3; m = np.abs(ref) > floor
    free = tuple(range(8))
    for w in weights:
        S, R, steps, ok = [np.asarray(a) for a in make(w, free)(theta, forcing)]
        err = np.where(m, np.abs(S - ref) / np.maximum(np.abs(ref), floor), 0.0)
        check = np.where(np.abs(S) > floor, np.abs(S - R) / np.maximum(np.abs(S), floor), 0.0)
        he, hc = err.reshape(N, -1).max(1), check.reshape(N, -1).max(1)
        v = err[m]
        print(f"{label} w={w}: steps mean {steps.mean():.1f} max {steps.max()} failed {(~ok).sum()} | err median {np.median(v):.2e} p95 {np.percentile(v,95):.2e} max {v.max():.2e} >10%: {(v>0.1).sum()} of {m.sum()}")
        print("   corr log check vs log err", np.corrcoef(np.log10(hc + 1e-14), np.log10(he + 1e-14))[0, 1], " entries: check>=err for", np.mean((check >= 0.5 * err)[m]))
        for T in (0.003, 0.01, 0.03, 0.1):
            fl = hc > T
            print(f"   check T={T}: flagged {fl.sum()}/{N}, unflagged entries >10%: {(err[~fl][m[~fl]] > 0.1).sum()}, >2e-3: {(err[~fl][m[~fl]] > 2e-3).sum()}, max unflagged err {he[~fl].max() if (~fl).any() else 0:.2e}")
