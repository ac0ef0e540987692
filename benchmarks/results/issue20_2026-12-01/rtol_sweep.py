import numpy as np, jax, jax.numpy as jnp, sapphire, os
from sapphire.solve import SolverSettings, solve_population
f = sapphire.HaloPopulation.from_diffmah(256, seed=0).forcing(); th = jnp.asarray(sapphire.DEFAULT_PRIOR.centre)
ref = np.asarray(solve_population(th, f, None, SolverSettings(solver="tsit5", rtol=1e-9, atol=1e-9)).log_state)
for rtol in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7):
    s = solve_population(th, f, None, SolverSettings(solver="tsit5", rtol=rtol, atol=rtol / 10))
    n = np.asarray(s.num_steps); e = np.abs(np.asarray(s.log_state) - ref)
    print(f"rtol {rtol:g}: steps mean {n.mean():.1f} max {n.max()}  max err {np.nanmax(e):.1e} dex, within 2e-3 {np.mean(e <= 2e-3):.4f}", flush=True)
print("load", os.getloadavg())
