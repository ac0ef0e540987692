import numpy as np, jax, jax.numpy as jnp, sapphire, os
from sapphire.solve import SolverSettings, _vmap_halos
from sapphire.time_tables import cosmic_table
halos = sapphire.HaloPopulation.from_diffmah(256, seed=0); f = halos.forcing(); config = sapphire.DEFAULT_CONFIG
th = jnp.asarray(sapphire.DEFAULT_PRIOR.centre); st = SolverSettings(sensitivity_steps="checked")
idx = sapphire.PARAMETER_NAMES
sets = {1: ("A_etaM",), 2: ("A_etaM", "A_tdep"), 4: ("A_etaM", "B_etaM", "A_tdep", "B_tdep"), 8: idx}
for k, names in sets.items():
    free = tuple(idx.index(n) for n in names)
    first, d = jax.jit(lambda th, f: _vmap_halos(th, f, None, "tsit5", st, config, cosmic_table(f.times[0], config), True, free, "checked"))(th, f)
    d = np.asarray(d); s = np.asarray(first.solution.num_steps)
    print(f"k={k}: first-pass steps mean {s.mean():.1f} max {s.max()}; flagged at 0.01: {(~(d <= 0.01)).sum()}/256 (capacity 32); discrepancy median {np.median(d):.1e} max {d.max():.1e}", flush=True)
print("load", os.getloadavg())
