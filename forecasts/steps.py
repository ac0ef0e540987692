"""Steps shared by the forecast subcommands: the expansion point (MAP or truth), the Fisher
matrix there with its on-disk cache, and HMC with the checkpoint policy of the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sapphire.jsonio import write_json

from .problem import Problem, note, option_error


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
    settings = {
        "fingerprint": fm.fingerprint(),
        "fisher_at": args.fisher_at,
        "starts": args.starts,
        "seed": args.seed,
        "hessian": args.hessian,
    }
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


def hmc_step(
    args, fm, *, chains: int, warmup: int, draws: int, checkpoint: Path | None, init_point=None, label: str = "HMC"
):
    """``run_hmc`` with the command's seed, checkpoint and time limit; ``--hmc-init map`` starts at ``init_point``."""
    from .hmc import CheckpointMismatch, run_hmc

    if chains < 1 or warmup < 0 or draws < 1:
        raise option_error(args, f"HMC needs chains >= 1, warmup >= 0, draws >= 1; got {chains}, {warmup}, {draws}")
    init = init_point if args.hmc_init == "map" else None  # run_hmc moves a start on a bound inside
    try:
        return run_hmc(
            fm,
            num_chains=chains,
            num_warmup=warmup,
            num_samples=draws,
            seed=args.seed,
            init=init,
            checkpoint=checkpoint,
            time_limit_s=args.time_limit,
            progress=hmc_progress_bar(args, label, warmup + draws),
        )
    except CheckpointMismatch as err:
        raise option_error(args, f"{err} (or pass --restart)" if args.command == "validate" else str(err)) from None


def fisher_draws(fisher, n: int, seed: int) -> np.ndarray | None:
    """(n, n_free) seeded Gaussian draws from a Fisher result's covariance (None if singular)."""
    if fisher.covariance is None:
        return None
    return np.random.default_rng(seed).multivariate_normal(fisher.theta, fisher.covariance, size=n)


def use_modes(args) -> bool:
    """Whether ``sapphire forecast`` weighs modes: ``--modes`` / ``--no-modes`` if given, else on
    with ``--hmc`` for the emulator (the exact model only on request: ~1e6 solves)."""
    if args.modes is not None:
        return bool(args.modes)
    return bool(args.hmc) and args.forward == "emulator"


def modes_step(
    args,
    fm,
    *,
    refine: bool,
    chains_per_mode: int,
    warmup: int,
    draws: int,
    checkpoint: Path | None = None,
    label: str = "",
) -> dict:
    """Weigh the modes of ``fm``'s posterior (tempered SMC, ``--particles`` x ``--smc-runs``),
    find each mode's MAP and, if ``refine``, run NUTS in each mode (``refine_modes``).

    Returns:
        ``{"result": ModesResult, "maps": (points, -ln L), "refined": tuple[ModeChains] | None,
        "groups": ChainGroups | None, "coverage": dict | None, "smc_modes": int}``: ``groups``
        sorts all the NUTS chains into modes (``group_chains``), and SMC modes whose chains mix
        are merged into one (``merge_mixing_modes``; ``smc_modes``: the count before);
        ``coverage`` counts the particles with weight outside the emulator's training coverage
        (warned about).
    """
    from .forward import check_training_coverage
    from .hmc import CheckpointMismatch
    from .modes import mode_maps, refine_and_merge, weigh_modes

    try:
        result = weigh_modes(
            fm,
            num_particles=args.particles,
            num_runs=args.smc_runs,
            max_modes=args.max_modes,
            seed=args.seed,
            progress=not args.quiet,
        )
    except (ValueError, RuntimeError) as err:
        raise option_error(args, f"{label}tempered SMC: {err}") from None
    n_smc = result.n_modes
    coverage = check_training_coverage(fm, result.samples[result.weights > 0], f"{label}tempered SMC", "particles")
    maps = mode_maps(fm, result)
    refined = groups = None
    if refine:
        try:
            result, refined, groups, maps, merged = refine_and_merge(
                fm,
                result,
                maps,
                chains_per_mode=chains_per_mode,
                num_warmup=warmup,
                num_samples=draws,
                seed=args.seed,
                progress=not args.quiet,
                checkpoint=checkpoint,
                time_limit_s=args.time_limit,
            )
        except CheckpointMismatch as err:
            raise option_error(args, f"{err} (or pass --restart)" if args.command == "validate" else str(err)) from None
        if result.n_modes < n_smc:
            note(
                args,
                f"{label}the NUTS chains crossed between SMC modes {' + '.join(map(str, (m for m in merged if len(m) > 1)))}: "
                f"{n_smc} SMC modes are {result.n_modes} mode(s)",
            )
    return {
        "result": result,
        "maps": maps,
        "refined": refined,
        "groups": groups,
        "coverage": coverage,
        "smc_modes": n_smc,
    }


def mode_draws(modes: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(samples (N, n_free), weights (N,), labels (N,)) for the modes corner: each mode's NUTS
    draws weighted by the mode's SMC weight when refined, else the weighted SMC particles."""
    result, refined = modes["result"], modes["refined"]
    if refined is None:
        return result.samples, result.weights, result.labels
    parts = [r.samples.reshape(-1, r.samples.shape[-1]) for r in refined]
    weights = np.concatenate([np.full(len(p), m.weight / len(p)) for p, m in zip(parts, result.modes)])
    labels = np.concatenate([np.full(len(p), k) for k, p in enumerate(parts)])
    return np.concatenate(parts), weights, labels


def mode_convergence(refined, threshold: float = 1.01) -> list[int]:
    """Indices of the modes whose NUTS chains have max R-hat above ``threshold`` (not converged
    inside the mode; NaN R-hat, too few draws, is not judged)."""
    bad = []
    for k, r in enumerate(refined):
        finite = np.asarray(r.r_hat)[np.isfinite(r.r_hat)]
        if finite.size and finite.max() > threshold:
            bad.append(k)
    return bad
