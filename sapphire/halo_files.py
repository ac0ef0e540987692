"""Halo files: merger-tree main branches read from CSV or HDF5 (:meth:`HaloPopulation.from_file`
in :mod:`sapphire.halos`) and written back (:meth:`HaloPopulation.to_file`).

CSV (suffix ``.csv``), long format, one row per (halo, snapshot), header::

    halo_id,time_gyr,mhalo_msun        (cosmic time in Gyr), or
    halo_id,redshift,mhalo_msun        (converted with this package's cosmology)

Rows of one halo must be in increasing time (decreasing redshift); halos may interleave.
HDF5 (suffix ``.h5``, ``.hdf5`` or ``.hdf``): dataset ``time_gyr`` or ``redshift`` of shape
(n_t,), dataset ``mhalo_msun`` of shape (n_halo, n_t) with NaN or 0 before a halo exists,
optional dataset ``halo_id`` (n_halo,) used in error messages.
Masses in Msun; NaN or 0 are allowed only before a halo's first positive mass; the last
sample of every halo must lie within 0.25 Gyr of t0, and no sample may lie after t0 (by more
than 0.01 Gyr of round-off) or at a negative redshift: such samples are refused, not cut.
A UTF-8 byte-order mark before the CSV header is allowed.  Processing: the rate is
``numpy.gradient`` (second order) of M_h(t), forced >= 0, set to 0 before the halo exists,
linearly resampled to a fine uniform grid (sigma / 20) and Gaussian-smoothed
(``scipy.ndimage.gaussian_filter1d``, width ``smoothing_gyr``).  log10 M_h is put on the
common grid by monotone PCHIP interpolation in time (not smoothed); before the halo exists
it is held at its first value; beyond the last sample (at most 0.25 Gyr) it grows at the
last rate.

Units are checked before anything else: cosmic times beyond 1.5 t0 (years or Myr instead of
Gyr) and masses that never exceed 1e3 (log10 masses, or units of 1e10 Msun) are refused with a
message that says so.  Every error is one line that names the file: :class:`HaloFileError`, a
``ValueError`` (a missing file: :class:`MissingHaloFileError`, also a ``FileNotFoundError``).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from scipy import interpolate, ndimage

from . import cosmology as cosmo_mod
from .config import ModelConfig

__all__ = [
    "HDF5_SUFFIXES",
    "HaloFileError",
    "MainBranches",
    "MissingHaloFileError",
    "file_sha256",
    "read_main_branches",
    "write_halo_file",
]

Provenance = tuple[tuple[str, str], ...]

#: How far (Gyr) a file's last sample may end before t0.
MAX_END_GAP_GYR = 0.25
#: How far (Gyr) past t0 a sample may lie (round-off between cosmologies); beyond: refused.
MAX_PAST_T0_GYR = 0.01
#: A file whose times exceed this multiple of t0 is not in Gyr.
MAX_TIME_OVER_T0 = 1.5
#: A file whose masses never exceed this (Msun) is not in Msun.
MIN_PLAUSIBLE_MAX_MASS = 1e3
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


class HaloFileError(ValueError):
    """A halo file that cannot be read or holds implausible values (the message names it)."""


class MissingHaloFileError(HaloFileError, FileNotFoundError):
    """A halo file that does not exist."""


@dataclasses.dataclass(frozen=True)
class MainBranches:
    """Main branches of one file on the common time grid (n halos, T times): ``log_mhalo``
    (n, T) log10 Msun, ``mhalo_rate`` (n, T) Msun/Gyr, ``exists_from`` (n,) Gyr (first
    sample with positive mass), ``labels`` (halo ids) and ``provenance``."""

    log_mhalo: np.ndarray
    mhalo_rate: np.ndarray
    exists_from: np.ndarray
    labels: list[str]
    provenance: Provenance


def file_sha256(path: str | os.PathLike) -> str:
    """Short (16 hex digits) sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _unknown_suffix(path: Path) -> HaloFileError:
    return HaloFileError(f"unknown halo-file suffix {path.suffix!r} for {path}; use .csv or one of {HDF5_SUFFIXES}")


