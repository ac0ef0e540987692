import jax, jax.numpy as jnp, diffrax, numpy as np
jax.config.update("jax_enable_x64", True)
from sapphire.chebyshev import RKC2, spectral_bound
A = jnp.array([[-500.0, 1.0],[0.0,-1.0]])
def f(t,y,args): return A@y + jnp.array([jnp.sin(t), 0.0])
y0=jnp.array([1.0,1.0])
for solver in [RKC2(), diffrax.Tsit5()]:
  for rtol in [1e-4,1e-6]:
    sol=diffrax.diffeqsolve(diffrax.ODETerm(f),solver,0.,3.,None,y0,stepsize_controller=diffrax.PIDController(rtol=rtol,atol=rtol),saveat=diffrax.SaveAt(ts=jnp.array([1.0,3.0])),max_steps=100000)
    ref=diffrax.diffeqsolve(diffrax.ODETerm(f),diffrax.Kvaerno5(),0.,3.,None,y0,stepsize_controller=diffrax.PIDController(rtol=1e-11,atol=1e-11),saveat=diffrax.SaveAt(ts=jnp.array([1.0,3.0])),max_steps=100000)
    print(type(solver).__name__, rtol, sol.stats['num_steps'], float(jnp.max(jnp.abs(sol.ys-ref.ys))))
print(spectral_bound(A), spectral_bound(jnp.array([[-3.,100.],[0.,-2.]])))
# convergence order on a non-stiff problem with fixed steps
def g(t,y,args): return -y*jnp.cos(t)
for n in [20,40,80]:
  sol=diffrax.diffeqsolve(diffrax.ODETerm(g),RKC2(),0.,2.,2./n,jnp.array([1.0]),max_steps=1000)
  print(n, float(jnp.abs(sol.ys[-1,0]-jnp.exp(-jnp.sin(2.)))))
