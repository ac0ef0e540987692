"""The forecast problem the command-line options describe: data (or a mock), exact model,
emulator, free and fixed parameters, relations and error scaling; and the forward models built
from it.  Used by ``sapphire forecast``, ``validate`` and ``recover`` (forecasts/cli.py).
Option reference: forecasts/cli.py's docstring.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from sapphire.cli_common import OptionError, model_from_options

RELATIONS = ("smhm", "gas_ratio", "mzr")


# ------------------------------------------------------------------------------------------------
# Loaders (module level so that tests can replace them)
# ------------------------------------------------------------------------------------------------
def load_emulator(path, observations=None):
    """``emulator.SobolevEmulator.load(path, observations)``."""
    from emulator import SobolevEmulator

    return SobolevEmulator.load(path, observations=observations)


def exact_forward(model, halos, obs, **kwargs):
    """``forecasts.ExactForward(model, halos, obs, **kwargs)``."""
    from .forward import ExactForward

    return ExactForward(model, halos, obs, **kwargs)


def emulator_forward(emu, obs, include_emulator_error: bool = True, **kwargs):
    """``forecasts.EmulatorForward(emu, obs, include_emulator_error, **kwargs)``."""
    from .forward import EmulatorForward

    return EmulatorForward(emu, obs, include_emulator_error, **kwargs)


# ------------------------------------------------------------------------------------------------
# Option parsing
# ------------------------------------------------------------------------------------------------
def option_error(args, message: str) -> OptionError:
    """A one-line error naming the subcommand, ``sapphire CMD: message`` (exit status 2)."""
    return OptionError(f"sapphire {args.command}: {message}")


def split_list(text: str) -> list[str]:
    """The non-empty, stripped items of a comma-separated option."""
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_names(args, text: str | None, choices, option: str) -> tuple[str, ...] | None:
    """Names from a comma-separated option, each one of ``choices``, none twice (None if not given)."""
    if text is None:
        return None
    names = split_list(text)
    if not names:
        raise option_error(args, f"{option}: no name given; choose from {', '.join(choices)}")
    for name in names:
        if name not in choices:
            raise option_error(args, f"{option}: unknown name {name!r}; choose from {', '.join(choices)}")
    if len(set(names)) != len(names):
        raise option_error(args, f"{option}: a name is given twice in {text!r}")
    return tuple(names)


def parse_vector(args, text: str | None, option: str, prior=None) -> np.ndarray | None:
    """8 comma-separated numbers in ``sapphire.PARAMETER_NAMES`` order (inside ``prior`` if given)."""
    import sapphire

    if text is None:
        return None
    names = sapphire.PARAMETER_NAMES
    try:
        values = np.array([float(v) for v in split_list(text)], dtype=np.float64)
    except ValueError:
        raise option_error(
            args, f"{option} must be {len(names)} comma-separated numbers ({', '.join(names)}); got {text!r}"
        ) from None
    if values.shape != (len(names),):
        raise option_error(
            args, f"{option} needs {len(names)} values ({', '.join(names)}); got {values.size} in {text!r}"
        )
    if prior is not None:
        try:
            prior.validate(values)
        except ValueError as err:
            raise option_error(args, f"{option}: {err}") from None
    return values


def parse_sigma_scale(args, text: str):
    """``--sigma-scale``: a positive number, or relation=number pairs (a dict)."""
    try:
        if "=" not in text:
            value = float(text)
            if not (np.isfinite(value) and value > 0):
                raise ValueError
            return value
        scale = {}
        for item in split_list(text):
            name, _, value = item.partition("=")
            name = name.strip()
            if name not in RELATIONS:
                raise option_error(
                    args, f"--sigma-scale: unknown relation {name!r}; choose from {', '.join(RELATIONS)}"
                )
            scale[name] = float(value)
            if not (np.isfinite(scale[name]) and scale[name] > 0):
                raise ValueError
        return scale
    except ValueError:
        raise option_error(
            args, f"--sigma-scale must be a positive number or relation=number pairs (smhm=0.5,mzr=1); got {text!r}"
        ) from None


def parse_relation_sets(args, text: str) -> list[tuple[str, ...]] | None:
    """None for 'all', else the sets separated by ';' (names checked; presence in the data later)."""
    if text.strip() == "all":
        return None
    sets = [parse_names(args, part, RELATIONS, "--relation-sets") for part in text.split(";") if part.strip()]
    if not sets:
        raise option_error(args, f"--relation-sets: no relation set in {text!r} (e.g. 'all' or 'smhm,mzr;smhm')")
    return sets


def available_relation_sets(args, sets, available: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The relation sets to run, each checked against the relations ``available`` in the data."""
    from .campaigns import ALL_RELATION_SETS

    if sets is None:
        return [s for s in ALL_RELATION_SETS if set(s) <= set(available)]
    for s in sets:
        missing = [r for r in s if r not in available]
        if missing:
            raise option_error(
                args, f"--relation-sets: relation {missing[0]!r} is not in the observations ({', '.join(available)})"
            )
    return sets


