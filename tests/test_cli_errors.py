"""Fail-safe command line (issue 18, cases 4-7 and 9): every bad option or input ends the
command with exit status 2 and ONE line on stderr naming the option, the value and what is
allowed, before anything is computed or written.

Each case runs in-process through ``sapphire.cli.main``; none of them reaches a solve (the
commands are refused while parsing or while reading their inputs), so the table costs no JAX
compilation.  Stores are written with synthetic rows through the real layout
(``training_sets.store.create_store``), as in tests/test_emulator.py.
"""

from __future__ import annotations

import argparse
import types

import numpy as np
import pytest

import sapphire
import sapphire.cli
from sapphire.cli import build_parser, main
from sapphire.cli_common import OptionError, join_negative_values

PRIOR = sapphire.DEFAULT_PRIOR
NEGATIVE = ",".join(f"{v:g}" for v in [-0.5, *PRIOR.centre[1:]])  # inside the prior box, 7 of 8 negative
PRIOR.validate(np.array([float(v) for v in NEGATIVE.split(",")]))


def refused(argv, capsys) -> str:
    """Run ``sapphire ARGV``; assert exit status 2 and one line on stderr without a traceback;
    return that line."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert info.value.code == 2, (argv, info.value.code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, (argv, err)
    assert "Traceback" not in err
    assert lines[0].startswith(f"sapphire {argv[0]}: "), lines[0]
    return lines[0]


# ------------------------------------------------------------------------------ synthetic stores
def synthetic_store(path, n_points: int, halo_seed: int = 0, valid: bool = True):
    """A store with ``n_points`` rows of smooth synthetic summaries (no solve), all done."""
    import zarr

    from training_sets.store import create_store

    obs = sapphire.Observations.default().select("mzr")
    theta = PRIOR.from_unit(np.random.default_rng(1).uniform(size=(n_points, 8)))
    halos = sapphire.HaloPopulation.from_diffmah(2, seed=halo_seed)
    create_store(path, theta, sapphire.Model(), halos, obs, design={"kind": "test"}, chunk=4)
    root = zarr.open_group(str(path), mode="r+")
    u = PRIOR.to_unit(theta)
    x = np.linspace(0, 1, obs.n_summary)
    root["summaries"][:] = 8.5 + 0.3 * u[:, :1] * (1 + x[None, :]) + 0.1 * u[:, 1:2]
    root["summary_stderr"][:] = 0.02
    root["summary_support"][:] = 50.0
    jac = np.zeros((n_points, obs.n_summary, 8))
    jac[:, :, 0] = 0.3 * (1 + x[None, :]) / PRIOR.width[0]
    jac[:, :, 1] = 0.1 / PRIOR.width[1]
    root["summary_jacobian"][:] = jac
    root["n_failed"][:] = 0
    root["done"][:] = valid
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A 2-point store, a 16-point store (halo seed 0), the same design on other halos (seed 1),
    and an emulator trained on the 16-point store for 2 epochs."""
    from emulator import train_emulator

    root = tmp_path_factory.mktemp("cli_errors")
    small = synthetic_store(root / "small.zarr", 2)
    train = synthetic_store(root / "train.zarr", 16)
    other = synthetic_store(root / "other.zarr", 16, halo_seed=1)
    emu = train_emulator(str(train), ensemble=1, epochs=2, patience=2, hidden=(8,), progress=False)
    emu_path = emu.save(root / "train.emu")
    table = root / "missing_columns.csv"
    table.write_text("A_etaM,B_etaM\n0,0\n")
    outside = root / "outside.csv"
    outside.write_text(",".join(PRIOR.names) + "\n" + ",".join(["99"] + [f"{v:g}" for v in PRIOR.centre[1:]]) + "\n")
    a_file = root / "a_file.txt"
    a_file.write_text("x")
    return types.SimpleNamespace(
        root=root, small=small, train=train, other=other, emu=emu_path, table=table, outside=outside, a_file=a_file
    )


