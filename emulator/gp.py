"""Baseline: a scikit-learn Gaussian process of the summaries (for small training sets).

One ``GaussianProcessRegressor`` for all S standardised summaries (shared kernel, fitted on the
summed log marginal likelihood): ``C * RBF(ARD length scales over the 8 unit-cube inputs) +
White``.  Values only (a plain GP does not use the stored Jacobians); its Jacobian is the
analytic derivative of the posterior mean, so it can be compared with the emulator's on the
same test points.  Cost O(N^3): meant for N <~ 1000.
"""

from __future__ import annotations

import numpy as np

from sapphire.prior import Prior


class GaussianProcessBaseline:
    """``fit(theta (n, 8), summaries (n, S))``; ``predict(theta)`` -> (mean (n, S), std (n, S));
    ``jacobian(theta)`` -> (n, S, 8) d mean / d theta (physical units)."""

    def __init__(self, prior: Prior, *, seed: int = 0, n_restarts: int = 2) -> None:
        self.prior = prior
        self.seed = int(seed)
        self.n_restarts = int(n_restarts)
        self.gp = None

    def _unit(self, theta) -> np.ndarray:
        return np.atleast_2d(self.prior.to_unit(np.asarray(theta, np.float64)))

    def fit(self, theta, summaries) -> GaussianProcessBaseline:
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        summaries = np.asarray(summaries, np.float64)
        self.mean_ = summaries.mean(axis=0)
        self.std_ = np.where(summaries.std(axis=0) > 0, summaries.std(axis=0), 1.0)
        d = self.prior.ndim
        kernel = ConstantKernel(1.0, (1e-3, 1e3)) * RBF(np.full(d, 0.5), (1e-2, 1e2)) + WhiteKernel(1e-4, (1e-10, 1e0))
        self.gp = GaussianProcessRegressor(
            kernel, normalize_y=False, n_restarts_optimizer=self.n_restarts, random_state=self.seed
        )
        self.gp.fit(self._unit(theta), (summaries - self.mean_) / self.std_)
        self.x_train_ = self.gp.X_train_
        self.alpha_ = self.gp.alpha_
        kernel_ = self.gp.kernel_
        self.amplitude_ = float(kernel_.k1.k1.constant_value)
        self.length_scale_ = np.broadcast_to(np.asarray(kernel_.k1.k2.length_scale, np.float64), (d,)).copy()
        return self

    def predict(self, theta) -> tuple[np.ndarray, np.ndarray]:
        mean, std = self.gp.predict(self._unit(theta), return_std=True)
        std = std if std.ndim == 2 else np.repeat(std[:, None], mean.shape[1], axis=1)
        return self.mean_ + self.std_ * mean, self.std_ * std

    def jacobian(self, theta) -> np.ndarray:
        """Analytic derivative of the posterior mean: d/du sum_i alpha_i k(u, u_i), with
        d k / d u_j = -k (u_j - u_ij) / l_j^2 (the white-noise term has no derivative off the
        training points), mapped to physical theta."""
        u = self._unit(theta)
        diff = u[:, None, :] - self.x_train_[None, :, :]  # (n, N, d)
        k = self.amplitude_ * np.exp(-0.5 * np.sum((diff / self.length_scale_) ** 2, axis=-1))  # (n, N)
        dk = -k[:, :, None] * diff / self.length_scale_**2  # (n, N, d)
        dz_du = np.einsum("nid,is->nsd", dk, self.alpha_)
        return dz_du * self.std_[None, :, None] / self.prior.width[None, None, :]
