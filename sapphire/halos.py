"""Halo forcing: smooth M_h(t) and dM_h/dt(t) for each halo (MODEL.md section 2).

Every halo is an external forcing of the galaxy ODE.  A :class:`HaloPopulation` holds the
tabulated histories of many halos on ONE common time grid (fixed-shape arrays, so halos
vectorise and shard), together with precomputed cubic-spline coefficients.
:meth:`HaloPopulation.forcing` returns a :class:`HaloForcing` whose every leaf has a leading
halo axis; ``jax.vmap(..., in_axes=0)`` over it gives one cheap, smooth forcing per halo.

Common time grid (:func:`common_time_grid`)
    Uniform in s(t) = t + tau ln(t / t_min) with tau = 1 Gyr, t_min = 0.1 Gyr, ending exactly
    at t0.  Spacing is ~geometric at early times (dt ~ 0.05 t) and ~uniform late
    (dt -> ds / (1 + tau / t0)); with the default 384 points: dt = 0.0044 Gyr at 0.1 Gyr,
    0.011 at 0.3 Gyr, 0.024 at 1 Gyr, 0.045 at t0.  Early halo growth is a steep power law
    of t (M ~ t^3), so relative, not absolute, resolution is what matters there; late on,
    0.045 Gyr resolves the 0.1-Gyr smoothing kernel with >= 2 points per sigma (the grid's
    accuracy against a 4x finer one: docs/design.md s.11).

Interpolation (the solver pays for every kink)
    Columns interpolated per halo: log10 M_h and sqrt(dM_h/dt), each by a not-a-knot cubic
    spline (``scipy.interpolate.CubicSpline``, C2), converted to ``diffrax.CubicInterpolation``
    coefficients and evaluated in one call (one ``searchsorted`` for both columns).  The rate is
    returned as the SQUARE of the interpolated sqrt(rate): non-negative for every t, C1 (in fact
    C2), with no clipping or floor, and exact zeros stay (nearly) zero; a spline of the rate
    itself could undershoot below 0 next to a zero stretch.  Outside [times[0], times[-1]] the
    time is clamped to the grid, so the forcing is finite for every finite t.

Default source: diffmah
    :meth:`HaloPopulation.from_diffmah` draws central-halo histories with
    ``diffmah.diffmahpop_kernels.mc_cenpop`` (default diffmahpop parameters) for log10 M_h(z=0)
    stratified-uniform in [logm_min, logm_max].  diffmah halts growth abruptly at ``t_peak``; we
    replace the step by its convolution with a Gaussian of width ``smoothing_gyr`` (0.1 Gyr):
    rate = rate_unhalted(t) Phi((t_peak - t) / sigma), and M_h = M_unhalted - int rate_unhalted
    (1 - Phi) dt, so that M_h and its rate stay exactly consistent (d M_h/dt = rate).  Halos
    with t_peak = t0 (diffmahpop's clip: "still growing") are not halted.

    diffmahpop's realised z=0 mass scatters around the requested one (typically 0.03 dex);
    each history is rescaled by a constant factor (a shift of diffmah's logm0) so that
    log10 M_h(t0) equals the stratified draw exactly.  diffmahpop also clips t_peak / t0 at
    0.05: about 1.4 % of centrals pile up there (halted at 0.69 Gyr, realised z=0 mass off by
    up to 1.7 dex); such draws, and any whose realised z=0 mass misses the request by more
    than 0.3 dex, are redrawn with fresh keys (deterministic; provenance ``n_redrawn``).

    Caveat: diffmah's rolling power law, extrapolated to t < 1 Gyr, puts M_h >= 1e9 Msun very
    early for massive halos (median t_start ~ 0.1-0.2 Gyr for log10 M_h(z=0) >= 11.5).  A halo
    already above the threshold at the first grid time starts there (t_start = times[0] =
    0.1 Gyr, with M_h(t_start) > 1e9 Msun); provenance counts them (``n_start_at_grid_min``).

Second source: merger-tree main branches from a file (:meth:`HaloPopulation.from_file`)
    CSV or HDF5; format, checks and processing in :mod:`sapphire.halo_files`.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from scipy import interpolate, special
from scipy.integrate import cumulative_trapezoid

from . import cosmology as cosmo_mod
from .config import DEFAULT_CONFIG, PLANCK15, Cosmology, ModelConfig
from .halo_files import read_main_branches, write_halo_file

Array = jnp.ndarray
Provenance = tuple[tuple[str, str], ...]

__all__ = ["HaloForcing", "HaloPopulation", "common_time_grid", "set_provenance"]

#: Default number of points of the common time grid.
DEFAULT_N_TIMES = 384
#: Default Gaussian width (Gyr) of the rate smoothing.
DEFAULT_SMOOTHING_GYR = 0.1
#: Redraw a diffmah history whose realised log10 M_h(t0) misses the requested one by more.
_MAX_LOGM0_MISMATCH_DEX = 0.3
#: diffmahpop's lower clip of t_peak / t0 for centrals (UTP_MIN in tp_pdf_cens_flex).
_DIFFMAH_TPEAK_FLOOR = 0.05


def common_time_grid(
    n_times: int = DEFAULT_N_TIMES,
    cosmo: Cosmology = PLANCK15,
    t_min: float = 0.1,
    tau: float = 1.0,
) -> np.ndarray:
    """Common time grid [Gyr], shape (n_times,), from ``t_min`` to t0 (exactly).

    Uniform in s = t + tau ln(t / t_min): dt ~ (ds / tau) t at t << tau (constant relative
    resolution), dt ~ ds at t >> tau.  Inverse: t = tau W((t_min / tau) exp(s / tau)), with W
    the Lambert function.
    """
    if n_times < 4:
        raise ValueError(f"n_times must be >= 4, got {n_times}")
    t0 = cosmo_mod.present_age(cosmo)
    if not 0.0 < t_min < t0:
        raise ValueError(f"t_min must be in (0, t0={t0:.4f}) Gyr, got {t_min}")
    s = np.linspace(t_min, t0 + tau * math.log(t0 / t_min), n_times)
    # (t/tau) exp(t/tau) = (t_min/tau) exp(s/tau); write the argument in logs to avoid overflow.
    log_arg = math.log(t_min / tau) + s / tau
    times = tau * np.real(special.lambertw(np.exp(log_arg)))
    times[0], times[-1] = t_min, t0
    return times


_LN10 = math.log(10.0)


class HaloForcing(eqx.Module):
    """Smooth forcing of ONE halo: ``(M_h [Msun], dM_h/dt [Msun/Gyr]) = forcing(t [Gyr])``.

    ``coeffs`` = (d, c, b, a) diffrax cubic coefficients, each (n_t - 1, 2); column 0
    interpolates log10 M_h, column 1 sqrt(dM_h/dt).  A stacked forcing (leading halo axis on
    every leaf, from :meth:`HaloPopulation.forcing`) vmaps with ``in_axes=0``.
    """

    times: Array  # (n_t,) Gyr
    coeffs: tuple[Array, Array, Array, Array]  # each (n_t - 1, 2)
    t_start: Array  # () Gyr, first time M_h >= halo_start_mass
    log_mhalo_z0: Array  # () log10 Msun at t0

    @property
    def interpolation(self) -> diffrax.CubicInterpolation:
        """The underlying ``diffrax.CubicInterpolation`` of (log10 M_h, sqrt(rate))."""
        return diffrax.CubicInterpolation(self.times, self.coeffs)

    def __call__(self, t: ArrayLike) -> tuple[Array, Array]:
        """Halo mass [Msun] and accretion rate [Msun/Gyr] (>= 0) at scalar time ``t`` [Gyr].

        C2 inside the grid; ``t`` is clamped to [times[0], times[-1]] so it stays finite outside.
        """
        t = jnp.clip(t, self.times[0], self.times[-1])
        y = self.interpolation.evaluate(t)
        return jnp.exp(_LN10 * y[..., 0]), y[..., 1] ** 2


def _spline_coefficients(
    times: np.ndarray, log_mhalo: np.ndarray, mhalo_rate: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """diffrax (d, c, b, a) coefficients, each (n_halo, n_t - 1, 2), of not-a-knot cubic splines
    of log10 M_h and sqrt(rate) along the time axis."""
    ys = np.stack([log_mhalo, np.sqrt(mhalo_rate)], axis=-1)  # (n_halo, n_t, 2)
    spline = interpolate.CubicSpline(times, ys, axis=1, bc_type="not-a-knot")
    c = spline.c  # (4, n_t - 1, n_halo, 2), highest power first
    d, c2, b, a = (np.ascontiguousarray(np.moveaxis(c[k], 1, 0)) for k in range(4))
    return d, c2, b, a


def _start_times(
    times: np.ndarray,
    log_mhalo: np.ndarray,
    coeffs: tuple[np.ndarray, ...],
    log_threshold: float,
    exists_from: np.ndarray,
    labels: Sequence[str],
) -> np.ndarray:
    """First time the log10 M_h spline reaches ``log_threshold``, found by bisection on the
    cubic of the first grid interval whose right node is >= threshold (times[0] if the first
    node already is); never before ``exists_from`` (a halo's first tree entry)."""
    d, c, b, a = (x[..., 0] for x in coeffs)
    n_halo = log_mhalo.shape[0]
    above = log_mhalo >= log_threshold
    never = ~above.any(axis=1)
    if never.any():
        i = int(np.argmax(never))
        raise ValueError(
            f"halo {labels[i]} never reaches M_h >= 10^{log_threshold:.3f} Msun "
            f"(max log10 M_h = {log_mhalo[i].max():.3f})"
        )
    first = np.argmax(above, axis=1)
    t_start = np.full(n_halo, times[0])
    inner = first > 0
    k = first[inner] - 1
    rows = np.nonzero(inner)[0]
    lo = np.zeros(k.size)
    hi = times[k + 1] - times[k]
    dd, cc, bb, aa = d[rows, k], c[rows, k], b[rows, k], a[rows, k]
    for _ in range(64):  # bisection: p(lo) < threshold <= p(hi)
        mid = 0.5 * (lo + hi)
        val = aa + mid * (bb + mid * (cc + mid * dd))
        below = val < log_threshold
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    t_start[rows] = times[k] + 0.5 * (lo + hi)
    return np.maximum(t_start, exists_from)


def set_provenance(provenance: Provenance, **items: Any) -> Provenance:
    """Return ``provenance`` (a tuple of (key, value) string pairs, as in
    ``HaloPopulation.provenance``) with the given keys replaced (or appended), values as strings."""
    new = {k: str(v) for k, v in items.items()}
    kept = tuple((k, v) for k, v in provenance if k not in new)
    return kept + tuple(new.items())


class HaloPopulation(eqx.Module):
    """Many halos on one common time grid, with precomputed spline coefficients.

    Arrays: ``times`` (n_t,) Gyr; ``log_mhalo`` (n_halo, n_t) log10 Msun; ``mhalo_rate``
    (n_halo, n_t) Msun/Gyr (smoothed, >= 0, 0 before a halo exists); ``t_start`` (n_halo,)
    Gyr, first time M_h >= ``config.halo_start_mass`` (crossing of the spline, found by
    bisection; times[0] if the halo is already above it there); ``coeffs`` = (d, c, b, a), each
    (n_halo, n_t - 1, 2) (columns log10 M_h, sqrt rate).  ``provenance`` is static and
    hashable: a tuple of (key, value) string pairs.
    """

    times: Array
    log_mhalo: Array
    mhalo_rate: Array
    t_start: Array
    coeffs: tuple[Array, Array, Array, Array]
    provenance: Provenance = eqx.field(static=True, default=())

    # ------------------------------------------------------------------ properties
    @property
    def n_halos(self) -> int:
        return int(self.log_mhalo.shape[0])

    @property
    def n_times(self) -> int:
        return int(self.times.shape[0])

    @property
    def log_mhalo_z0(self) -> Array:
        """log10 M_h(t0) [Msun], shape (n_halo,)."""
        return self.log_mhalo[:, -1]

    def forcing(self) -> HaloForcing:
        """Stacked :class:`HaloForcing` with a leading halo axis on every leaf (vmap in_axes=0)."""
        n = self.n_halos
        return HaloForcing(
            times=jnp.broadcast_to(self.times, (n, self.n_times)),
            coeffs=self.coeffs,
            t_start=self.t_start,
            log_mhalo_z0=self.log_mhalo_z0,
        )

    def subset(self, indices: ArrayLike) -> HaloPopulation:
        """The halos at ``indices`` (integer indices or a boolean mask), in that order."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.nonzero(idx)[0]
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -self.n_halos or idx.max() >= self.n_halos):
            raise IndexError(f"halo index out of range for {self.n_halos} halos: {idx}")
        prov = set_provenance(self.provenance, n_halos=idx.size, subset_of=self.fingerprint())
        return HaloPopulation(
            times=self.times,
            log_mhalo=self.log_mhalo[idx],
            mhalo_rate=self.mhalo_rate[idx],
            t_start=self.t_start[idx],
            coeffs=tuple(c[idx] for c in self.coeffs),  # type: ignore[arg-type]
            provenance=prov,
        )

    def fingerprint(self) -> str:
        """Short (16 hex digits) sha256 of times, log_mhalo, mhalo_rate and t_start."""
        digest = hashlib.sha256()
        for arr in (self.times, self.log_mhalo, self.mhalo_rate, self.t_start):
            a = np.ascontiguousarray(np.asarray(arr, dtype=np.float64))
            digest.update(str(a.shape).encode())
            digest.update(a.tobytes())
        return digest.hexdigest()[:16]

    def to_file(self, path: str | os.PathLike) -> Path:
        """Write the common-grid histories (time_gyr, mhalo_msun) in the format that
        :meth:`from_file` reads; CSV or HDF5 chosen by suffix
        (:func:`sapphire.halo_files.write_halo_file`).  Returns the path."""
        mass = 10.0 ** np.asarray(self.log_mhalo)
        return write_halo_file(path, np.asarray(self.times), mass, self.provenance, self.fingerprint())

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_arrays(
        cls,
        times: ArrayLike,
        log_mhalo: ArrayLike,
        mhalo_rate: ArrayLike,
        config: ModelConfig = DEFAULT_CONFIG,
        provenance: Provenance = (),
        exists_from: ArrayLike | None = None,
        labels: Sequence[str] | None = None,
    ) -> HaloPopulation:
        """Build a population from histories already on a common grid.

        ``times`` (n_t,) Gyr, increasing; ``log_mhalo`` (n_halo, n_t) log10 Msun (finite);
        ``mhalo_rate`` (n_halo, n_t) Msun/Gyr (>= 0, already smooth); ``exists_from``
        (n_halo,) Gyr: t_start is never earlier (default: no constraint).  Computes spline
        coefficients and t_start.
        """
        times = np.asarray(times, dtype=np.float64)
        log_mhalo = np.atleast_2d(np.asarray(log_mhalo, dtype=np.float64))
        mhalo_rate = np.atleast_2d(np.asarray(mhalo_rate, dtype=np.float64))
        n_halo, n_t = log_mhalo.shape
        if times.ndim != 1 or times.size != n_t or mhalo_rate.shape != log_mhalo.shape:
            raise ValueError(
                f"shape mismatch: times {times.shape}, log_mhalo {log_mhalo.shape}, mhalo_rate {mhalo_rate.shape}"
            )
        if np.any(np.diff(times) <= 0):
            raise ValueError("times must be strictly increasing")
        if not (np.all(np.isfinite(log_mhalo)) and np.all(np.isfinite(mhalo_rate))):
            raise ValueError("log_mhalo and mhalo_rate must be finite")
        if np.any(mhalo_rate < 0):
            raise ValueError("mhalo_rate must be >= 0")
        labels = list(labels) if labels is not None else [str(i) for i in range(n_halo)]
        exists = np.full(n_halo, -np.inf) if exists_from is None else np.asarray(exists_from, float)
        coeffs = _spline_coefficients(times, log_mhalo, mhalo_rate)
        t_start = _start_times(times, log_mhalo, coeffs, math.log10(config.halo_start_mass), exists, labels)
        provenance = set_provenance(
            provenance,
            n_halos=n_halo,
            n_times=n_t,
            halo_start_mass=config.halo_start_mass,
            n_start_at_grid_min=int(np.sum(t_start <= times[0])),
        )
        return cls(
            times=jnp.asarray(times),
            log_mhalo=jnp.asarray(log_mhalo),
            mhalo_rate=jnp.asarray(mhalo_rate),
            t_start=jnp.asarray(t_start),
            coeffs=tuple(jnp.asarray(c) for c in coeffs),  # type: ignore[arg-type]
            provenance=provenance,
        )

    @classmethod
    def from_diffmah(
        cls,
        n_halos: int,
        logm_min: float = 10.0,
        logm_max: float = 12.5,
        seed: int = 0,
        config: ModelConfig = DEFAULT_CONFIG,
        n_times: int = DEFAULT_N_TIMES,
        smoothing_gyr: float = DEFAULT_SMOOTHING_GYR,
    ) -> HaloPopulation:
        """Central-halo histories from diffmahpop (``mc_cenpop``, default parameters).

        log10 M_h(t0) is stratified-uniform in [logm_min, logm_max] (one draw per equal-width
        bin, seeded, ascending) and hit exactly (constant rescaling of each history).  The
        halt at t_peak is Gaussian-smoothed with width ``smoothing_gyr`` [Gyr]; see the
        module docstring.  Deterministic for a given seed.
        """
        import jax
        from diffmah import __version__ as diffmah_version
        from diffmah.diffmah_kernels import mah_halopop
        from diffmah.diffmahpop_kernels import DEFAULT_DIFFMAHPOP_PARAMS, mc_cenpop

        if n_halos < 1:
            raise ValueError(f"n_halos must be >= 1, got {n_halos}")
        if not logm_max > logm_min:
            raise ValueError(f"need logm_max > logm_min, got [{logm_min}, {logm_max}]")
        if smoothing_gyr <= 0:
            raise ValueError(f"smoothing_gyr must be > 0, got {smoothing_gyr}")
        cosmo = config.cosmology
        t0 = cosmo_mod.present_age(cosmo)
        lgt0 = math.log10(t0)
        times = common_time_grid(n_times, cosmo)

        rng = np.random.default_rng(seed)
        edges = np.linspace(logm_min, logm_max, n_halos + 1)
        lgm = np.sort(edges[:-1] + np.diff(edges) * rng.uniform(size=n_halos))

        key = jax.random.PRNGKey(seed)
        t_grid, lgm_obs, t_obs = jnp.asarray(times), jnp.asarray(lgm), jnp.full(n_halos, t0)

        def draw(k: Any) -> Any:
            return mc_cenpop(DEFAULT_DIFFMAHPOP_PARAMS, t_grid, lgm_obs, t_obs, k, lgt0).mah_params

        def artefacts(p: Any) -> np.ndarray:
            """diffmahpop clips t_peak / t0 at 0.05 (about 1.4 % of centrals pile up there, halted
            at 0.69 Gyr with z=0 masses off by up to 1.7 dex); redraw those, and any halo whose
            realised z=0 mass misses the requested one by more than _MAX_LOGM0_MISMATCH_DEX."""
            _, logm_real = mah_halopop(p, jnp.asarray([t0]), lgt0)
            miss = np.abs(np.asarray(logm_real)[:, 0] - lgm) > _MAX_LOGM0_MISMATCH_DEX
            return miss | (np.asarray(p.t_peak) <= 1.01 * _DIFFMAH_TPEAK_FLOOR * t0)

        params = draw(key)
        bad = artefacts(params)
        n_redrawn = int(bad.sum())
        for attempt in range(1, 51):
            if not bad.any():
                break
            fresh = draw(jax.random.fold_in(key, attempt))
            params = type(params)(*(jnp.where(bad, f, p) for p, f in zip(params, fresh)))
            bad = artefacts(params)
        else:
            raise RuntimeError(f"diffmahpop kept drawing artefact histories for halos {np.nonzero(bad)[0]}")
        t_peak = np.asarray(params.t_peak, dtype=np.float64)
        halted = t_peak < t0 - 1e-3  # diffmahpop clips t_peak at t0 for still-growing halos
        unhalted = params._replace(t_peak=jnp.full(n_halos, 1e3))

        # Fine grid for the halt correction: the common grid plus a uniform sigma/20 grid.
        fine = np.union1d(times, np.arange(times[0], t0, smoothing_gyr / 20.0))
        rate_f, logm_f = mah_halopop(unhalted, jnp.asarray(fine), lgt0)
        rate_f = np.asarray(rate_f, dtype=np.float64) * 1e9  # Msun/yr -> Msun/Gyr
        mass_f = 10.0 ** np.asarray(logm_f, dtype=np.float64)
        keep = np.where(halted[:, None], special.ndtr((t_peak[:, None] - fine) / smoothing_gyr), 1.0)
        lost = cumulative_trapezoid(rate_f * (1.0 - keep), fine, axis=1, initial=0.0)
        mass_f = mass_f - lost
        rate_f = rate_f * keep
        on_grid = np.searchsorted(fine, times)
        mass, rate = mass_f[:, on_grid], rate_f[:, on_grid]

        # diffmah's own (unsmoothed) z=0 mass, for the record, then rescale to the target.
        _, logm_diffmah = mah_halopop(params, jnp.asarray([t0]), lgt0)
        logm_diffmah = np.asarray(logm_diffmah)[:, 0]
        shift = lgm - np.log10(mass[:, -1])
        mass = mass * 10.0 ** shift[:, None]
        rate = rate * 10.0 ** shift[:, None]

        provenance: Provenance = (
            ("source", "diffmah.diffmahpop_kernels.mc_cenpop"),
            ("diffmah_version", str(diffmah_version)),
            ("diffmahpop_params", "DEFAULT_DIFFMAHPOP_PARAMS"),
            ("seed", str(seed)),
            ("logm_min", repr(float(logm_min))),
            ("logm_max", repr(float(logm_max))),
            ("smoothing_gyr", repr(float(smoothing_gyr))),
            ("t0_gyr", repr(t0)),
            ("n_halted", str(int(halted.sum()))),
            ("n_redrawn", str(n_redrawn)),
            ("max_abs_logm0_rescale_dex", f"{np.abs(lgm - logm_diffmah).max():.4f}"),
        )
        return cls.from_arrays(times, np.log10(mass), rate, config=config, provenance=provenance)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        config: ModelConfig = DEFAULT_CONFIG,
        smoothing_gyr: float = DEFAULT_SMOOTHING_GYR,
        n_times: int = DEFAULT_N_TIMES,
    ) -> HaloPopulation:
        """Merger-tree main branches from a CSV or HDF5 file (format, checks and processing:
        :mod:`sapphire.halo_files`).

        Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (one line naming the
        file, and the halo, column or value) for an unreadable file, an unknown suffix, missing
        columns/datasets, implausible units (times not in Gyr, masses not in Msun), samples
        after t0, non-monotonic times, negative or non-finite masses, or a halo that never
        reaches ``config.halo_start_mass``.
        """
        times = common_time_grid(n_times, config.cosmology)
        branches = read_main_branches(path, config, smoothing_gyr, times)
        return cls.from_arrays(
            times,
            branches.log_mhalo,
            branches.mhalo_rate,
            config=config,
            provenance=branches.provenance,
            exists_from=branches.exists_from,
            labels=branches.labels,
        )
