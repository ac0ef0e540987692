"""What every ``sapphire`` subcommand shares: solver options, the model they build, theta parsing.

Each package's ``cli`` module (sapphire, training_sets, emulator, forecasts) registers its
subcommands through the ``sapphire.commands`` entry points (pyproject.toml) and uses these
helpers, so one option means one thing everywhere.  JSON output: :mod:`sapphire.jsonio`.
"""

from __future__ import annotations

import argparse

import numpy as np

from .model import Model
from .prior import Prior

__all__ = ["SOLVER_CHOICES", "add_solver_options", "model_from_options", "parse_theta"]

SOLVER_CHOICES = ("auto", "tsit5", "kvaerno3", "kvaerno5")


def add_solver_options(p: argparse.ArgumentParser) -> None:
    """Add ``--solver --rtol --atol --max-steps --logm-min --logm-max --quiet`` to ``p``."""
    p.add_argument("--solver", default="auto", choices=list(SOLVER_CHOICES))
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-6)
    p.add_argument("--max-steps", type=int, default=16384)
    p.add_argument("--logm-min", type=float, default=10.0)
    p.add_argument("--logm-max", type=float, default=12.5)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def model_from_options(args: argparse.Namespace) -> Model:
    """The ``sapphire.Model`` of the solver options (:func:`add_solver_options`); a bad value
    exits with one line naming it."""
    try:
        return Model(solver=args.solver, rtol=args.rtol, atol=args.atol, max_steps=args.max_steps)
    except ValueError as err:
        raise SystemExit(f"solver options: {err}")


def parse_theta(text: str | None, prior: Prior, option: str = "--theta") -> np.ndarray:
    """The comma-separated parameter vector ``text`` (None: the prior centre), checked against
    the prior box; a bad value exits with one line naming ``option``."""
    if text is None:
        return prior.centre
    try:
        values = np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise SystemExit(f"{option} must be {prior.ndim} comma-separated numbers ({', '.join(prior.names)}); got {text!r}")
    try:
        return prior.validate(values)
    except ValueError as err:
        raise SystemExit(f"{option}: {err}")
