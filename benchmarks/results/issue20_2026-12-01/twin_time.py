import sys, os, time, numpy as np, jax, jax.numpy as jnp, sapphire
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); from twin import make
from sapphire.solve import SolverSettings, solve_population, solve_population_with_jacobian
halos = sapphire.HaloPopulation.from_diffmah(256, seed=0); forcing = halos.forcing()
th = jnp.asarray(sapphire.DEFAULT_PRIOR.centre); st = SolverSettings()
rows = {"solve": jax.jit(lambda t, f: solve_population(t, f, None, st).log_state)}
for k, free in ((1, (0,)), (8, tuple(range(8)))):
    rows[f"watched_k{k}"] = jax.jit(lambda t, f, free=free: solve_population_with_jacobian(t, f, None, st, free=free).jacobian)
    rows[f"twin_w0.1_k{k}"] = make(0.1, free)
    rows[f"twin_w0_k{k}"] = make(0.0, free)
for k, fn in rows.items(): jax.block_until_ready(fn(th, forcing))
T = {k: [] for k in rows}
for r in range(3):
    for k, fn in rows.items():
        t0 = time.perf_counter(); jax.block_until_ready(fn(th, forcing)); T[k].append(time.perf_counter() - t0)
    print(r, "load", os.getloadavg()[0], {k: round(v[-1], 3) for k, v in T.items()}, flush=True)
b = {k: min(v) for k, v in T.items()}
print("over solve:", {k: round(v / b["solve"], 2) for k, v in b.items()})
