"""The Sobolev loss of one ensemble member (values + exact Jacobians) and its summary weights.

Loss of one ensemble member on a minibatch of B design points (network spaces, see
:mod:`emulator.network`)::

    L = mean_{b,i} rho_v(w_i (z_hat_bi - z_bi))  +  lambda * mean_{b,i,j} rho_J(w_i (dz_hat_bi/du_j - dz_bi/du_j))

z the standardised summaries, u the unit-cube parameters; the network Jacobian comes from
``jax.jacfwd`` and the target from the store's exact ``summary_jacobian`` mapped through the
same scalings (``Scalings.jacobian_to_network``).  ``lambda = gradient_weight`` (0: values
only).  rho is 2 x Huber (= r^2 up to ``delta``, linear beyond; ``delta=None``: plain square):
default ``huber_delta=0.01`` for the Jacobian term (close to an L1 penalty) and
``value_huber_delta=0.05`` for the values.  Why robust: the exact summaries have near-jumps
(a halo crossing a sharp transition moves a kernel-regression mean by ~0.05-0.1 dex within
~0.001-0.01 of a parameter's prior width), where the local exact Jacobian is 10-100x its typical
size; with squares those few points dominate the fit (the measured choice of delta:
docs/design.md s.11).  w_i are
per-summary weights (``summary_weighting``, default ``"sigma_obs"``: residuals in units of the
observational sigma, rescaled to unit RMS weight).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sapphire.observations import Observations

from .network import Scalings

SUMMARY_WEIGHTINGS = ("standardised", "sigma_obs")


def summary_weights(weighting: str, scalings: Scalings, observations: Observations) -> np.ndarray:
    """Per-summary factors (S,) on the residuals of the loss.  ``"standardised"``: all 1 (errors
    in units of the training-set standard deviation); ``"sigma_obs"``: std_i / sigma_obs_i,
    normalised to a root mean square of 1 (errors in units of the observational sigma, the
    units of the acceptance criteria and of the likelihood)."""
    if weighting == "standardised":
        return np.ones_like(scalings.summary_std)
    ratio = scalings.summary_std / np.asarray(observations.sigma)
    return ratio / np.sqrt(np.mean(ratio**2))


def _penalty(residual, huber_delta):
    """Mean of 2 * huber(residual, delta) (= residual^2 for |residual| <= delta, linear beyond);
    plain mean square for ``huber_delta=None``."""
    if huber_delta is None:
        return jnp.mean(residual**2)
    return 2.0 * jnp.mean(optax.huber_loss(residual, delta=huber_delta))


def member_loss(
    graphdef, decoder, gradient_weight, huber_delta, value_huber_delta, weights, params, u, z, jz, jmask=None
):
    """Sobolev loss of one member on (u (B, 8), z (B, S), jz (B, S, 8)):
    (total, (value mse, jacobian penalty)).  ``jmask`` (B,) 0/1: rows with an exact Jacobian
    (value-only points: 0); the Jacobian penalty is the mean over the rows that have one (with
    every row 1 it is bitwise the unmasked penalty)."""
    from flax import nnx

    net = nnx.merge(graphdef, params)

    def out(x):
        y = net(x) @ decoder
        return y, y

    jac, value = jax.vmap(jax.jacfwd(out, has_aux=True))(u)
    value_penalty = _penalty(weights * (value - z), value_huber_delta)
    residual = weights[:, None] * (jac - jz)
    if jmask is None:
        jac_penalty = _penalty(residual, huber_delta)
    else:
        # masked rows contribute 0 to the mean over all rows, which is rescaled to their count
        scale = jmask.shape[0] / jnp.maximum(jnp.sum(jmask), 1.0)
        jac_penalty = _penalty(residual * jmask[:, None, None], huber_delta) * scale
    return value_penalty + gradient_weight * jac_penalty, (value_penalty, jac_penalty)
