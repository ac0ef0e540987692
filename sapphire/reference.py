"""Independent reference solutions: SciPy's stiff solvers on the same vector field.

Used by the tests and the validation scripts to check the diffrax engine.  The vector
field and its Jacobian are the engine's own (jit-compiled), but the integrator, its error
control and its linear algebra are SciPy's (``solve_ivp(method="Radau")``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp

from . import cosmology
from .config import DEFAULT_CONFIG, ModelConfig
from .halos import HaloForcing
from .physics import initial_log_state, log_state_derivative


def scipy_reference_solve(
    theta: np.ndarray,
    forcing: HaloForcing,
    config: ModelConfig = DEFAULT_CONFIG,
    method: str = "Radau",
    rtol: float = 1e-9,
    atol: float = 1e-10,
    save_times: np.ndarray | None = None,
) -> tuple[np.ndarray, bool]:
    """Solve ONE halo (an unstacked ``HaloForcing``) with ``scipy.integrate.solve_ivp``.

    Returns the log10 state at t0 (7,), or at ``save_times`` (n_t, 7), and SciPy's success
    flag.
    """
    theta = jnp.asarray(theta, dtype=jnp.float64)
    t_end = cosmology.present_age(config.cosmology)
    t_start = float(forcing.t_start)

    @jax.jit
    def rhs(t, y):
        mhalo, rate = forcing(t)
        return log_state_derivative(t, y, theta, mhalo, rate, config)

    jac = jax.jit(jax.jacfwd(rhs, argnums=1))
    mhalo0, _ = forcing(t_start)
    y0 = np.asarray(initial_log_state(mhalo0, cosmology.redshift_at_age(t_start, config.cosmology), config))
    sol = solve_ivp(
        lambda t, y: np.asarray(rhs(t, y)),
        (t_start, t_end),
        y0,
        method=method,
        jac=lambda t, y: np.asarray(jac(t, y)),
        rtol=rtol,
        atol=atol,
        t_eval=None if save_times is None else np.clip(save_times, t_start, t_end),
    )
    ys = sol.y[:, -1] if save_times is None else sol.y.T
    return np.asarray(ys), bool(sol.success)
