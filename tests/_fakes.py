"""Test doubles shared by the forecast tests: an emulator-protocol object on an analytic map."""

import jax
import jax.numpy as jnp
import numpy as np

import sapphire

PRIOR = sapphire.DEFAULT_PRIOR


class FakeEmulator:
    """The emulator protocol on a smooth map: mean = y0 + A u + c (u . u) with u = (theta -
    centre) / width; error = e0 (1 + |u|^2).  Pure jnp, so traceable and differentiable."""

    def __init__(self, observations=None, seed=0, curvature=0.05, error=0.02):
        self.observations = sapphire.Observations.default() if observations is None else observations
        self.prior = PRIOR
        rng = np.random.default_rng(seed)
        n = self.observations.n_summary
        self._y0 = jnp.asarray(self.observations.y)
        self._A = jnp.asarray(rng.normal(0.0, 0.3, (n, 8)))
        self._c = jnp.asarray(curvature * rng.normal(size=n))
        self._e0 = error
        self._centre, self._width = jnp.asarray(PRIOR.centre), jnp.asarray(PRIOR.width)

    def predict(self, theta):
        u = (jnp.asarray(theta) - self._centre) / self._width
        return self._y0 + self._A @ u + self._c * (u @ u), self._e0 * (1.0 + u @ u) * jnp.ones_like(self._y0)

    def jacobian(self, theta):
        return jax.jacfwd(lambda t: self.predict(t)[0])(jnp.asarray(theta))

    def fingerprint(self):
        return "fake-emulator"


class TwoModeEmulator(FakeEmulator):
    """Summary 0 = y_0 + sigma_0 (u_0^2 - a^2) / eps, summary 1 = y_1 + sigma_1 u_6 / eps, the
    others = y (u: theta in prior widths from the centre): with A_etaM and A_tdep free, two
    mirror-image modes at u_0 = -+a (weights 1/2 each), each of width eps / (2a) in u_0 and eps
    in u_6."""

    a, eps = 0.25, 0.01

    def predict(self, theta):
        import jax.numpy as jnp

        u = (jnp.asarray(theta) - self._centre) / self._width
        sigma = jnp.asarray(self.observations.sigma)
        shift = jnp.zeros_like(self._y0).at[0].set(sigma[0] * (u[0] ** 2 - self.a**2) / self.eps)
        shift = shift.at[1].set(sigma[1] * u[6] / self.eps)
        return self._y0 + shift, 1e-9 * jnp.ones_like(self._y0)