# ------------------------------------------------------------------------------------------------
# The problem: data, exact model, emulator, free/fixed
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Problem:
    """What the options describe (before any forward model is built)."""

    obs: Any  # sapphire.Observations compared with (all relations; the mock if --mock-theta)
    model: Any = None  # sapphire.Model or None
    halos: Any = None  # sapphire.HaloPopulation or None
    emu: Any = None
    truth: np.ndarray | None = None  # (8,) the mock's theta
    free: tuple[str, ...] | None = None
    fixed: np.ndarray | None = None  # (8,) or None (prior centre)
    relations: tuple[str, ...] | None = None
    sigma_scale: Any = 1.0
    info: dict = dataclasses.field(default_factory=dict)

    def free_truth(self, fm) -> np.ndarray | None:
        return None if self.truth is None else self.truth[list(fm.free_index)]


def load_observations(args):
    """``--observations FILE.json`` (``Observations.to_json()`` output), or ``Observations.default()``."""
    import sapphire

    if args.observations is None:
        return sapphire.Observations.default()
    path = Path(args.observations)
    if not path.is_file():
        raise option_error(args, f"--observations: no file {str(path)!r}")
    try:
        return sapphire.Observations.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise option_error(
            args, f"--observations {str(path)!r}: not an Observations JSON ({type(err).__name__}: {err})"
        ) from None


def exact_model_from_options(args, why: str, mock_text: str | None = None):
    """(model, halos, info, mock theta or None) from --store or --halos; --mock-theta is checked
    against the model's prior before the halos are made."""
    import sapphire

    store, n_halos = getattr(args, "store", None), getattr(args, "halos", None)
    if store is not None and n_halos is not None:
        raise option_error(args, "give --halos or --store, not both")
    if store is None and n_halos is None:
        raise option_error(args, f"{why} needs the exact model: give --halos N (diffmah halos) or --store TS.zarr")
    if store is not None:
        import training_sets
        from training_sets.generate import model_from_attrs

        if not Path(store).exists():
            raise option_error(args, f"--store: no training-set store at {store!r}")
        try:
            ts = training_sets.open_training_set(store)
            model = model_from_attrs(ts.attrs)
            truth = parse_vector(args, mock_text, "--mock-theta", model.prior)
            halos = ts.halos()
        except (ValueError, KeyError, OSError) as err:
            raise option_error(args, f"--store {store!r}: {err}") from None
        return (
            model,
            halos,
            {
                "source": "store",
                "store": str(store),
                "store_fingerprint": ts.fingerprint,
                "n_halos": int(halos.n_halos),
                "solver": model.settings.to_dict(),
            },
            truth,
        )
    if n_halos < 2:
        raise option_error(args, f"--halos must be >= 2, got {n_halos}")
    model = model_from_options(args)
    truth = parse_vector(args, mock_text, "--mock-theta", model.prior)
    try:
        halos = sapphire.HaloPopulation.from_diffmah(
            n_halos, logm_min=args.logm_min, logm_max=args.logm_max, seed=args.halo_seed
        )
    except ValueError as err:
        raise option_error(args, f"--halos: {err}") from None
    return (
        model,
        halos,
        {
            "source": "diffmah",
            "n_halos": int(n_halos),
            "halo_seed": args.halo_seed,
            "logm": [args.logm_min, args.logm_max],
            "solver": model.settings.to_dict(),
        },
        truth,
    )


