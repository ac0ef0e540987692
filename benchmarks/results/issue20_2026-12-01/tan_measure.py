import sys, os, json, time, numpy as np, jax, jax.numpy as jnp, sapphire
from sapphire.solve import SolverSettings, solve_population_with_jacobian, _vmap_halos
from sapphire.time_tables import cosmic_table
N = int(sys.argv[1]); label = sys.argv[2]
STIFF = np.array([2.0, -3.0, 0.0, -3.0, -2.0, 0.0, -0.5, 0.0])
theta = {"centre": np.asarray(sapphire.DEFAULT_PRIOR.centre), "stiff": STIFF}.get(label)
if theta is None:  # an LHS-like draw index
    rng = np.random.default_rng(int(label)); theta = np.asarray(sapphire.DEFAULT_PRIOR.from_unit(rng.uniform(size=8)))
theta = jnp.asarray(theta)
halos = sapphire.HaloPopulation.from_diffmah(N, seed=0); forcing = halos.forcing(); config = sapphire.DEFAULT_CONFIG
tight = SolverSettings(solver="tsit5", rtol=1e-10, atol=1e-10, max_steps=200000)
ref = np.asarray(jax.jit(lambda th, f: solve_population_with_jacobian(th, f, None, tight).jacobian)(theta, forcing))[:, -1]
W = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
st = SolverSettings(solver="tsit5", checked_weight=W)
print("checked_weight", W)
@jax.jit
def run(th, f, steps):
    table = cosmic_table(f.times[0], config)
    return _vmap_halos(th, f, None, "tsit5", st, config, table, True, None, steps)
prim, (worst, total) = jax.jit(lambda th, f: (lambda t=cosmic_table(f.times[0], config): _vmap_halos(th, f, None, "tsit5", st, config, t, True, None, "primal"))())(theta, forcing)
watch = jax.jit(lambda th, f: (lambda t=cosmic_table(f.times[0], config): _vmap_halos(th, f, None, "tsit5", st, config, t, True, None, "watched"))())(theta, forcing)
floor = 1e-3
def rel(j):
    j = np.asarray(j)[:, -1]; m = np.abs(ref) > floor
    r = np.where(m, np.abs(j - ref) / np.maximum(np.abs(ref), floor), 0.0)
    return r, m
rp, m = rel(prim.jacobian); rw, _ = rel(watch.jacobian)
worst = np.asarray(worst); total = np.asarray(total)
halo_err_p = rp.reshape(N, -1).max(1); halo_err_w = rw.reshape(N, -1).max(1)
print("theta", label, "entries", int(m.sum()))
print("steps primal-step mean/max", float(np.mean(prim.solution.num_steps)), int(np.max(prim.solution.num_steps)),
      "watched", float(np.mean(watch.solution.num_steps)), int(np.max(watch.solution.num_steps)))
for name, r in (("primal", rp), ("watched", rw)):
    v = r[m]; print(name, "median %.2e p95 %.2e max %.2e  >10%%: %d  >1%%: %d" % (np.median(v), np.percentile(v, 95), v.max(), (v > 0.1).sum(), (v > 0.01).sum()))
print("worst ratio quantiles 50/90/99/max", np.percentile(worst, [50, 90, 99, 100]))
for T in sorted(set([0.3, 1, 3, 10, 30, 100, 1000] + ([0.3/W, 0.5/W, 0.9/W, 0.99/W] if W else []))):
    fl = worst > T
    print("T=%g flagged %d  max halo err unflagged %.2e  n unflagged entries >10%%: %d" % (T, fl.sum(), halo_err_p[~fl].max() if (~fl).any() else 0, (rp[~fl][m[~fl]] > 0.1).sum()))
idx = np.argsort(-halo_err_p)[:8]
print("worst halos: err, worst ratio, total ratio, steps", [(int(i), float(halo_err_p[i]), float(worst[i]), float(total[i]), int(prim.solution.num_steps[i])) for i in idx])
print("corr log worst vs log err", np.corrcoef(np.log10(worst + 1e-12), np.log10(halo_err_p + 1e-12))[0, 1])
np.savez(f"/tmp/tan_{label}_{N}.npz", worst=worst, total=total, halo_err_p=halo_err_p, halo_err_w=halo_err_w)
