"""Halo files fail loudly and name themselves (issue 18 case 8): samples after t0 refused,
implausible units (years, Myr, log10 masses) refused saying so, a UTF-8 byte-order mark
tolerated, and every file error a one-line ValueError that names the path."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import sapphire  # noqa: F401  (x64)
from sapphire import cosmology as cs
from sapphire.halo_files import HaloFileError, MissingHaloFileError
from sapphire.halos import HaloPopulation

T0 = cs.present_age()
HEADER = "halo_id,time_gyr,mhalo_msun"


def branch(t_end: float = T0, n: int = 20, m_end: float = 1e12, scale_t: float = 1.0, hid: str = "a") -> list[tuple]:
    """One main branch from 1e9 Msun at 1 Gyr to ``m_end`` at ``t_end`` (log-linear in t),
    times multiplied by ``scale_t`` (1e9: years)."""
    t = np.linspace(1.0, t_end, n)
    logm = 9.0 + (np.log10(m_end) - 9.0) * (t - 1.0) / (t_end - 1.0)
    return [(hid, repr(float(ti * scale_t)), repr(float(10**lm))) for ti, lm in zip(t, logm)]


def write_csv(path, rows, header: str = HEADER, bom: bool = False):
    text = header + "\n" + "".join(",".join(map(str, row)) + "\n" for row in rows)
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


def refused(path, match: str) -> str:
    """from_file(path) raises a one-line ValueError naming the path and matching ``match``."""
    with pytest.raises(ValueError, match=match) as info:
        HaloPopulation.from_file(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    return message


def test_a_branch_ending_at_t0_reads_its_final_mass_exactly(tmp_path):
    """Known answer for the checks below: the last sample at t0 = 1e12 Msun gives log10 M_h(z=0) = 12."""
    pop = HaloPopulation.from_file(write_csv(tmp_path / "ok.csv", branch()))
    assert float(pop.log_mhalo_z0[0]) == pytest.approx(12.0, abs=1e-9)


def test_samples_after_t0_are_refused_not_dropped(tmp_path):
    """Used to be cut silently: a branch reaching 1e12 Msun at 14.5 Gyr came out with
    log10 M_h(z=0) = 11.7 (its mass at t0 = 13.8 Gyr)."""
    message = refused(
        write_csv(tmp_path / "late.csv", branch(t_end=14.5)), r"halo a: \d+ sample\(s\) after the present age t0=13\."
    )
    assert "14.500 Gyr" in message and "would be dropped" in message
    # Round-off past t0 (< 0.01 Gyr, e.g. another cosmology's t0) is accepted, and the mass at t0
    # interpolated (log-linear branch, PCHIP exact on it): 9 + 3 (t0 - 1) / (t0 + 0.005 - 1).
    pop = HaloPopulation.from_file(write_csv(tmp_path / "roundoff.csv", branch(t_end=T0 + 0.005)))
    assert float(pop.log_mhalo_z0[0]) == pytest.approx(9.0 + 3.0 * (T0 - 1.0) / (T0 + 0.005 - 1.0), abs=1e-9)
    path = tmp_path / "future.h5"
    with h5py.File(path, "w") as f:
        f["redshift"] = np.array([5.0, 2.0, 0.5, 0.0, -0.1])
        f["mhalo_msun"] = np.array([[1e9, 1e10, 1e11, 1e12, 1.1e12]])
    refused(path, r"halo 0: negative redshift -0\.1 \(entry 4\): samples after z = 0 are not allowed")


@pytest.mark.parametrize("scale, units", [(1e9, "years"), (1e3, "Myr")])
def test_times_not_in_gyr_are_refused_saying_so(tmp_path, scale, units):
    """Times in years used to give 'never reaches M_h >= 1e9', though the masses reach 1e12."""
    message = refused(write_csv(tmp_path / f"{units}.csv", branch(scale_t=scale)), f"the times look like {units}")
    assert "implausible in Gyr" in message and "give cosmic time in Gyr" in message


def test_log10_masses_are_refused_saying_so(tmp_path):
    rows = [(hid, t, repr(float(np.log10(float(m))))) for hid, t, m in branch()]
    refused(write_csv(tmp_path / "logm.csv", rows), r"largest mhalo_msun is 12: implausible in Msun")


def test_a_utf8_byte_order_mark_is_tolerated(tmp_path):
    plain = HaloPopulation.from_file(write_csv(tmp_path / "plain.csv", branch()))
    with_bom = HaloPopulation.from_file(write_csv(tmp_path / "bom.csv", branch(), bom=True))
    assert (tmp_path / "bom.csv").read_bytes()[:3] == b"\xef\xbb\xbf"
    assert with_bom.fingerprint() == plain.fingerprint()


def test_files_that_are_not_halo_files_name_their_path(tmp_path):
    noise = np.random.default_rng(0).bytes(4096)
    (tmp_path / "noise.h5").write_bytes(noise)
    refused(tmp_path / "noise.h5", "not a readable HDF5 file")  # was h5py's raw OSError, no path
    (tmp_path / "noise.csv").write_bytes(b"\xff\xfe" + noise)
    refused(tmp_path / "noise.csv", "not a UTF-8 text CSV")
    (tmp_path / "empty.csv").write_text("")
    refused(tmp_path / "empty.csv", "empty file")
    with pytest.raises(MissingHaloFileError) as info:
        HaloPopulation.from_file(tmp_path / "absent.csv")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    assert str(tmp_path / "absent.csv") in str(info.value)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda rows: rows[:5] + [rows[6], rows[5]] + rows[7:], "halo a: time_gyr not strictly increasing"),
        (lambda rows: rows[:7] + [("a", rows[7][1], "-5.0")] + rows[8:], "halo a: negative mass"),
        (lambda rows: rows[:9] + [("a", rows[9][1], "nan")] + rows[10:], "halo a: non-finite or zero mass"),
        (lambda rows: [r for r in rows if float(r[1]) < 10.0], "halo a: last sample"),
        (lambda rows: [(r[0], r[1], repr(float(r[2]) * 1e-4)) for r in rows], "halo a never reaches M_h >= 1e\\+09"),
    ],
)
def test_every_branch_error_names_the_file(tmp_path, edit, match):
    error = refused(write_csv(tmp_path / "bad.csv", edit(branch())), match)
    assert error.startswith(str(tmp_path / "bad.csv") + ": halo a")
    with pytest.raises(HaloFileError):
        HaloPopulation.from_file(tmp_path / "bad.csv")