def write_halo_file(
    path: str | os.PathLike, times: np.ndarray, mass: np.ndarray, provenance: Provenance, fingerprint: str
) -> Path:
    """Write histories ``mass`` (n_halo, n_t) [Msun] at ``times`` (n_t,) [Gyr] in the format
    that :func:`read_main_branches` reads; CSV or HDF5 chosen by suffix.  Returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        n_h, n_t = mass.shape
        with open(path, "w", newline="") as f:
            f.write("halo_id,time_gyr,mhalo_msun\n")
            for i in range(n_h):
                block = np.column_stack([np.full(n_t, i), times, mass[i]])
                np.savetxt(f, block, fmt=["%d", "%.17g", "%.17g"], delimiter=",")
    elif suffix in HDF5_SUFFIXES:
        import h5py

        with h5py.File(path, "w") as f:
            f.create_dataset("time_gyr", data=times)
            f.create_dataset("mhalo_msun", data=mass)
            f.create_dataset("halo_id", data=np.arange(mass.shape[0]))
            f.attrs["provenance"] = json.dumps(dict(provenance))
            f.attrs["fingerprint"] = fingerprint
    else:
        raise _unknown_suffix(path)
    return path


def _units_guess(ratio: float) -> str:
    if ratio > 1e7:
        return "years"
    if ratio > 300:
        return "Myr"
    return "not Gyr"


def _check_units(path: Path, halos: list[tuple[str, np.ndarray, np.ndarray]], time_column: str, t0: float) -> None:
    """Refuse a file whose times cannot be Gyr or whose masses cannot be Msun, saying so."""
    if time_column == "time_gyr":
        finite = [x[np.isfinite(x)] for _, x, _ in halos]
        t_max = max((float(x.max()) for x in finite if x.size), default=np.nan)
        if t_max > MAX_TIME_OVER_T0 * t0:
            raise HaloFileError(
                f"{path}: time_gyr reaches {t_max:.4g}, {t_max / t0:.3g} times the present age t0 = {t0:.3f} Gyr: "
                f"implausible in Gyr (the times look like {_units_guess(t_max / t0)}); give cosmic time in Gyr"
            )
    masses = [m[np.isfinite(m) & (m > 0)] for _, _, m in halos]
    m_max = max((float(m.max()) for m in masses if m.size), default=np.nan)
    if m_max < MIN_PLAUSIBLE_MAX_MASS:
        raise HaloFileError(
            f"{path}: the largest mhalo_msun is {m_max:.4g}: implausible in Msun (log10 masses, or units of "
            "1e10 Msun?); give halo masses in Msun"
        )


def read_main_branches(
    path: str | os.PathLike, config: ModelConfig, smoothing_gyr: float, times: np.ndarray
) -> MainBranches:
    """Read, check and resample the main branches of a CSV or HDF5 halo file (formats: module
    docstring) onto the common time grid ``times`` (T,) [Gyr], which ends at t0.

    Raises :class:`MissingHaloFileError` for a missing file and :class:`HaloFileError` (one
    line naming the file, and the halo, column or value) for an unreadable file, an unknown
    suffix, missing columns/datasets, implausible units, samples after t0, non-monotonic
    times, negative or non-finite masses, or a halo that never reaches
    ``config.halo_start_mass``."""
    path = Path(path)
    if not path.is_file():
        raise MissingHaloFileError(f"halo file not found: {path}")
    if smoothing_gyr <= 0:
        raise ValueError(f"smoothing_gyr must be > 0, got {smoothing_gyr}")
    suffix = path.suffix.lower()
    cosmo = config.cosmology
    if suffix == ".csv":
        halos, time_column = _read_csv(path)
    elif suffix in HDF5_SUFFIXES:
        halos, time_column = _read_hdf5(path)
    else:
        raise _unknown_suffix(path)
    if not halos:
        raise HaloFileError(f"{path}: no halos found")

    t0 = cosmo_mod.present_age(cosmo)
    _check_units(path, halos, time_column, t0)
    fine_dt = smoothing_gyr / 20.0
    fine = np.arange(0.0, t0 + fine_dt, fine_dt)

    labels, logms, rates, firsts = [], [], [], []
    for label, x, m in halos:
        try:
            if time_column == "redshift" and np.any(x < 0):
                i = int(np.argmax(x < 0))
                raise ValueError(
                    f"halo {label}: negative redshift {float(x[i])!r} (entry {i}): samples after z = 0 are not allowed"
                )
            t = np.asarray(cosmo_mod.age_at_redshift(x, cosmo), dtype=np.float64) if time_column == "redshift" else x
            t, m = _validate_branch(label, t, m, time_column, x, t0, config.halo_start_mass)
        except ValueError as err:
            raise HaloFileError(f"{path}: {err}") from None
        rate = np.maximum(np.gradient(m, t), 0.0)
        logm = np.log10(m)
        # Rate: 0 before the halo exists, last value after its last sample; smooth.
        rate_fine = np.interp(fine, t, rate, left=0.0, right=rate[-1])
        rate_fine = ndimage.gaussian_filter1d(rate_fine, smoothing_gyr / fine_dt, mode="nearest")
        rate_grid = np.maximum(np.interp(times, fine, rate_fine), 0.0)
        # log10 M_h: PCHIP inside, held before, extended at the last rate after.
        logm_grid = np.empty_like(times)
        inside = (times >= t[0]) & (times <= t[-1])
        logm_grid[inside] = interpolate.PchipInterpolator(t, logm)(times[inside])
        logm_grid[times < t[0]] = logm[0]
        after = times > t[-1]
        logm_grid[after] = np.log10(m[-1] + rate[-1] * (times[after] - t[-1]))
        labels.append(label)
        logms.append(logm_grid)
        rates.append(rate_grid)
        firsts.append(t[0])

    provenance: Provenance = (
        ("source", "file"),
        ("path", str(path)),
        ("file_sha256", file_sha256(path)),
        ("file_time_column", time_column),
        ("smoothing_gyr", repr(float(smoothing_gyr))),
        ("t0_gyr", repr(t0)),
    )
    return MainBranches(np.array(logms), np.array(rates), np.array(firsts), labels, provenance)


# ---------------------------------------------------------------------- readers
_TIME_COLUMNS = ("time_gyr", "redshift")


def _time_column(path: Path, names: list[str], required: tuple[str, ...], kind: str) -> str:
    """The one time column ('time_gyr' or 'redshift') among ``names``; ``ValueError`` naming
    what is missing (``required`` too) or ambiguous.  ``kind`` is "column" or "dataset"."""
    time_cols = [c for c in _TIME_COLUMNS if c in names]
    missing = [c for c in required if c not in names]
    if not time_cols:
        missing.append("time_gyr or redshift")
    if missing:
        raise HaloFileError(f"{path}: missing {kind}(s) {missing}; found {kind}s {names}")
    if len(time_cols) > 1:
        raise HaloFileError(f"{path}: give either a 'time_gyr' or a 'redshift' {kind}, not both")
    return time_cols[0]


def _read_csv(path: Path) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], str]:
    """Rows grouped by halo_id (order of first appearance): [(label, time_or_z, mass)]."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark is skipped
            return _parse_csv(path, csv.reader(f))
    except UnicodeDecodeError as err:
        raise HaloFileError(f"{path}: not a UTF-8 text CSV ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        raise HaloFileError(f"{path}: not a readable CSV ({err})") from None


def _parse_csv(path: Path, reader) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], str]:
    """Rows of a CSV reader grouped by halo_id: ([(label, time_or_z, mass)], time column)."""
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise HaloFileError(f"{path}: empty file (expected header halo_id,time_gyr,mhalo_msun)") from None
    time_column = _time_column(path, header, ("halo_id", "mhalo_msun"), "column")
    i_id, i_t, i_m = header.index("halo_id"), header.index(time_column), header.index("mhalo_msun")
    groups: dict[str, tuple[list[float], list[float]]] = {}
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        try:
            hid = row[i_id].strip()
            tval, mval = float(row[i_t]), float(row[i_m])
        except (IndexError, ValueError) as err:
            raise HaloFileError(f"{path}, line {line_no}: cannot parse row {row} ({err})") from None
        ts, ms = groups.setdefault(hid, ([], []))
        ts.append(tval)
        ms.append(mval)
    halos = [(hid, np.array(ts), np.array(ms)) for hid, (ts, ms) in groups.items()]
    return halos, time_column


