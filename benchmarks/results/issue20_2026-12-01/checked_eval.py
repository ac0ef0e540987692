import sys, os, json, numpy as np, jax, jax.numpy as jnp, sapphire
from sapphire.solve import SolverSettings, solve_population_with_jacobian, _vmap_halos
from sapphire.time_tables import cosmic_table
N = int(sys.argv[1]); ndraw = int(sys.argv[2])
STIFF = np.array([2.0, -3.0, 0.0, -3.0, -2.0, 0.0, -0.5, 0.0])
rng = np.random.default_rng(20)
thetas = [("centre", np.asarray(sapphire.DEFAULT_PRIOR.centre)), ("stiff", STIFF)] + [(f"lhs{i}", np.asarray(sapphire.DEFAULT_PRIOR.from_unit(u))) for i, u in enumerate(rng.uniform(size=(ndraw, 8)))]
halos = sapphire.HaloPopulation.from_diffmah(N, seed=1); forcing = halos.forcing(); config = sapphire.DEFAULT_CONFIG
FREE = tuple(int(i) for i in os.environ.get("FREE", "0,1,2,3,4,5,6,7").split(","))
jac = lambda st: jax.jit(lambda th, f: solve_population_with_jacobian(th, f, None, st, free=FREE))
tight, default, checked = jac(SolverSettings(rtol=1e-10, atol=1e-10, max_steps=200000)), jac(SolverSettings()), jac(SolverSettings(sensitivity_steps="checked", tangent_check=float(os.environ.get("CHECK", "0.01"))))
cst = SolverSettings(sensitivity_steps="checked", tangent_check=float(os.environ.get("CHECK", "0.01")))
disc = jax.jit(lambda th, f: _vmap_halos(th, f, None, "tsit5", cst, config, cosmic_table(f.times[0], config), True, FREE, "checked")[1])
floor = 1e-3; allr = {"default": [], "checked": []}
for name, th in thetas:
    th = jnp.asarray(th); ref = np.asarray(tight(th, forcing).jacobian)
    m = np.isfinite(ref) & (np.abs(ref) > floor)
    row = [name]
    for lab, fn in (("default", default), ("checked", checked)):
        r = fn(th, forcing); J = np.asarray(r.jacobian)
        e = np.abs(J - ref)[m] / np.abs(ref)[m]; allr[lab].append(e)
        row.append(f"{lab}: med {np.median(e):.1e} max {np.max(e):.1e} >10% {(e>0.1).sum()} steps {np.mean(r.solution.num_steps):.0f}/{np.max(r.solution.num_steps)} fail {(~np.asarray(r.solution.success)).sum()}")
    d = np.asarray(disc(th, forcing)); row.append(f"flagged(if all tsit5) {(~(d <= cst.tangent_check)).sum()}/{N}")
    print(" | ".join(row), flush=True)
for lab, v in allr.items():
    v = np.concatenate(v); print(lab, "ALL entries", v.size, "median %.2e p95 %.2e max %.2e >10%%: %d frac<=2e-3 %.4f" % (np.median(v), np.percentile(v, 95), v.max(), (v > 0.1).sum(), np.mean(v <= 2e-3)))
