"""Figures of the forecasts (matplotlib, Agg backend; every function writes one PNG).

``corner_overlay``  posteriors overlaid: 1-D histograms on the diagonal, 68/95% contours below
``fisher_ellipses`` 1- and 2-sigma ellipses of Fisher covariances, pair by pair
``recovery_figure`` normalised bias (MAP - truth)/sigma per parameter, per relation set
``error_scaling_figure`` marginal error versus observational-error scale
``modes_corner``    a posterior with several modes, one colour per mode (``corner`` package)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["corner_overlay", "fisher_ellipses", "recovery_figure", "error_scaling_figure", "modes_corner"]

COLOURS = ("C0", "C3", "C2", "C1", "C4", "C5")


def _mass_levels(hist: np.ndarray, masses: Sequence[float]) -> list[float]:
    """Density thresholds enclosing the given probability masses (ascending levels)."""
    flat = np.sort(hist.ravel())[::-1]
    cumulative = np.cumsum(flat) / max(flat.sum(), 1e-300)
    levels = [flat[min(np.searchsorted(cumulative, m), flat.size - 1)] for m in masses]
    return sorted(set(float(v) for v in levels))


def corner_overlay(
    sample_sets: Sequence[np.ndarray],
    labels: Sequence[str],
    names: Sequence[str],
    path,
    *,
    truths=None,
    bins: int = 40,
    title: str = "",
) -> Path:
    """Corner plot of several posteriors overlaid.

    Args:
        sample_sets: arrays (n_draws, n_params) (or (chains, draws, n_params)), same parameters.
        labels: legend label of each set.
        names: parameter names (axis labels).
        path: output PNG.
        truths: optional (n_params,) values marked by lines.
        bins: histogram bins (common range over all sets: 0.5-99.5 percentiles, padded).
    """
    from scipy.ndimage import gaussian_filter

    sets = [np.asarray(s, dtype=np.float64).reshape(-1, np.shape(s)[-1]) for s in sample_sets]
    n = sets[0].shape[1]
    stacked = np.concatenate(sets)
    lo, hi = np.percentile(stacked, 0.5, axis=0), np.percentile(stacked, 99.5, axis=0)
    pad = 0.1 * np.maximum(hi - lo, 1e-12)
    lo, hi = lo - pad, hi + pad
    fig, axes = plt.subplots(n, n, figsize=(2.2 * n + 1, 2.2 * n + 1), squeeze=False)
    for i in range(n):
        for j in range(n):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            for k, s in enumerate(sets):
                colour = COLOURS[k % len(COLOURS)]
                if i == j:
                    ax.hist(
                        s[:, i],
                        bins=bins,
                        range=(lo[i], hi[i]),
                        density=True,
                        histtype="step",
                        color=colour,
                        label=labels[k],
                    )
                else:
                    hist, xe, ye = np.histogram2d(s[:, j], s[:, i], bins=bins, range=[[lo[j], hi[j]], [lo[i], hi[i]]])
                    hist = gaussian_filter(hist, 1.0)
                    levels = _mass_levels(hist, (0.95, 0.68))
                    if len(levels) >= 2 and levels[-1] > 0:
                        xc, yc = 0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1])
                        ax.contour(xc, yc, hist.T, levels=levels, colors=colour, linewidths=1.0)
            if truths is not None:
                ax.axvline(truths[j], color="k", lw=0.6, ls=":")
                if i != j:
                    ax.axhline(truths[i], color="k", lw=0.6, ls=":")
            ax.set_xlim(lo[j], hi[j])
            if i != j:
                ax.set_ylim(lo[i], hi[i])
            else:
                ax.set_yticks([])
            if i == n - 1:
                ax.set_xlabel(names[j])
            else:
                ax.set_xticklabels([])
            if j == 0 and i != 0:
                ax.set_ylabel(names[i])
            elif j != 0:
                ax.set_yticklabels([])
    axes[0, 0].legend(loc="upper left", bbox_to_anchor=(1.05, 1.0), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _ellipse(mean, cov2, n_sigma, n_points=200) -> np.ndarray:
    vals, vecs = np.linalg.eigh(cov2)
    angles = np.linspace(0, 2 * np.pi, n_points)
    circle = np.stack([np.cos(angles), np.sin(angles)])
    return (np.asarray(mean)[:, None] + n_sigma * vecs @ (np.sqrt(np.maximum(vals, 0))[:, None] * circle)).T


def fisher_ellipses(fishers: Sequence, labels: Sequence[str], path, *, n_sigmas=(1.0, 2.0), title: str = "") -> Path:
    """1- and 2-sigma ellipses (Delta chi^2 = n^2 of the 2-D marginal) of Fisher covariances
    (``forecasts.FisherResult``) centred at their points, pair by pair; a non-positive-definite
    matrix is skipped and named in the legend."""
    usable = [(f, lab) for f, lab in zip(fishers, labels)]
    names = fishers[0].names
    n = len(names)
    fig, axes = plt.subplots(
        max(n - 1, 1), max(n - 1, 1), figsize=(2.4 * max(n - 1, 1) + 1, 2.4 * max(n - 1, 1) + 1), squeeze=False
    )
    for i in range(1, n):
        for j in range(n - 1):
            ax = axes[i - 1, j]
            if j >= i:
                ax.axis("off")
                continue
            for k, (f, lab) in enumerate(usable):
                colour = COLOURS[k % len(COLOURS)]
                if f.covariance is None:
                    continue
                sub = f.covariance[np.ix_([j, i], [j, i])]
                for s, style in zip(n_sigmas, ("-", "--", ":")):
                    pts = _ellipse(f.theta[[j, i]], sub, s)
                    ax.plot(
                        pts[:, 0],
                        pts[:, 1],
                        color=colour,
                        ls=style,
                        lw=1.0,
                        label=lab if (s == n_sigmas[0] and i == 1 and j == 0) else None,
                    )
                ax.plot(*f.theta[[j, i]], "+", color=colour)
            if i == n - 1:
                ax.set_xlabel(names[j])
            if j == 0:
                ax.set_ylabel(names[i])
    if n == 1:
        ax = axes[0, 0]
        for k, (f, lab) in enumerate(usable):
            if f.covariance is not None:
                ax.errorbar([k], f.theta, yerr=f.sigmas, fmt="o", color=COLOURS[k % len(COLOURS)], label=lab)
        ax.set_ylabel(names[0])
    handles, legend_labels = axes[0, 0].get_legend_handles_labels()
    skipped = [lab for f, lab in usable if f.covariance is None]
    if skipped:
        legend_labels = list(legend_labels) + [f"{lab}: not positive definite" for lab in skipped]
        handles = list(handles) + [plt.Line2D([], [], color="none")] * len(skipped)
    fig.legend(handles, legend_labels, loc="upper right", fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def recovery_figure(report: dict, path) -> Path:
    """Normalised bias (MAP - truth) / sigma_Fisher, one panel per relation set, one box per
    parameter (``forecasts.mock_recovery(...).to_dict()``)."""
    sets = report["relation_sets"]
    names = report["free"]
    fig, axes = plt.subplots(1, len(sets), figsize=(2.6 * len(sets) + 1, 3.2), squeeze=False, sharey=True)
    for ax, entry in zip(axes[0], sets):
        bias = np.array(
            [[np.nan if v is None else v for v in row] for row in entry["normalised_bias"]], dtype=float
        ).reshape(-1, len(names))
        data = [b[np.isfinite(b)] for b in bias.T]
        if any(len(d) for d in data):
            ax.boxplot(data, tick_labels=names, showfliers=True)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_title("+".join(entry["relations"]) + f"\nfail {entry['failure_rate']:.0%}", fontsize=8)
        ax.tick_params(axis="x", rotation=60, labelsize=7)
    axes[0, 0].set_ylabel("(MAP - truth) / sigma")
    fig.tight_layout()
    return _save(fig, path)


def error_scaling_figure(report: dict, path) -> Path:
    """Marginal 1-sigma error per parameter versus the observational-error scale
    (``forecasts.error_scaling_forecast(...).to_dict()``), Fisher solid, HMC dots."""
    names = report["free"]
    scales = np.array([row["sigma_scale"] for row in report["scales"]], dtype=float)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for k, name in enumerate(names):
        colour = f"C{k % 10}"
        fisher = np.array(
            [np.nan if row["fisher_sigma"] is None else row["fisher_sigma"][k] for row in report["scales"]], dtype=float
        )
        ax.plot(scales, fisher, "-", color=colour, label=name)
        hmc = [row.get("hmc_std") for row in report["scales"]]
        if all(h is not None for h in hmc):
            ax.plot(scales, [h[k] for h in hmc], "o", color=colour)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("observational error scale")
    ax.set_ylabel("marginal 1-sigma error")
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def modes_corner(
    samples,
    weights,
    labels,
    names: Sequence[str],
    path,
    *,
    mode_weights=None,
    truths=None,
    bins: int = 30,
    title: str = "",
) -> Path:
    """Corner figure of a posterior with several modes: each mode in its own colour (1-D
    histograms scaled by the mode's weight; 39/86% contours, i.e. 1 and 2 sigma in 2-D), common
    axis ranges, at most 3 ticks an axis so that 8 parameters stay readable.

    Args:
        samples: (N, n_params); weights: (N,) >= 0 (None: equal); labels: (N,) mode index.
        names: parameter names; path: output PNG.
        mode_weights: optional weight of each mode (legend); default the summed ``weights``.
        truths: optional (n_params,) values marked by lines.
    """
    import corner

    samples = np.asarray(samples, dtype=np.float64)
    n_draws, n = samples.shape
    weights = np.ones(n_draws) if weights is None else np.asarray(weights, dtype=np.float64)
    labels = np.asarray(labels)
    if weights.shape != (n_draws,) or labels.shape != (n_draws,) or len(names) != n:
        raise ValueError(
            f"samples (N, n), weights (N,), labels (N,) and n names needed; got {samples.shape}, {weights.shape}, {labels.shape}, {len(names)} names"
        )
    weights = weights / weights.sum()
    modes = sorted(set(labels.tolist()))
    if mode_weights is None:
        mode_weights = [float(weights[labels == m].sum()) for m in modes]
    lo = np.array([_weighted_quantile(samples[:, i], weights, 0.001) for i in range(n)])
    hi = np.array([_weighted_quantile(samples[:, i], weights, 0.999) for i in range(n)])
    pad = 0.05 * np.maximum(hi - lo, 1e-12)
    ranges = list(zip(lo - pad, hi + pad))
    size = 1.9 * n + 1.0
    fig = plt.figure(figsize=(size, size))
    for k, m in enumerate(modes):
        sel = labels == m
        if sel.sum() <= n:  # too few draws for contours
            continue
        colour = COLOURS[k % len(COLOURS)]
        corner.corner(
            samples[sel],
            weights=weights[sel],
            bins=bins,
            range=ranges,
            color=colour,
            fig=fig,
            labels=list(names),
            levels=(1 - np.exp(-0.5), 1 - np.exp(-2.0)),
            smooth=1.0,
            plot_datapoints=False,
            plot_density=False,
            fill_contours=False,
            max_n_ticks=3,
            labelpad=0.08,
            label_kwargs={"fontsize": 11},
            hist_kwargs={"linewidth": 1.3},
            contour_kwargs={"linewidths": 1.1},
            truths=truths if k == 0 else None,
            truth_color="k",
        )
    axes = np.array(fig.get_axes()).reshape(n, n)
    for i in range(n):  # each corner call rescales the diagonal to its own histogram: show all
        heights = [p.get_xy()[:, 1].max() for p in axes[i, i].patches if len(p.get_xy())]
        if heights:
            axes[i, i].set_ylim(0, 1.1 * max(heights))
    for ax in axes.ravel():
        ax.tick_params(labelsize=8)
    handles = [plt.Line2D([], [], color=COLOURS[k % len(COLOURS)], lw=2) for k in range(len(modes))]
    fig.legend(
        handles,
        [f"mode {m}: weight {w:.3f}" for m, w in zip(modes, mode_weights)],
        loc="upper right",
        fontsize=12,
        frameon=False,
        bbox_to_anchor=(0.98, 0.98),
    )
    if title:
        fig.suptitle(title, fontsize=13)
    return _save(fig, path)


def _weighted_quantile(x: np.ndarray, w: np.ndarray, q: float) -> float:
    order = np.argsort(x)
    cumulative = np.cumsum(w[order])
    return float(x[order][min(np.searchsorted(cumulative, q * cumulative[-1]), x.size - 1)])


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
