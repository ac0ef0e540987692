"""Figures of the sensitivity analysis and of the prior predictive (matplotlib, Agg).

Every plotting function builds a standalone ``matplotlib.figure.Figure`` (no pyplot state, no
display needed), returns it, and also writes a PNG when ``path`` is given.

* :func:`jacobian_heatmap`: d log10 X / d theta of one halo (states x parameters);
* :func:`sensitivity_vs_mass`: the ensemble view, median |d q / d theta| in halo-mass bins over
  many halos and prior draws, one line per parameter, for q = log10 M_*, log10(M_ISM/M_*) and
  12 + log(O/H) (:data:`SENSITIVITY_QUANTITIES`);
* :func:`prior_predictive_bands`: the three relations' prior predictive (min-max envelope and
  central percentile band over draws), with the data and their error bars, and each relation's
  caveat (e.g. the gas-ratio "means include non-detections") written on its panel.
"""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from .observations import Observations
from .physics import STATE_NAMES
from .prior import PARAMETER_NAMES

__all__ = [
    "SENSITIVITY_QUANTITIES",
    "relation_sensitivities",
    "binned_sensitivity",
    "jacobian_heatmap",
    "sensitivity_vs_mass",
    "prior_predictive_bands",
    "save_and_show",
]

STATE_LABELS: dict[str, str] = {
    "M_star": r"$\log M_*$",
    "M_Z_star": r"$\log M_{Z,*}$",
    "M_ISM": r"$\log M_{\rm ISM}$",
    "M_Z_ISM": r"$\log M_{Z,\rm ISM}$",
    "M_CGM": r"$\log M_{\rm CGM}$",
    "M_Z_CGM": r"$\log M_{Z,\rm CGM}$",
    "E_th": r"$\log E_{\rm th}$",
}

#: Quantity name -> (axis label, function of a state Jacobian (..., 7, 8) -> (..., 8)).
#: All three are linear combinations of the log-state rows (M_h does not depend on theta).
SENSITIVITY_QUANTITIES: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "log_mstar": (r"$\log M_*$ (and SMHM ratio)", lambda j: j[..., 0, :]),
    "log_gas_ratio": (r"$\log M_{\rm ISM}/M_*$", lambda j: j[..., 2, :] - j[..., 0, :]),
    "oxygen_abundance": (r"$12 + \log({\rm O/H})$", lambda j: j[..., 3, :] - j[..., 2, :]),
}

_COLOURS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#444444"]
_STYLES = ["-", "--", "-", "--", "-", "--", "-", "--"]


def _plot_note(note: str) -> str:
    """A relation's caveat as printed on its panel (without the instruction to print it)."""
    note = re.sub(r"\s*[:;,]?\s*say so on every plot\.?\s*$", ".", note.strip())
    return f"Note: {note}" if note else ""


