"""The package's literature data: the default z = 0 constraints and the fits behind them.

Data choices and provenance: ``sapphire/data/PROVENANCE.md``.  :func:`default_relations` builds
the three relations of ``Observations.default()``.
"""

from __future__ import annotations

import math
from importlib import resources
from typing import Any

import numpy as np

from .relation import DEFAULT_LABELS, DetectionLimit, Relation

__all__ = [
    "HELIUM_CORRECTION",
    "XGASS_DETECTION_LIMIT",
    "default_relations",
    "smhm_behroozi2019_samples",
    "mzr_andrews_martini2013",
]

_DATA_PACKAGE = "sapphire"
_SMHM_FILE = "data/smhm_behroozi2019_cen_params.txt"
_GAS_FILE = "data/cold_gas_fraction_catinella2018.csv"

#: Default x grids and uncertainties (our choices, data README).
SMHM_LOG_MHALO = np.linspace(10.0, 12.5, 11)
SMHM_SYSTEMATIC_DEX = 0.1
GAS_RATIO_SIGMA_DEX = 0.1
HELIUM_CORRECTION = 1.33
MZR_LOG_MSTAR = np.linspace(8.0, 10.5, 11)
MZR_SIGMA_DEX = 0.2


#: xGASS (Catinella et al. 2018): HI detected down to M_HI/M_* = 2% for M_* > 10^9.7 Msun and
#: to M_HI = 10^8 Msun below (the two limits meet at 10^9.7); in the model's units (total ISM
#: including helium) x 1.33.  H2 is ignored in the limit.  Smoothed over 0.1 dex.
XGASS_DETECTION_LIMIT = DetectionLimit(
    log_mass_limit=8.0, log_ratio_limit=math.log10(0.02), offset=math.log10(HELIUM_CORRECTION), width=0.1
)


def _read_package_text(relative: str) -> str:
    return resources.files(_DATA_PACKAGE).joinpath(relative).read_text(encoding="utf-8")


