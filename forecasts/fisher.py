"""Fisher matrices and the Laplace approximation at a point (usually the MAP).

``laplace(fm, theta)``: the Hessian of -ln L at theta (autodiff ``jax.hessian`` by default, or
central differences of the gradient: ``method="fd_grad"``).
``gauss_newton_fisher(fm, theta)``: J^T C^-1 J from the summary Jacobian J = d mean / d theta
(S, n_free) and C = diag(model variance + sigma_obs^2) at theta.

Both return a :class:`FisherResult`.  The covariance (inverse matrix), the marginal errors and
the correlations are given ONLY when the matrix is positive definite (all eigenvalues > ``rtol``
x the largest, and a Cholesky factorisation succeeds); otherwise ``positive_definite`` is False,
``covariance``/``sigmas`` are None and ``message`` names the offending eigenvalues and the
parameter combinations they belong to (a saddle point or a flat direction is never inverted
silently).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import numpy as np

from sapphire.likelihood import gauss_newton_fisher_matrix

from .forward import ForwardModel, check_training_coverage, log_likelihood_at, warn_failed_halos

__all__ = ["FisherResult", "fisher_result", "laplace", "gauss_newton_fisher", "finite_difference_hessian"]

#: Eigenvalues at or below RTOL x the largest count as not positive (numerically singular).
RTOL = 1e-12


@dataclasses.dataclass(frozen=True)
class FisherResult:
    """A Fisher (precision) matrix of the free parameters at ``theta``, and what follows from it.

    Attributes:
        names: free parameter names.
        theta: (n,) the point.
        matrix: (n, n) symmetric precision matrix [1 / parameter units^2].
        kind: "laplace (autodiff)", "laplace (fd_grad)", "gauss-newton", or what the caller gave.
        eigenvalues: (n,) ascending; eigenvectors: (n, n) columns.
        positive_definite: all eigenvalues > RTOL x max and Cholesky succeeds.
        covariance: (n, n) inverse, or None if not positive definite.
        sigmas: (n,) marginal 1-sigma errors sqrt(diag(covariance)), or None.
        correlation: (n, n), or None.
        condition_number: max |eigenvalue| / min |eigenvalue| (inf if one is 0).
        message: "" or why no covariance is given.
        n_failed: failed halos excluded from the likelihood at theta (the most in any of the
            evaluations that made the matrix); 0 for models without halos.
        coverage: None, or for an emulator where theta lies relative to its training design.
    """

    names: tuple[str, ...]
    theta: np.ndarray
    matrix: np.ndarray
    kind: str
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    positive_definite: bool
    covariance: np.ndarray | None
    sigmas: np.ndarray | None
    correlation: np.ndarray | None
    condition_number: float
    message: str
    n_failed: int = 0
    coverage: dict | None = None

    def to_dict(self) -> dict:
        """JSON-ready view."""
        as_list = lambda a: None if a is None else np.asarray(a).tolist()  # noqa: E731
        return {
            "names": list(self.names),
            "theta": as_list(self.theta),
            "kind": self.kind,
            "matrix": as_list(self.matrix),
            "eigenvalues": as_list(self.eigenvalues),
            "positive_definite": self.positive_definite,
            "covariance": as_list(self.covariance),
            "sigmas": as_list(self.sigmas),
            "condition_number": float(self.condition_number) if np.isfinite(self.condition_number) else None,
            "message": self.message,
            "n_failed": int(self.n_failed),
            "training_coverage": self.coverage,
        }


def fisher_result(matrix, names: Sequence[str], theta, kind: str = "fisher", rtol: float = RTOL) -> FisherResult:
    """Analyse a precision matrix: eigen-decomposition, positive definiteness, covariance.

    ``matrix`` (n, n) is symmetrised first; non-finite entries make it "not positive definite"."""
    names = tuple(names)
    matrix = np.asarray(matrix, dtype=np.float64)
    theta = np.asarray(theta, dtype=np.float64)
    n = len(names)
    if matrix.shape != (n, n):
        raise ValueError(f"matrix must have shape ({n}, {n}) for the parameters {names}; got {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        i, j = np.argwhere(~np.isfinite(matrix))[0]
        nan = np.full(n, np.nan)
        return FisherResult(
            names,
            theta,
            matrix,
            kind,
            nan,
            np.full((n, n), np.nan),
            False,
            None,
            None,
            None,
            np.inf,
            f"matrix entry ({names[i]}, {names[j]}) is {matrix[i, j]}: not finite",
        )
    matrix = 0.5 * (matrix + matrix.T)
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    abs_eig = np.abs(eigenvalues)
    condition = float(abs_eig.max() / abs_eig.min()) if abs_eig.min() > 0 else np.inf
    scale = max(abs_eig.max(), np.finfo(float).tiny)
    bad = np.flatnonzero(eigenvalues <= rtol * scale)
    message = ""
    if bad.size == 0:
        try:
            np.linalg.cholesky(matrix)
        except np.linalg.LinAlgError:
            bad = np.array([0])
    if bad.size:
        parts = []
        for k in bad:
            vec = eigenvectors[:, k]
            top = np.argsort(-np.abs(vec))[: min(3, n)]
            combo = " ".join(f"{vec[t]:+.2f}*{names[t]}" for t in top)
            parts.append(f"eigenvalue {eigenvalues[k]:.4g} along ({combo})")
        kind_of = "a saddle point or maximum" if np.any(eigenvalues[bad] < 0) else "singular (flat direction)"
        message = f"not positive definite ({kind_of}): " + "; ".join(parts) + "; no covariance given"
        return FisherResult(
            names, theta, matrix, kind, eigenvalues, eigenvectors, False, None, None, None, condition, message
        )
    covariance = eigenvectors @ np.diag(1.0 / eigenvalues) @ eigenvectors.T
    covariance = 0.5 * (covariance + covariance.T)
    sigmas = np.sqrt(np.diag(covariance))
    correlation = covariance / np.outer(sigmas, sigmas)
    return FisherResult(
        names, theta, matrix, kind, eigenvalues, eigenvectors, True, covariance, sigmas, correlation, condition, message
    )


def finite_difference_hessian(fun: Callable, x, step) -> np.ndarray:
    """Central-difference Hessian of a scalar ``fun`` at ``x`` (n,), steps ``step`` (scalar or
    (n,)): (f(x+h_i e_i+h_j e_j) - f(x+h_i e_i-h_j e_j) - f(x-h_i e_i+h_j e_j) + f(x-h_i e_i-h_j e_j))
    / (4 h_i h_j), diagonal (f(x+2h e) - 2 f(x) + f(x-2h e)) / (4 h^2).  Error O(h^2)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    h = np.broadcast_to(np.asarray(step, dtype=np.float64), (n,))
    f = lambda v: float(fun(v))  # noqa: E731
    f0 = f(x)
    H = np.empty((n, n))
    for i in range(n):
        ei = np.zeros(n)
        ei[i] = h[i]
        H[i, i] = (f(x + 2 * ei) - 2 * f0 + f(x - 2 * ei)) / (4 * h[i] ** 2)
        for j in range(i + 1, n):
            ej = np.zeros(n)
            ej[j] = h[j]
            H[i, j] = H[j, i] = (f(x + ei + ej) - f(x + ei - ej) - f(x - ei + ej) + f(x - ei - ej)) / (4 * h[i] * h[j])
    return H