def _read_hdf5(path: Path) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], str]:
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise HaloFileError(f"{path}: not a readable HDF5 file ({str(err).splitlines()[0]})") from None
    with handle as f:
        time_column = _time_column(path, list(f.keys()), ("mhalo_msun",), "dataset")
        x = np.asarray(f[time_column][()], dtype=np.float64)
        mass = np.asarray(f["mhalo_msun"][()], dtype=np.float64)
        ids = np.asarray(f["halo_id"][()]) if "halo_id" in f else None
    if mass.ndim == 1:
        mass = mass[None, :]
    if x.ndim != 1 or mass.ndim != 2 or mass.shape[1] != x.size:
        raise HaloFileError(
            f"{path}: '{time_column}' must have shape (n_t,) and 'mhalo_msun' (n_halo, n_t); "
            f"got {x.shape} and {mass.shape}"
        )
    if ids is None or ids.shape != (mass.shape[0],):
        ids = np.arange(mass.shape[0])
    labels = [i.decode() if isinstance(i, bytes) else str(i) for i in ids.tolist()]
    return [(labels[i], x, mass[i]) for i in range(mass.shape[0])], time_column


def _validate_branch(
    label: str,
    t: np.ndarray,
    m: np.ndarray,
    time_column: str,
    raw: np.ndarray,
    t0: float,
    start_mass: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Check one main branch and drop the entries before the halo exists (NaN or 0)."""
    bad_t = ~np.isfinite(t)
    if bad_t.any():
        i = int(np.argmax(bad_t))
        raise ValueError(f"halo {label}: non-finite {time_column} {float(raw[i])!r} (entry {i})")
    steps = np.diff(t)
    if np.any(steps <= 0):
        i = int(np.argmax(steps <= 0)) + 1
        order = "decreasing" if time_column == "redshift" else "increasing"
        raise ValueError(
            f"halo {label}: {time_column} not strictly {order} at entry {i} "
            f"({time_column}={float(raw[i - 1])!r} then {float(raw[i])!r})"
        )
    if np.any(m < 0):
        i = int(np.argmax(m < 0))
        raise ValueError(f"halo {label}: negative mass mhalo_msun={float(m[i])!r} at {time_column}={float(raw[i])!r}")
    if np.any(np.isinf(m)):
        i = int(np.argmax(np.isinf(m)))
        raise ValueError(f"halo {label}: non-finite mass mhalo_msun={float(m[i])!r} at {time_column}={float(raw[i])!r}")
    present = np.isfinite(m) & (m > 0)
    if not present.any():
        raise ValueError(f"halo {label}: no positive, finite mhalo_msun")
    first = int(np.argmax(present))
    if not present[first:].all():
        i = first + int(np.argmax(~present[first:]))
        raise ValueError(
            f"halo {label}: non-finite or zero mass mhalo_msun={float(m[i])!r} at "
            f"{time_column}={float(raw[i])!r} after the halo exists "
            "(NaN/0 are allowed only before its first entry)"
        )
    t, m = t[first:], m[first:]
    if t.size < 2:
        raise ValueError(f"halo {label}: needs at least 2 samples with positive mass, got {t.size}")
    if t[-1] > t0 + MAX_PAST_T0_GYR:
        n_after = int(np.sum(t > t0 + MAX_PAST_T0_GYR))
        raise ValueError(
            f"halo {label}: {n_after} sample(s) after the present age t0={t0:.3f} Gyr (the last at t={t[-1]:.3f} Gyr) "
            "would be dropped: remove them, or check the file's cosmology and time units (z=0 must come last)"
        )
    if t[-1] < t0 - MAX_END_GAP_GYR:
        raise ValueError(
            f"halo {label}: last sample at t={t[-1]:.3f} Gyr is more than {MAX_END_GAP_GYR} Gyr "
            f"before t0={t0:.3f} Gyr (main branches must reach z=0)"
        )
    if m.max() < start_mass:
        raise ValueError(f"halo {label} never reaches M_h >= {start_mass:g} Msun (max mhalo_msun={m.max():.4g})")
    return t, m
