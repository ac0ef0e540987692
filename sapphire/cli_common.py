"""What every ``sapphire`` subcommand shares: the parser class, option validators, solver
options, the model they build, theta parsing, and the error boundary of a command.

Each package's ``cli`` module (sapphire, training_sets, emulator, forecasts) registers its
subcommands through the ``sapphire.commands`` entry points (pyproject.toml) and uses these
helpers, so one option means one thing everywhere.  JSON output: :mod:`sapphire.jsonio`.

Bad input ends a command with exit status 2 and ONE line on stderr that names the option, the
value and what is allowed, before anything is computed or written:

* single values are checked by the argparse ``type=`` validators below (:func:`positive_int`,
  :func:`positive_float`, :func:`existing_file`, :func:`output_file`, ...);
* ranges that involve two options (``--logm-min < --logm-max``) by :func:`check_option_ranges`;
* what only the library can judge (a design table's columns, a store's settings) raises
  ``ValueError`` there, and :func:`run_command` turns it into ``sapphire CMD: message``.
  ``SAPPHIRE_DEBUG=1`` re-raises instead, with the traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .model import Model
from .prior import Prior

__all__ = [
    "SOLVER_CHOICES",
    "ArgumentParser",
    "OptionError",
    "add_solver_options",
    "check_option_ranges",
    "device_count",
    "existing_file",
    "existing_path",
    "fraction",
    "int_list",
    "join_negative_values",
    "model_from_options",
    "nonnegative_float",
    "nonnegative_int",
    "output_dir",
    "output_file",
    "parse_theta",
    "positive_float",
    "positive_int",
    "run_command",
]

SOLVER_CHOICES = ("auto", "tsit5", "kvaerno3", "kvaerno5")

#: Exit status of a command refused for bad input (argparse's own convention).
USAGE_EXIT = 2


# ------------------------------------------------------------------------------------------------
# One-line errors
# ------------------------------------------------------------------------------------------------
class OptionError(SystemExit):
    """A refused command: exit status 2; ``str(err)`` is the one line printed on stderr."""

    def __init__(self, message: str):
        super().__init__(message)
        self.code = USAGE_EXIT


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: raises :class:`OptionError` ``sapphire CMD: argument --x:
    ... (see sapphire CMD --help)`` (exit status 2, no usage block; ``sapphire.cli.main``
    prints it)."""

    def error(self, message: str):
        raise OptionError(f"{self.prog}: {message} (see {self.prog} --help)")


#: A token that is a negative number or a comma-separated list starting with one.
_NEGATIVE_VALUE = re.compile(r"^-(\d|\.\d)[\d.eE+\-,\s]*$")