_jit_hessian = jax.jit(
    jax.hessian(lambda spec, data, theta: -log_likelihood_at(spec, data, theta), argnums=2), static_argnums=0
)


def laplace(fm: ForwardModel, theta, *, method: str | None = None, relative_step: float = 1e-4) -> FisherResult:
    """Laplace approximation at ``theta`` (n_free,): the Hessian of -ln L.

    Args:
        fm: forward model.
        theta: the point, inside the box (normally the MAP; at a MAP on a face of the box the
            Hessian does not describe the truncated posterior).
        method: "autodiff" (``jax.hessian``), "fd_grad" (central differences of the gradient,
            step ``relative_step`` x prior width, symmetrised: 2 n gradient calls; cheap when
            the gradient is compiled already, but see ``ExactForward`` on its step dependence),
            or None for ``fm.hessian_method`` ("autodiff" for every forward model here).
    """
    method = fm.hessian_method if method is None else method
    theta_j = fm.check_theta(theta)
    if method == "autodiff":
        H = np.asarray(_jit_hessian(fm.spec, fm.data, theta_j))
        n_failed = fm.diagnostics(theta_j)["n_failed"]
    elif method == "fd_grad":
        steps = relative_step * fm.prior.width
        n_failed = 0

        def grad(t):
            nonlocal n_failed
            _, g, failed = fm.log_likelihood_grad_and_failures(t)
            n_failed = max(n_failed, failed)
            return g

        theta_np = np.asarray(theta_j)
        columns = []
        for j in range(fm.n_free):
            e = np.zeros(fm.n_free)
            e[j] = steps[j]
            columns.append(-(grad(theta_np + e) - grad(theta_np - e)) / (2 * steps[j]))
        H = np.stack(columns, axis=1)
    else:
        raise ValueError(f"method must be 'autodiff', 'fd_grad' or None; got {method!r}")
    warn_failed_halos("laplace", [n_failed], "evaluations")
    coverage = check_training_coverage(fm, np.asarray(theta_j)[None], "laplace", "expansion points")
    return dataclasses.replace(
        fisher_result(H, fm.free_names, np.asarray(theta_j), kind=f"laplace ({method})"),
        n_failed=int(n_failed),
        coverage=coverage,
    )


def gauss_newton_fisher(fm: ForwardModel, theta, *, prior_term: bool = False) -> FisherResult:
    """Gauss-Newton Fisher matrix F = J^T C^-1 J at ``theta`` (n_free,).

    J = d mean / d theta_free (S, n_free) (``fm.summary_jacobian``) and C = diag(model variance +
    sigma_obs^2) at theta.  The theta-dependence of C (the model's standard error or the
    emulator error) is neglected, as are second derivatives of the mean: F equals the Laplace
    Hessian only for a linear mean with constant variance (the toy).  ``prior_term=True`` adds
    diag(12 / width^2) of the free parameters' prior box, the convention of the emulator report
    (``sapphire.likelihood.gauss_newton_fisher_matrix``).
    """
    theta_j = fm.check_theta(theta)
    J = fm.summary_jacobian_numpy(theta_j)
    _, model_variance, n_failed = fm.predict_with_failures_numpy(theta_j)
    F = gauss_newton_fisher_matrix(J, model_variance + fm.sigma**2, fm.prior.width if prior_term else None)
    result = fisher_result(
        F, fm.free_names, np.asarray(theta_j), kind="gauss-newton" + (" + prior" if prior_term else "")
    )
    return dataclasses.replace(result, n_failed=int(n_failed))