def emulator_from_options(args):
    """The ``SobolevEmulator`` at ``--emulator`` (one-line error if missing or unreadable)."""
    if args.emulator is None:
        raise option_error(args, "the emulator forward model needs --emulator PATH (a saved SobolevEmulator)")
    if not Path(args.emulator).exists():
        raise option_error(args, f"--emulator: no emulator at {args.emulator!r}")
    try:
        return load_emulator(args.emulator, None)
    except ValueError as err:
        raise option_error(args, f"--emulator: {err}") from None


def build_problem(args, *, need_exact: bool, need_emulator: bool, allow_mock: bool = True) -> Problem:
    """Parse the shared options into a :class:`Problem` (making the mock if asked)."""
    import sapphire

    from . import campaigns

    free = parse_names(args, args.free, sapphire.PARAMETER_NAMES, "--free")
    relations = parse_names(args, getattr(args, "relations", None), RELATIONS, "--relations")
    sigma_scale = parse_sigma_scale(args, args.sigma_scale)
    fixed = parse_vector(args, args.fixed, "--fixed")
    mock_text = getattr(args, "mock_theta", None) if allow_mock else None
    obs = load_observations(args)
    if relations is not None:
        missing = [r for r in relations if r not in obs.names]
        if missing:
            raise option_error(args, f"--relations: {missing[0]!r} is not in the observations ({', '.join(obs.names)})")
    problem = Problem(obs=obs, free=free, fixed=fixed, relations=relations, sigma_scale=sigma_scale)
    problem.info["observations"] = {
        "source": args.observations or "Observations.default()",
        "fingerprint": obs.fingerprint(),
    }
    if need_emulator:  # before the exact model: its errors are cheaper to find
        problem.emu = emulator_from_options(args)
        problem.info["emulator"] = {"path": str(args.emulator), "repr": repr(problem.emu)}
    truth = None
    if need_exact or mock_text is not None:
        why = (
            "--mock-theta"
            if not need_exact
            else ("--forward exact" if args.command == "forecast" else f"sapphire {args.command}")
        )
        problem.model, problem.halos, problem.info["exact"], truth = exact_model_from_options(args, why, mock_text)
    store_fp = problem.info.get("exact", {}).get("store_fingerprint")
    emu_fp = getattr(problem.emu, "store_fingerprint", None)
    if store_fp is not None and emu_fp is not None and store_fp != emu_fp:
        note(args, f"the emulator was trained on store {emu_fp}, not on --store {args.store} ({store_fp})")
    if truth is not None:
        try:
            problem.obs = campaigns.mock_observations(problem.model, problem.halos, obs, truth)
        except ValueError as err:
            raise option_error(args, f"--mock-theta: {err}") from None
        problem.truth = truth
        if problem.fixed is None:
            problem.fixed = truth
        problem.info["mock_theta"] = truth.tolist()
    return problem


def make_forward(args, problem: Problem, kind: str):
    """The forward model of ``kind`` ("exact" or "emulator") for the problem."""
    common = dict(free=problem.free, fixed=problem.fixed, relations=problem.relations, sigma_scale=problem.sigma_scale)
    try:
        if kind == "exact":
            return exact_forward(problem.model, problem.halos, problem.obs, **common)
        return emulator_forward(problem.emu, problem.obs, not args.no_emulator_error, **common)
    except ValueError as err:
        raise option_error(args, f"{kind} forward model: {err}") from None


def note(args, text: str) -> None:
    """Print a one-line note for the user."""
    print(f"note: {text}")