# ----------------------------------------------------------------------- case 4 (and 5, 6, 7, 9)
# (argv, substrings of the one line: the option and the value); {name} is filled from ``stores``
CASES = [
    # evolve
    (["evolve", "--halos", "0"], ["--halos", "'0'", ">= 1"]),
    (["evolve", "--halos", "-3"], ["--halos", "'-3'", ">= 1"]),
    (["evolve", "--batch", "0"], ["--batch", "'0'"]),
    (["evolve", "--batch", "-1"], ["--batch", "'-1'"]),
    (["evolve", "--rtol", "-1"], ["--rtol", "'-1'", "> 0"]),
    (["evolve", "--atol", "0"], ["--atol", "'0'"]),
    (["evolve", "--max-steps", "0"], ["--max-steps", "'0'"]),
    (["evolve", "--logm-min", "12", "--logm-max", "10"], ["--logm-min must be below --logm-max", "12.0", "10.0"]),
    (["evolve", "--halos", "abc"], ["--halos", "'abc'"]),
    (["evolve", "--theta", "-0.5,-1.5"], ["--theta", "(8,)"]),  # case 6: parsed, then refused for its length
    (
        ["evolve", "--theta", "9" + NEGATIVE[NEGATIVE.index(",") :]],
        ["--theta", "A_etaM = 9.0", "outside the prior box"],
    ),
    (["evolve", "--out", "{root}/no_such_dir/x.npz"], ["--out", "no_such_dir", "does not exist"]),  # case 5
    (["evolve", "--out", "{root}"], ["--out", "must name a file"]),
    (["evolve", "--out", "{a_file}/x.npz"], ["--out", "not a directory"]),
    (["evolve", "--solver", "euler"], ["--solver", "'euler'", "auto"]),
    # sensitivity, ppc
    (["ppc", "--logm-min", "12", "--logm-max", "10"], ["--logm-min must be below --logm-max"]),
    (["ppc", "--prior-draws", "-2"], ["--prior-draws", "'-2'"]),
    (["sensitivity", "--out", "{a_file}"], ["--out", "not a directory"]),
    # generate
    (["generate", "{root}/g.zarr", "--points", "4", "--halos", "0"], ["--halos", "'0'"]),
    (["generate", "{root}/g.zarr", "--points", "4", "--rtol", "-1"], ["--rtol", "'-1'"]),
    (["generate", "{root}/g.zarr", "--points", "0"], ["--points", "'0'"]),
    (["generate", "{root}/g.zarr"], ["--points N", "--design"]),
    (["generate", "{root}/g.zarr", "--design", "{root}/nofile.csv"], ["--design", "nofile.csv", "no such file"]),
    (["generate", "{root}/g.zarr", "--design", "{table}"], ["--design", "missing_columns.csv", "missing", "A_etaE"]),
    (["generate", "{root}/g.zarr", "--design", "{outside}"], ["--design", "outside.csv", "A_etaM = 99.0", "prior box"]),
    (["generate", "{root}/missing.zarr", "--extend", "4"], ["--extend", "missing.zarr", "no store"]),
    (["generate", "{root}/g.zarr", "--extend", "-4"], ["--extend", "'-4'"]),
    (["generate", "{root}/g.zarr", "--points", "4", "--devices", "two"], ["--devices", "'two'", "'all'"]),
    (["generate", "{root}/g.zarr", "--points", "4", "--chunk", "0"], ["--chunk", "'0'"]),
    (["generate", "{train}", "--points", "4"], ["train.zarr already exists", "--resume"]),
    # inspect
    (["inspect", "{root}/nostore.zarr"], ["store", "nostore.zarr", "no such file"]),
    (
        ["inspect", "{train}", "--figure", "{root}/no_such_dir/design.png"],
        ["--figure", "no_such_dir", "does not exist"],
    ),
    # train (case 7)
    (["train", "{train}", "{root}/x.emu", "--hidden", "8,a"], ["--hidden", "'8,a'", "integers"]),
    (["train", "{train}", "{root}/x.emu", "--ensemble", "0"], ["--ensemble", "'0'"]),
    (["train", "{train}", "{root}/x.emu", "--gradient-weight", "-1"], ["--gradient-weight", "'-1'"]),
    (["train", "{small}", "{root}/x.emu"], ["2 valid design points", "needs at least 11"]),
    (["train", "{train}", "{emu}"], ["train.emu", "exists", "--force"]),
    (["train", "{root}/nostore.zarr", "{root}/x.emu"], ["store", "nostore.zarr"]),
    # emulator-report (case 7)
    (["emulator-report", "{emu}", "{other}"], ["halos", "fingerprint", "--allow-other-store"]),
    (["emulator-report", "{root}/none.emu", "{train}"], ["emulator", "none.emu"]),
    # forecast, validate, recover, quickstart
    (["forecast", "--chains", "0"], ["--chains", "'0'"]),
    (["forecast", "--halos", "-4"], ["--halos", "'-4'"]),
    (["forecast", "--hmc-draws", "0"], ["--hmc-draws", "'0'"]),
    (["forecast", "--time-limit", "-5"], ["--time-limit", "'-5'"]),
    (["forecast", "--out", "{a_file}"], ["--out", "not a directory"]),
    (["forecast", "--fixed", "1,2,x,4,5,6,7,8"], ["--fixed", "'1,2,x,4,5,6,7,8'"]),
    (["validate", "--max-auc", "1.5"], ["--max-auc", "'1.5'", "[0, 1]"]),
    (["validate", "--fisher-at", "truth", "--out", "{root}/v"], ["--fisher-at truth needs --mock-theta"]),
    (["recover", "--truths", "0"], ["--truths", "0"]),
    (["recover", "--starts", "0"], ["--starts", "'0'"]),
    (["recover", "--failure-sigma", "-3"], ["--failure-sigma", "'-3'"]),
    (["validate", "--exact-draws", "0"], ["--exact-hmc-draws", "'0'"]),
    (["quickstart", "--scale", "huge"], ["--scale", "'huge'"]),
]


