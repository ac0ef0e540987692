"""Fail-safe stores (issue 18): crc32c-checksummed chunks, one-line errors naming the damaged
chunk, ``sapphire inspect --verify``, repair on ``--resume`` (bit-identical to a clean run), and
``--extend`` that checks before it writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

import sapphire
import training_sets as T
from training_sets.inspection import PHYSICAL_BOUNDS, verify_store
from training_sets.store import HALO_ARRAYS, open_group, scan_chunks, store_identity

# The tiny configuration of tests/test_training_sets.py (same compiled function within a session).
N_POINTS, N_HALOS, CHUNK, SEED, SOLVER = 6, 8, 2, 3, "tsit5"
MODEL = sapphire.Model(solver=SOLVER)
SETTINGS = dict(n_points=N_POINTS, n_halos=N_HALOS, seed=SEED, chunk=CHUNK, devices=1, model=MODEL, progress=False)
CLI_SETTINGS = ["--halos", str(N_HALOS), "--chunk", str(CHUNK), "--solver", SOLVER, "--devices", "1", "--quiet"]


@pytest.fixture(scope="session")
def clean_store(tmp_path_factory) -> Path:
    """An uninterrupted tiny store (6 points x 8 halos, 3 blocks of 2)."""
    path = tmp_path_factory.mktemp("integrity") / "clean.zarr"
    T.generate(path, **SETTINGS)
    return path


@pytest.fixture
def copy_of(clean_store, tmp_path):
    def make(name: str = "copy.zarr") -> Path:
        return Path(shutil.copytree(clean_store, tmp_path / name))

    return make


def xor_bytes(path: Path, start: int = 0, stop: int | None = None) -> None:
    """Flip every bit of bytes [start, stop) of a file (the whole file by default)."""
    raw = bytearray(path.read_bytes())
    stop = len(raw) if stop is None else min(stop, len(raw))
    raw[start:stop] = bytes(b ^ 0xFF for b in raw[start:stop])
    path.write_bytes(bytes(raw))


def truncate(path: Path, keep: int = 10) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def arrays_of(path: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(path), mode="r")
    names = sorted(root.array_keys()) + [f"halos/{k}" for k in root["halos"].array_keys()]
    return {name: np.asarray(root[name][...]) for name in names}


# --------------------------------------------------------------------------------- checksums
def test_every_array_of_a_store_carries_a_crc32c_checksum(clean_store):
    from zarr.codecs import Crc32cCodec

    root = open_group(clean_store)
    names = sorted(root.array_keys()) + [f"halos/{k}" for k in root["halos"].array_keys()]
    assert len(names) == 7 + len(HALO_ARRAYS)
    for name in names:
        assert any(isinstance(c, Crc32cCodec) for c in root[name].compressors), name
    assert root.attrs["schema_version"] == T.SCHEMA_VERSION == 2


def test_an_older_schema_is_refused_saying_what_changed(copy_of):
    path = copy_of()
    zarr.open_group(str(path), mode="r+").attrs["schema_version"] = 1
    with pytest.raises(
        T.StoreError, match=r"schema version 1 \(older.*version 2: every chunk carries a crc32c checksum"
    ):
        T.open_training_set(path)


@pytest.mark.parametrize("damage", ["xor", "truncate"])
def test_a_damaged_chunk_raises_one_line_naming_array_chunk_rows_and_path(copy_of, damage):
    path = copy_of()
    chunk_file = path / "summaries" / "c" / "1" / "0"
    xor_bytes(chunk_file, 10, 30) if damage == "xor" else truncate(chunk_file)
    ts = T.open_training_set(path)
    for read in (ts.load, ts.valid_mask, lambda: ts.summaries.compute(), lambda: T.store_digest(path)):
        with pytest.raises(T.StoreError) as info:
            read()
        message = str(info.value)
        assert "\n" not in message
        assert str(path) in message and "array summaries chunk c/1/0 (rows 2-3)" in message, message
        assert "checksum mismatch" in message and "--resume" in message
    ts.load([0, 1, 4, 5])  # the other blocks still read


def test_a_missing_chunk_of_a_finished_block_is_an_error_not_fill_values(copy_of):
    """Issue 18 case 2: with a chunk deleted, training went on with NaN / -1 fill values."""
    path = copy_of()
    (path / "n_failed" / "c" / "2").unlink()
    with pytest.raises(T.StoreError) as info:
        T.open_training_set(path).valid_mask()
    assert str(info.value) == (
        f"{path}: array n_failed chunk c/2 (rows 4-5): missing (its rows are marked done); `sapphire inspect {path} --verify` "
        f"lists every damaged chunk, `sapphire generate {path} --resume` recomputes them"
    )


def test_cli_prints_a_damaged_chunk_as_one_line(copy_of, capsys):
    from sapphire.cli import main

    path = copy_of()
    xor_bytes(path / "summary_jacobian" / "c" / "2" / "0" / "0", 100, 200)
    with pytest.raises(SystemExit) as info:
        main(["inspect", str(path)])
    assert info.value.code == 2  # the command line's bad-input status (README, exit status)
    message = capsys.readouterr().err.strip()
    assert message.startswith("sapphire inspect: ") and "\n" not in message
    assert "array summary_jacobian chunk c/2/0/0 (rows 4-5)" in message


# --------------------------------------------------------------------------------- verify
def test_verify_finds_nothing_in_a_clean_store(clean_store, capsys):
    from sapphire.cli import main

    result = verify_store(clean_store)
    assert result["ok"] and result["damaged"] == [] and result["out_of_bounds"] == []
    assert main(["inspect", str(clean_store), "--verify"]) == 0
    assert "every chunk verified" in capsys.readouterr().out


def test_verify_lists_damaged_and_missing_chunks_and_implausible_values(copy_of, capsys):
    from sapphire.cli import main

    path = copy_of()
    xor_bytes(path / "summaries" / "c" / "1" / "0", 10, 30)  # flipped bits
    truncate(path / "summary_stderr" / "c" / "2" / "0")  # truncated
    (path / "n_failed" / "c" / "0").unlink()  # missing
    xor_bytes(path / "halos" / "log_mhalo" / "c" / "0" / "0", 50, 60)
    root = zarr.open_group(str(path), mode="r+")  # valid checksum, unphysical values
    root["summaries"][0, 3] = -3e307
    root["summary_jacobian"][5, 0, 0] = np.nan
    result = verify_store(path)
    found = {(d["array"], d["chunk"], tuple(d["rows"])): d["problem"] for d in result["damaged"]}
    assert found == {
        ("summaries", "c/1/0", (2, 4)): "crc32c checksum mismatch (bytes changed or truncated)",
        ("summary_stderr", "c/2/0", (4, 6)): "crc32c checksum mismatch (bytes changed or truncated)",
        ("n_failed", "c/0", (0, 2)): "missing",
        ("halos/log_mhalo", "c/0/0", (0, N_HALOS)): "crc32c checksum mismatch (bytes changed or truncated)",
    }
    # n_failed of block 0 is missing, so the values of its rows are not judged (row 0 is not flagged).
    flagged = {(f["array"], f["row"]) for f in result["out_of_bounds"]}
    assert flagged == {("summary_jacobian", 5)}
    root["summaries"][4, 3] = 1e300
    flagged = {(f["array"], f["row"]): f["value"] for f in verify_store(path)["out_of_bounds"]}
    assert flagged.keys() == {("summary_jacobian", 5), ("summaries", 4)}
    assert flagged["summaries", 4] == 1e300 and np.isnan(flagged["summary_jacobian", 5])
    assert main(["inspect", str(path), "--verify"]) == 1
    out = capsys.readouterr().out
    assert (
        "damaged array summaries chunk c/1/0 (rows 2-3)" in out
        and "damaged array n_failed chunk c/0 (rows 0-1): missing" in out
    )
    assert "summaries row 4 holds 1e+300, outside the physical bounds (finite, in [-30, 30])" in out


def test_physical_bounds_hold_on_a_real_store(clean_store):
    """The bounds are not so tight that clean rows trip them (and the clean values sit well inside)."""
    ts = T.open_training_set(clean_store)
    rows = ts.load()
    assert np.abs(rows["summaries"]).max() < PHYSICAL_BOUNDS["summaries"][1] / 2
    assert np.abs(rows["summary_jacobian"]).max() < PHYSICAL_BOUNDS["summary_jacobian"][1] / 1e3


# --------------------------------------------------------------------------------- repair
def test_resume_recomputes_damaged_truncated_and_missing_chunks_bit_identically(clean_store, copy_of):
    path = copy_of()
    xor_bytes(path / "summaries" / "c" / "1" / "0", 10, 30)
    truncate(path / "summary_jacobian" / "c" / "2" / "0" / "0")
    (path / "n_failed" / "c" / "0").unlink()
    xor_bytes(path / "theta" / "c" / "2" / "0", 20, 40)  # redrawn from the recorded design
    xor_bytes(path / "halos" / "coeff_a" / "c" / "0" / "0" / "0", 30, 40)  # rewritten from the run's halos
    assert len(scan_chunks(open_group(path))) == 5
    report = T.generate(path, resume=True, **SETTINGS)
    assert report.computed == N_POINTS  # the three blocks, each with a damaged chunk
    assert len(report.repaired) == 5 and any("theta chunk c/2/0" in line for line in report.repaired)
    assert scan_chunks(open_group(path)) == []
    clean, repaired = arrays_of(clean_store), arrays_of(path)
    assert clean.keys() == repaired.keys()
    for name in clean:
        assert np.array_equal(clean[name], repaired[name], equal_nan=clean[name].dtype.kind == "f"), name
    assert T.store_digest(path) == T.store_digest(clean_store)
    assert open_group(path).attrs["history"][-1]["repaired"] == report.repaired


def test_resume_of_a_clean_store_computes_nothing(copy_of):
    path = copy_of()
    report = T.generate(path, resume=True, **SETTINGS)
    assert report.computed == 0 and report.repaired == []


def test_a_damaged_table_design_cannot_be_redrawn_and_nothing_is_written(tmp_path):
    from training_sets.store import create_store

    theta = T.latin_hypercube_design(MODEL.prior, 4, seed=0)
    path = create_store(
        tmp_path / "table.zarr",
        theta,
        MODEL,
        sapphire.HaloPopulation.from_diffmah(2, seed=0),
        sapphire.Observations.default(),
        design={"kind": "table", "seed": None},
        chunk=2,
    )
    xor_bytes(path / "theta" / "c" / "1" / "0", 10, 20)
    before = (path / "theta" / "c" / "1" / "0").read_bytes()
    with pytest.raises(T.StoreError, match="theta chunk c/1/0 \\(rows 2-3\\).*came from a table"):
        T.generate(
            path,
            resume=True,
            halos=sapphire.HaloPopulation.from_diffmah(2, seed=0),
            model=MODEL,
            chunk=2,
            devices=1,
            progress=False,
        )
    assert (path / "theta" / "c" / "1" / "0").read_bytes() == before


# --------------------------------------------------------------------------------- extend
def test_extend_with_other_halos_is_refused_before_the_store_changes(clean_store, copy_of, capsys):
    """Issue 18 case 3: ``--extend 4 --halos 16`` on an 8-halo store used to grow the design and then
    refuse; every retry grew it again."""
    from sapphire.cli import main

    path = copy_of()
    before = T.store_digest(path)
    for _ in range(2):
        with pytest.raises(SystemExit) as info:
            main(["generate", str(path), "--extend", "4", "--seed", "11", *CLI_SETTINGS, "--halos", "16"])
        message = capsys.readouterr().err.strip()
        assert info.value.code == 2 and "halos" in message and "\n" not in message
    assert T.store_digest(path) == before and T.open_training_set(path).n_points == N_POINTS
    with pytest.raises(T.StoreError, match="solver.rtol"):
        T.extend_store(
            path,
            2,
            seed=11,
            expected=store_identity(
                sapphire.Model(solver=SOLVER, rtol=1e-6),
                T.open_training_set(path).halos(),
                sapphire.Observations.default(),
                CHUNK,
                False,
            ),
        )
    for bad in (0, -4, 2.5):
        with pytest.raises(ValueError, match=f"--extend.*{bad}"):
            T.extend_store(path, bad, seed=11)
    assert T.store_digest(path) == before and T.open_training_set(path).n_points == N_POINTS