def join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--theta -0.5,-1.5,...`` -> ``--theta=-0.5,-1.5,...``: argparse takes a value that
    starts with '-' (and is not a plain number) for an option, so every ``--option`` followed
    by a negative number or a list that starts with one is joined to it.  No sapphire option
    takes a negative positional argument, so nothing else changes meaning."""
    argv = list(argv)
    out, i = [], 0
    while i < len(argv):
        token = argv[i]
        if (
            token.startswith("--")
            and "=" not in token
            and token != "--"
            and i + 1 < len(argv)
            and _NEGATIVE_VALUE.match(argv[i + 1])
        ):
            out.append(f"{token}={argv[i + 1]}")
            i += 2
        else:
            out.append(token)
            i += 1
    return out


def run_command(args: argparse.Namespace) -> int:
    """Call ``args.func(args)``: a ``ValueError`` (or a file error) raised by library code, or a
    ``SystemExit`` with a message, becomes an :class:`OptionError` ``sapphire CMD: message``
    (one line, exit status 2).  ``SAPPHIRE_DEBUG=1`` lets the exception through (with its
    traceback)."""
    prefix = f"sapphire {args.command}: "
    try:
        return args.func(args)
    except SystemExit as err:
        if isinstance(err, OptionError):
            message = str(err)
        elif isinstance(err.code, int) or err.code is None:
            raise
        else:
            message = str(err.code)
    except (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
    ) as err:
        if os.environ.get("SAPPHIRE_DEBUG"):
            raise
        message = str(err) or type(err).__name__
    line = " ".join(message.split())  # one line, whatever the library wrote
    raise OptionError(line if line.startswith(prefix) else prefix + line) from None


# ------------------------------------------------------------------------------------------------
# argparse type= validators: each names what is allowed and the value given
# ------------------------------------------------------------------------------------------------
def _number(text: str, kind, what: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (counts: halos, points, batch sizes, chains)."""
    value = _number(text, int, "an integer >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (seeds, optional counts)."""
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (tolerances, scales, seconds)."""
    value = _number(text, float, "a finite number > 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number >= 0 (weights)."""
    value = _number(text, float, "a finite number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1] (probabilities, AUC)."""
    value = _number(text, float, "a number in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return value


def int_list(text: str) -> tuple[int, ...]:
    """Comma-separated integers >= 1, e.g. ``128,128,128`` (layer widths)."""
    items = [t.strip() for t in text.split(",")]
    try:
        values = tuple(int(t) for t in items)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated integers >= 1 (e.g. 128,128,128), got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers >= 1 (e.g. 128,128,128), got {text!r}")
    return values


def device_count(text: str) -> str | int:
    """``all`` or a number of devices >= 1."""
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 'all' or a number of devices >= 1, got {text!r}")
    return value


def existing_file(text: str) -> str:
    """A path to an existing file."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}" if not path.exists() else f"not a file: {text!r}")
    return text


def existing_path(text: str) -> str:
    """A path that exists (a store or an artifact: both are directories)."""
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"no such file or directory: {text!r}")
    return text


def _writable_dir(path: Path, what: str, text: str) -> None:
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{what} {str(path)!r} of {text!r} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{what} {str(path)!r} of {text!r} is not writable")


def output_file(text: str) -> str:
    """A file to write, checked before any work: its directory must exist and be writable (it
    is not created: a mistyped directory is an error, as in a shell redirection), and the path
    must not be a directory.  The file is written at exactly this path."""
    path = Path(text)
    if not text or path.is_dir():
        raise argparse.ArgumentTypeError(f"must name a file, got the directory {text!r}")
    parent = path.parent
    if not parent.exists():
        raise argparse.ArgumentTypeError(f"the directory {str(parent)!r} of {text!r} does not exist (create it first)")
    _writable_dir(parent, "the directory", text)
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not writable")
    return text


def output_dir(text: str) -> str:
    """A directory to write into, checked before any work: an existing writable directory, or
    a new one whose nearest existing parent is a writable directory (it is created, with its
    parents, when the command writes)."""
    path = Path(text)
    if path.exists():
        _writable_dir(path, "the output", text)
        return text
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    _writable_dir(parent, "the directory", text)
    return text


# ------------------------------------------------------------------------------------------------
# Shared options
# ------------------------------------------------------------------------------------------------
def add_solver_options(p: argparse.ArgumentParser) -> None:
    """Add ``--solver --rtol --atol --max-steps --logm-min --logm-max --quiet`` to ``p``."""
    p.add_argument(
        "--solver",
        default="auto",
        choices=list(SOLVER_CHOICES),
        help="ODE solver: auto (explicit, implicit where stiff; default) or one for every halo",
    )
    p.add_argument(
        "--rtol", type=positive_float, default=1e-5, help="relative tolerance of the solve, in dex (default 1e-5)"
    )
    p.add_argument("--atol", type=positive_float, default=1e-6, help="absolute tolerance of the solve (default 1e-6)")
    p.add_argument(
        "--max-steps",
        type=positive_int,
        default=16384,
        help="solver steps per halo before it counts as failed (default 16384)",
    )
    p.add_argument(
        "--logm-min", type=float, default=10.0, help="lowest log10 Mh(z=0) of the diffmah halos (default 10)"
    )
    p.add_argument(
        "--logm-max", type=float, default=12.5, help="highest log10 Mh(z=0) of the diffmah halos (default 12.5)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def check_option_ranges(args: argparse.Namespace) -> None:
    """The checks that involve two options (one place for all subcommands): ``--logm-min``
    below ``--logm-max``; ``--fisher-at truth`` only with ``--mock-theta``.  Exits 2 with one
    line (:class:`OptionError`)."""
    lo, hi = getattr(args, "logm_min", None), getattr(args, "logm_max", None)
    if lo is not None and hi is not None and not lo < hi:
        raise OptionError(f"sapphire {args.command}: --logm-min must be below --logm-max, got {lo} and {hi}")
    if getattr(args, "fisher_at", None) == "truth" and getattr(args, "mock_theta", None) is None:
        raise OptionError(f"sapphire {args.command}: --fisher-at truth needs --mock-theta (the truth to expand at)")


def model_from_options(args: argparse.Namespace) -> Model:
    """The ``sapphire.Model`` of the solver options (:func:`add_solver_options`); a bad value
    exits with one line naming it."""
    try:
        return Model(solver=args.solver, rtol=args.rtol, atol=args.atol, max_steps=args.max_steps)
    except ValueError as err:
        raise OptionError(f"solver options: {err}") from None


def parse_theta(text: str | None, prior: Prior, option: str = "--theta") -> np.ndarray:
    """The comma-separated parameter vector ``text`` (None: the prior centre), checked against
    the prior box; a bad value exits with one line naming ``option``."""
    if text is None:
        return prior.centre
    try:
        values = np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise OptionError(
            f"{option} must be {prior.ndim} comma-separated numbers ({', '.join(prior.names)}); got {text!r}"
        ) from None
    try:
        return prior.validate(values)
    except ValueError as err:
        raise OptionError(f"{option}: {err}") from None