@pytest.mark.parametrize("argv, expected", CASES, ids=[" ".join(a[:3]) for a, _ in CASES])
def test_bad_option_exits_2_with_one_line(argv, expected, stores, capsys):
    paths = {k: str(v) for k, v in vars(stores).items()}
    line = refused([a.format(**paths) for a in argv], capsys)
    for text in expected:
        assert text in line, (text, line)


def test_refused_commands_write_nothing(stores, capsys):
    """Case 3/5 (CLI part): a refused command leaves the file system as it was."""
    before = sorted(p.relative_to(stores.root) for p in stores.root.rglob("*"))
    stamp = (stores.emu / "metadata.json").stat().st_mtime_ns if (stores.emu / "metadata.json").exists() else None
    refused(["train", stores.small, stores.emu, "--force"], capsys)  # too few points: the old artifact stays
    refused(["generate", stores.root / "new.zarr", "--design", stores.outside], capsys)
    refused(["evolve", "--halos", "0", "--out", stores.root / "e.npz"], capsys)
    refused(["forecast", "--fisher-at", "truth", "--out", stores.root / "f"], capsys)  # made its --out before
    assert sorted(p.relative_to(stores.root) for p in stores.root.rglob("*")) == before
    if stamp is not None:
        assert (stores.emu / "metadata.json").stat().st_mtime_ns == stamp


def test_library_value_errors_become_one_line(monkeypatch, capsys):
    """A ValueError raised deep in library code is reported at the command boundary (no traceback);
    SAPPHIRE_DEBUG=1 lets it through."""

    def deep(args):
        raise ValueError("something deep\nover two lines")

    parser = build_parser()
    _subcommands(parser)["evolve"].set_defaults(func=deep)
    monkeypatch.setattr(sapphire.cli, "build_parser", lambda: parser)
    assert refused(["evolve"], capsys) == "sapphire evolve: something deep over two lines"
    monkeypatch.setenv("SAPPHIRE_DEBUG", "1")
    with pytest.raises(ValueError, match="something deep"):
        main(["evolve"])


# ---------------------------------------------------------------------------------------- case 6
@pytest.mark.parametrize("option", ["--theta", "--mock-theta", "--fixed"])
def test_negative_vectors_are_accepted_as_written(option):
    command = "evolve" if option == "--theta" else "forecast"
    dest = option[2:].replace("-", "_")
    spaced = build_parser().parse_args(join_negative_values([command, option, NEGATIVE]))
    joined = build_parser().parse_args(join_negative_values([command, f"{option}={NEGATIVE}"]))
    assert getattr(spaced, dest) == getattr(joined, dest) == NEGATIVE
    with pytest.raises(OptionError, match="expected one argument"):  # what argparse alone does
        build_parser().parse_args([command, option, NEGATIVE])


def test_join_negative_values_leaves_everything_else_alone():
    argv = ["evolve", "--halos", "4", "--theta=-1,2", "--quiet", "--logm-min", "-1.5", "--", "-x"]
    assert join_negative_values(argv) == [
        "evolve",
        "--halos",
        "4",
        "--theta=-1,2",
        "--quiet",
        "--logm-min=-1.5",
        "--",
        "-x",
    ]
    assert join_negative_values(["forecast", "--sigma-scale", "-1e-3"]) == ["forecast", "--sigma-scale=-1e-3"]