def _save(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
        fig.savefig(path, dpi=130)
    return fig


def relation_sensitivities(jacobian) -> dict[str, np.ndarray]:
    """d q / d theta for each of :data:`SENSITIVITY_QUANTITIES` from state Jacobians (..., 7, 8)."""
    jac = np.asarray(jacobian, dtype=np.float64)
    if jac.ndim < 2 or jac.shape[-2] != len(STATE_NAMES):
        raise ValueError(f"jacobian must have shape (..., {len(STATE_NAMES)}, n_param); got {jac.shape}")
    return {name: fn(jac) for name, (_, fn) in SENSITIVITY_QUANTITIES.items()}


def binned_sensitivity(log_mhalo, sensitivity, bins) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median |sensitivity| per halo-mass bin and parameter.

    Args:
        log_mhalo: (n_halo,) or (n_draw, n_halo) log10 M_h(z=0) [Msun].
        sensitivity: (n_draw, n_halo, n_param) (or (n_halo, n_param)); NaN entries (failed
            halos) are ignored.
        bins: bin edges in log10 M_h, (n_bins + 1,).

    Returns:
        (bin centres (n_bins,), median |sensitivity| (n_bins, n_param) (NaN for empty bins),
        number of finite (halo, draw) entries per bin (n_bins,)).
    """
    sens = np.asarray(sensitivity, dtype=np.float64)
    if sens.ndim == 2:
        sens = sens[None]
    mass = np.broadcast_to(np.asarray(log_mhalo, dtype=np.float64), sens.shape[:-1])
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bins must be increasing edges, got {edges}")
    n_bins, n_param = edges.size - 1, sens.shape[-1]
    medians = np.full((n_bins, n_param), np.nan)
    counts = np.zeros(n_bins, dtype=int)
    finite = np.all(np.isfinite(sens), axis=-1)
    for b in range(n_bins):
        upper = mass <= edges[b + 1] if b == n_bins - 1 else mass < edges[b + 1]
        sel = (mass >= edges[b]) & upper & finite
        counts[b] = int(sel.sum())
        if counts[b]:
            medians[b] = np.median(np.abs(sens[sel]), axis=0)
    return 0.5 * (edges[:-1] + edges[1:]), medians, counts


def jacobian_heatmap(
    jacobian,
    *,
    state_names: Sequence[str] = STATE_NAMES,
    parameter_names: Sequence[str] = PARAMETER_NAMES,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Heat map of one halo's Jacobian d log10 X / d theta (rows: states, columns: parameters),
    on a symmetric diverging scale, with the values written in the cells."""
    jac = np.asarray(jacobian, dtype=np.float64)
    if jac.shape != (len(state_names), len(parameter_names)):
        raise ValueError(f"jacobian must have shape ({len(state_names)}, {len(parameter_names)}); got {jac.shape}")
    fig = Figure(figsize=(1.0 * len(parameter_names) + 2.5, 0.6 * len(state_names) + 2.0), layout="constrained")
    ax = fig.add_subplot()
    finite = np.isfinite(jac)
    vmax = float(np.max(np.abs(jac[finite]))) if finite.any() else 1.0
    vmax = vmax if vmax > 0 else 1.0
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.8")
    image = ax.imshow(np.ma.masked_invalid(jac), cmap=cmap, vmin=-vmax, vmax=vmax, aspect="auto")
    for i in range(jac.shape[0]):
        for j in range(jac.shape[1]):
            value = jac[i, j]
            text = "nan" if not np.isfinite(value) else f"{value:.2g}"
            colour = "white" if np.isfinite(value) and abs(value) > 0.6 * vmax else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(parameter_names)), list(parameter_names), rotation=30, ha="right")
    ax.set_yticks(range(len(state_names)), [STATE_LABELS.get(n, n) for n in state_names])
    ax.set_xlabel(r"parameter $\theta$")
    fig.colorbar(image, ax=ax, label=r"$\partial \log_{10} X / \partial \theta$")
    ax.set_title(title or "Jacobian at z = 0")
    return _save(fig, path)