def _load_smhm_samples() -> dict[str, np.ndarray]:
    """Behroozi+2019 parameter samples as column name -> (n_samples,) array (row 0 = best fit)."""
    text = _read_package_text(_SMHM_FILE)
    names = None
    for line in text.splitlines():
        if line.startswith("#") and "Columns:" in line:
            names = line.split("Columns:", 1)[1].split()
            break
    if names is None:
        raise ValueError(f"{_SMHM_FILE}: no '# Columns:' header line")
    rows = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    table = np.array(rows, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != len(names):
        raise ValueError(f"{_SMHM_FILE}: expected {len(names)} columns, got shape {table.shape}")
    return {name: table[:, i] for i, name in enumerate(names)}


def smhm_behroozi2019_samples(log_mhalo: Any, redshift: float = 0.0) -> np.ndarray:
    """log10(M_*/M_h) of every Behroozi et al. (2019) central-galaxy posterior sample.

    Their Appendix J median fit (form in the data file header), true stellar mass, halo mass =
    peak virial mass [Msun].

    Args:
        log_mhalo: log10 M_h [Msun], shape (n_x,).
        redshift: z >= 0.

    Returns:
        array (n_samples, n_x); row 0 is the best fit.  Samples with unphysical DELTA/GAMMA give
        odd (but finite) curves: use medians and percentiles across samples.  Non-finite entries
        (none occur at z = 0 or 2) are returned as NaN.
    """
    p = _load_smhm_samples()
    z = float(redshift)
    a = 1.0 / (1.0 + z)
    lm = np.atleast_1d(np.asarray(log_mhalo, dtype=np.float64))[None, :]

    def evolve(key: str) -> np.ndarray:
        return p[key] + p[key + "_A"] * (a - 1.0) - p[key + "_A2"] * np.log(a) + p[key + "_Z"] * z

    with np.errstate(all="ignore"):
        log_m1 = evolve("M_1")[:, None]
        eps = evolve("EFF_0")[:, None]
        alpha = evolve("ALPHA")[:, None]
        beta = (p["BETA"] + p["BETA_A"] * (a - 1.0) + p["BETA_Z"] * z)[:, None]
        delta = p["DELTA"][:, None]
        gamma = (10.0 ** (p["GAMMA"] + p["GAMMA_A"] * (a - 1.0) + p["GAMMA_Z"] * z))[:, None]
        x = lm - log_m1
        log_mstar = (
            log_m1
            + eps
            - np.log10(10.0 ** (-alpha * x) + 10.0 ** (-beta * x))
            + gamma * np.exp(-0.5 * (x / delta) ** 2)
        )
        ratio = log_mstar - lm
    return np.where(np.isfinite(ratio), ratio, np.nan)


def mzr_andrews_martini2013(log_mstar: Any) -> np.ndarray:
    """Andrews & Martini (2013, eq. 5, Table 4) direct-method MZR: 12 + log10(O/H).

    12 + log(O/H) = 8.798 - log10(1 + (10^8.901 / M_*)^0.640), log10 M_* [Msun, Kroupa IMF],
    valid for log10 M_* = 7.4 .. 10.5.
    """
    log_mstar = np.asarray(log_mstar, dtype=np.float64)
    return 8.798 - np.log10(1.0 + 10.0 ** (0.640 * (8.901 - log_mstar)))


def _default_smhm() -> Relation:
    x = SMHM_LOG_MHALO.copy()
    samples = smhm_behroozi2019_samples(x, 0.0)
    y = np.nanmedian(samples, axis=0)
    p16, p84 = np.nanpercentile(samples, [16.0, 84.0], axis=0)
    sigma = np.hypot(0.5 * (p84 - p16), SMHM_SYSTEMATIC_DEX)
    x_label, y_label = DEFAULT_LABELS["smhm"]
    return Relation(
        name="smhm",
        x=x,
        y=y,
        sigma=sigma,
        x_label=x_label,
        y_label=y_label,
        source=(
            "Behroozi et al. (2019, MNRAS 488, 3143) UniverseMachine DR1, centrals, true stellar "
            f"mass: median over the {samples.shape[0]} posterior samples of the Appendix J fit at "
            "z = 0; sigma = half the 16-84 percentile spread (+) 0.1 dex systematic in "
            f"quadrature (package data {_SMHM_FILE})"
        ),
        note=(
            "Observed halo mass is the peak virial mass (Bryan & Norman 1998); the model's x is "
            "the z = 0 halo mass (same for centrals whose halos still grow)."
        ),
    )


def _default_gas_ratio() -> Relation:
    text = _read_package_text(_GAS_FILE)
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    header = [c.strip() for c in lines[0].split(",")]
    if header != ["log10_mstar", "log10_mcold_over_mstar"]:
        raise ValueError(f"{_GAS_FILE}: unexpected header {header}")
    table = np.array([[float(c) for c in line.split(",")] for line in lines[1:]])
    x = table[:, 0]
    y = table[:, 1] + math.log10(HELIUM_CORRECTION)
    x_label, y_label = DEFAULT_LABELS["gas_ratio"]
    return Relation(
        name="gas_ratio",
        x=x,
        y=y,
        sigma=np.full(x.shape, GAS_RATIO_SIGMA_DEX),
        x_label=x_label,
        y_label=y_label,
        source=(
            "Catinella et al. (2018, MNRAS 476, 875) xGASS + xCOLDGASS mean "
            "log10((M_HI + M_H2)/M_*) in stellar-mass bins (Chabrier IMF), + log10(1.33) for "
            f"helium; sigma = 0.1 dex (package data {_GAS_FILE})"
        ),
        note=(
            "The means include non-detections (at their upper limits), so they sit low for a "
            "star-forming-only model; model halos below the xGASS detection limit (max(10^8 Msun, "
            "2% of M_*) x 1.33, smoothed over 0.1 dex) enter at it: say so on every plot."
        ),
        detection_limit=XGASS_DETECTION_LIMIT,
    )


def _default_mzr() -> Relation:
    x = MZR_LOG_MSTAR.copy()
    x_label, y_label = DEFAULT_LABELS["mzr"]
    return Relation(
        name="mzr",
        x=x,
        y=mzr_andrews_martini2013(x),
        sigma=np.full(x.shape, MZR_SIGMA_DEX),
        x_label=x_label,
        y_label=y_label,
        source=(
            "Andrews & Martini (2013, ApJ 765, 140) eq. 5 / Table 4 direct-method fit, "
            "12 + log(O/H) = 8.798 - log10(1 + (10^8.901 / M_*)^0.640); sigma = 0.2 dex "
            "(systematic between metallicity calibrations)"
        ),
        note=(
            "Stellar masses are Kroupa IMF (Chabrier masses are about 0.03 dex lower; not "
            "shifted). Direct-method metallicities of SDSS star-forming stacks."
        ),
    )


def default_relations() -> tuple[Relation, Relation, Relation]:
    """The default ``smhm``, ``gas_ratio`` and ``mzr`` relations (``Observations.default()``)."""
    return _default_smhm(), _default_gas_ratio(), _default_mzr()