# ---------------------------------------------------------------------------------------- case 5
def test_evolve_writes_exactly_the_out_path(tmp_path, monkeypatch, capsys):
    """``--out noext`` writes ``noext`` (not ``noext.npz``) and says so; the engine is replaced by
    a stand-in (this is about the file, not the solve)."""
    n = 2  # the stores' halo count: no new diffmah compilation

    class FakeModel:
        config = settings = types.SimpleNamespace(to_dict=lambda: {})

        def evolve(self, theta, halos):
            keys = ("log_smhm", "log_gas_ratio", "oxygen_abundance", "baryon_fraction", "sfr")
            return types.SimpleNamespace(
                log_state=np.zeros((halos.n_halos, 7)),
                log_mhalo=np.linspace(10, 12, halos.n_halos),
                success=np.ones(halos.n_halos, bool),
                num_steps=np.ones(halos.n_halos, int),
                implicit=np.zeros(halos.n_halos, bool),
                diagnostics={k: np.ones(halos.n_halos) for k in keys},
            )

    monkeypatch.setattr(sapphire.cli, "model_from_options", lambda args: FakeModel())
    out = tmp_path / "noext"
    assert main(["evolve", "--halos", str(n), "--out", str(out), "--quiet"]) == 0
    assert f"wrote {out}\n" in capsys.readouterr().out
    assert out.is_file() and not (tmp_path / "noext.npz").exists()
    assert np.load(out)["log_state"].shape == (n, 7)


# ---------------------------------------------------------------------------------------- case 7
def test_minimum_valid_points_leaves_a_spanning_training_split():
    from emulator.cli import TRAIN_SPLIT, minimum_valid_points
    from emulator.data import split_design

    n = minimum_valid_points(8)
    parts = split_design(np.arange(n), TRAIN_SPLIT)
    assert parts["train"].size >= 9 and parts["val"].size >= 1 and parts["test"].size >= 1
    fewer = split_design(np.arange(n - 1), TRAIN_SPLIT)
    assert fewer["train"].size < 9 or fewer["val"].size == 0 or fewer["test"].size == 0
    assert n == 11


def test_emulator_report_prints_figures_not_braces(stores, tmp_path, capsys):
    """On its training store: the held-out split, a table of the headline figures (no ``{}``),
    no advice naming options that do not exist."""
    assert main(["emulator-report", str(stores.emu), str(stores.train), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("test points: ") and "held-out test split" in first
    assert "{" not in out and "test_indices" not in out
    assert "Jacobian relative error: median" in out


def test_emulator_report_on_other_halos_only_when_allowed(stores, tmp_path, capsys):
    from emulator import SobolevEmulator
    from emulator.cli import store_differences
    from training_sets import open_training_set

    emu = SobolevEmulator.load(stores.emu)
    assert store_differences(emu, open_training_set(stores.train)) == {"refuse": [], "note": []}
    diff = store_differences(emu, open_training_set(stores.other))
    assert len(diff["refuse"]) == 1 and diff["refuse"][0].startswith("halos:")
    assert (
        main(
            [
                "emulator-report",
                str(stores.emu),
                str(stores.other),
                "--allow-other-store",
                "--quiet",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("warning: test store differs from the training store: halos:")
    assert "every valid point of a store the emulator was not trained on" in out


# ---------------------------------------------------------------------------------------- case 9
def _subcommands(parser=None):
    parser = parser or build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def _options(p):
    return {s: a for a in p._actions for s in a.option_strings}


def test_every_option_has_help_text():
    missing = [
        (name, a.dest)
        for name, p in _subcommands().items()
        for a in p._actions
        if not isinstance(a, argparse._HelpAction) and not (a.help and a.help.strip())
    ]
    assert missing == []


def test_one_vocabulary():
    """The same option means the same thing in every subcommand that has it."""
    commands = _subcommands()
    draws = {name: _options(p)["--draws"].option_strings for name, p in commands.items() if "--draws" in _options(p)}
    assert draws == {
        "sensitivity": ["--prior-draws", "--draws"],
        "ppc": ["--prior-draws", "--draws"],
        "forecast": ["--hmc-draws", "--draws"],
        "validate": ["--hmc-draws", "--draws"],
        "recover": ["--hmc-draws", "--draws"],
        "refine": ["--hmc-draws", "--draws"],
    }
    chains = {_options(p)["--chains"].default for p in commands.values() if "--chains" in _options(p)}
    assert chains == {4}
    for name, p in commands.items():
        opts = _options(p)
        if "--halo-seed" in opts:
            assert opts["--halo-seed"].dest == "halo_seed" and "halo" in opts["--halo-seed"].help
        if "--seed" in opts and opts["--seed"].dest == "halo_seed":
            assert name == "evolve"  # the only command whose sole random draw is its halos
        if "--out" in opts:  # an output file only where one file is the natural output
            assert (opts["--out"].type.__name__ == "output_file") == (name == "evolve"), name
        if "--rtol" in opts:
            assert {"--atol", "--max-steps", "--solver", "--logm-min", "--logm-max", "--quiet"} <= set(opts), name
    assert _options(commands["generate"])["--seed"].dest == "seed" and "--design-seed" in _options(commands["generate"])
