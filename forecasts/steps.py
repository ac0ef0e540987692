"""Steps shared by the forecast subcommands: the expansion point (MAP or truth), the Fisher
matrix there with its on-disk cache, and HMC with the checkpoint policy of the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sapphire.jsonio import write_json

from .problem import Problem, option_error


def expansion_point(args, fm, problem: Problem):
    """(theta_free, MapResult dict or None): the MAP from --starts starts, or the truth."""
    from .optimize import find_map

    if args.fisher_at == "truth":
        if problem.truth is None:
            raise option_error(args, "--fisher-at truth needs --mock-theta")
        return np.asarray(problem.free_truth(fm)), None
    if args.starts < 1:
        raise option_error(args, f"--starts must be >= 1, got {args.starts}")
    fit = find_map(fm, args.starts, seed=args.seed)
    return fit.best, fit.to_dict()


def fisher_at_point(args, fm, theta):
    """The ``--hessian`` Fisher matrix (Laplace or Gauss-Newton) of ``fm`` at ``theta``."""
    from .fisher import gauss_newton_fisher, laplace

    if args.hessian == "gauss-newton":
        return gauss_newton_fisher(fm, theta)
    return laplace(fm, theta, method=None if args.hessian == "auto" else args.hessian)


def fisher_from_dict(d: dict):
    """A ``FisherResult`` from its ``to_dict()``."""
    from .fisher import fisher_result

    return fisher_result(np.asarray(d["matrix"], dtype=np.float64), d["names"], np.asarray(d["theta"]), kind=d["kind"])


def laplace_step(args, fm, problem: Problem, cache: Path | None = None):
    """(point, map dict or None, FisherResult); with ``cache``, reused when the forward model's
    fingerprint and the settings match (validate reruns)."""
    settings = {"fingerprint": fm.fingerprint(), "fisher_at": args.fisher_at, "starts": args.starts, "seed": args.seed,
                "hessian": args.hessian}
    if cache is not None and cache.exists():
        try:
            saved = json.loads(cache.read_text())
            if saved.get("settings") == settings:
                return np.asarray(saved["point"]), saved["map"], fisher_from_dict(saved["fisher"])
        except (ValueError, KeyError, TypeError):
            pass
    point, fit = expansion_point(args, fm, problem)
    fisher = fisher_at_point(args, fm, point)
    if cache is not None:
        write_json(cache, {"settings": settings, "point": np.asarray(point), "map": fit, "fisher": fisher.to_dict()})
    return point, fit, fisher


def hmc_progress_bar(args, description: str, total: int):
    """An HMC progress bar unless ``--quiet``."""
    from .hmc import progress_bar

    return None if args.quiet else progress_bar(description, total)


def hmc_step(args, fm, *, chains: int, warmup: int, draws: int, checkpoint: Path | None, init_point=None, label: str = "HMC"):
    """``run_hmc`` with the command's seed, checkpoint and time limit; ``--hmc-init map`` starts at ``init_point``."""
    from .hmc import CheckpointMismatch, run_hmc

    if chains < 1 or warmup < 0 or draws < 1:
        raise option_error(args, f"HMC needs chains >= 1, warmup >= 0, draws >= 1; got {chains}, {warmup}, {draws}")
    init = None
    if args.hmc_init == "map" and init_point is not None:
        low, width = np.asarray(fm.prior.low), np.asarray(fm.prior.width)
        init = np.clip(np.asarray(init_point, dtype=np.float64), low + 1e-6 * width, low + (1 - 1e-6) * width)
    try:
        return run_hmc(fm, num_chains=chains, num_warmup=warmup, num_samples=draws, seed=args.seed, init=init,
                       checkpoint=checkpoint, time_limit_s=args.time_limit,
                       progress=hmc_progress_bar(args, label, warmup + draws))
    except CheckpointMismatch as err:
        raise option_error(args, f"{err} (or pass --restart)" if args.command == "validate" else str(err)) from None


def fisher_draws(fisher, n: int, seed: int) -> np.ndarray | None:
    """(n, n_free) seeded Gaussian draws from a Fisher result's covariance (None if singular)."""
    if fisher.covariance is None:
        return None
    return np.random.default_rng(seed).multivariate_normal(fisher.theta, fisher.covariance, size=n)