def sensitivity_vs_mass(
    log_mhalo,
    jacobian,
    bins=None,
    *,
    parameter_names: Sequence[str] = PARAMETER_NAMES,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Ensemble view: median |d q / d theta| versus halo mass, one line per parameter, one panel
    per quantity of :data:`SENSITIVITY_QUANTITIES`.

    Args:
        log_mhalo: (n_halo,) or (n_draw, n_halo) log10 M_h(z=0).
        jacobian: state Jacobians, (n_draw, n_halo, 7, n_param) (or (n_halo, 7, n_param)); NaN
            (failed halos) ignored.
        bins: halo-mass bin edges (default: 8 equal bins over the halos' range).
    """
    jac = np.asarray(jacobian, dtype=np.float64)
    mass = np.asarray(log_mhalo, dtype=np.float64)
    if bins is None:
        finite_mass = mass[np.isfinite(mass)]
        bins = np.linspace(finite_mass.min(), finite_mass.max() + 1e-9, 9)
    sens = relation_sensitivities(jac)
    fig = Figure(figsize=(4.6 * len(sens), 4.4), layout="constrained")
    axes = fig.subplots(1, len(sens), sharex=True)
    for ax, (name, values) in zip(np.atleast_1d(axes), sens.items()):
        centres, medians, counts = binned_sensitivity(mass, values, bins)
        for p, pname in enumerate(parameter_names):
            ax.plot(centres, medians[:, p], _STYLES[p % 8], color=_COLOURS[p % 8], marker="o", ms=3, label=pname)
        ax.set_yscale("log")
        ax.set_xlabel(r"$\log_{10} M_h(z=0)$ [M$_\odot$]")
        ax.set_ylabel(r"median $|\partial q / \partial \theta|$")
        ax.set_title(f"q = {SENSITIVITY_QUANTITIES[name][0]}")
        ax.grid(alpha=0.3, which="both")
    np.atleast_1d(axes)[0].legend(fontsize=8, ncol=2)
    n_draw = jac.shape[0] if jac.ndim == 4 else 1
    fig.suptitle(title or f"Parameter sensitivity versus halo mass ({n_draw} prior draws)")
    return _save(fig, path)


def prior_predictive_bands(
    obs: Observations,
    draws,
    *,
    percentiles: tuple[float, float] = (2.5, 97.5),
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Prior predictive of each relation of ``obs``: min-max envelope (light) and the central
    ``percentiles`` band (dark) of the summary means over draws, their median (dashed), the data
    with 1-sigma error bars, and the relation's note on its panel.

    Args:
        obs: the observations (panels in ``obs.relations`` order).
        draws: (n_draw, obs.n_summary) summary means (``Model.summaries(...).mean`` per draw);
            NaN entries (too few valid halos) are ignored point by point.
    """
    means = np.atleast_2d(np.asarray(draws, dtype=np.float64))
    if means.shape[-1] != obs.n_summary:
        raise ValueError(f"draws must have shape (n_draw, {obs.n_summary}); got {means.shape}")
    fig = Figure(figsize=(5.0 * len(obs.relations), 4.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(obs.relations)))
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = np.nanmin(means, axis=0), np.nanmax(means, axis=0)
            p_lo, p_hi = np.nanpercentile(means, percentiles, axis=0)
            median = np.nanmedian(means, axis=0)
    for ax, rel in zip(axes, obs.relations):
        sl = obs.slices[rel.name]
        ax.fill_between(rel.x, lo[sl], hi[sl], color="C0", alpha=0.2, lw=0, label="min-max envelope")
        ax.fill_between(
            rel.x,
            p_lo[sl],
            p_hi[sl],
            color="C0",
            alpha=0.45,
            lw=0,
            label=f"{percentiles[0]:g}-{percentiles[1]:g} percentile band",
        )
        ax.plot(rel.x, median[sl], "--", color="C0", lw=1, label="median")
        ax.errorbar(rel.x, rel.y, yerr=rel.sigma, fmt="o", color="k", ms=4, capsize=2, label="data")
        ax.set_xlabel(rel.x_label or "x")
        ax.set_ylabel(rel.y_label or "y")
        ax.set_title(rel.name)
        note = _plot_note(rel.note)
        if note:
            # in the bottom corner away from the data (rising relation: bottom right)
            rising = rel.y[-1] > rel.y[0]
            ax.text(
                0.98 if rising else 0.02,
                0.02,
                "\n".join(textwrap.wrap(note, 46)),
                transform=ax.transAxes,
                fontsize=7,
                va="bottom",
                ha="right" if rising else "left",
                bbox=dict(facecolor="white", alpha=0.85, lw=0),
            )
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(title or f"Prior predictive over {means.shape[0]} draws")
    return _save(fig, path)


def save_and_show(fig, path) -> Path:
    """Save a pyplot figure to ``path`` (PNG, 110 dpi), display it inline when running inside
    Jupyter/IPython, and close it.  Returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display(fig)
    except ImportError:
        pass
    plt.close(fig)
    return path
