"""Summarise a training-set store: coverage, failures, value ranges, and a figure of the
design's pairwise projections."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .store import TrainingSet, open_training_set


def summarise(ts: TrainingSet) -> dict[str, Any]:
    """Coverage (rows done), failures (points with failed halos, failed halos in total),
    non-finite rows, and per relation the range of the summaries over the done rows."""
    done = np.asarray(ts.done.compute())
    n_failed = np.asarray(ts.n_failed.compute())
    valid = ts.valid_mask()
    summaries = np.asarray(ts.summaries[np.nonzero(done)[0]].compute()) if done.any() else np.zeros((0, len(ts.summary_names)))
    ranges = {}
    for name, sl in ts.observations.slices.items():
        block = summaries[:, sl]
        finite = block[np.isfinite(block)]
        ranges[name] = [float(finite.min()), float(finite.max())] if finite.size else None
    return {
        "path": str(ts.path),
        "points": ts.n_points,
        "done": int(done.sum()),
        "chunk": ts.chunk,
        "blocks_pending": int(sum(not done[i : i + ts.chunk].all() for i in range(0, ts.n_points, ts.chunk))),
        "points_with_failed_halos": int(np.sum(n_failed > 0)),
        "failed_halos_total": int(np.sum(np.maximum(n_failed, 0))),
        "done_but_not_finite": int(np.sum(done & (n_failed == 0) & ~valid)),
        "valid_points": int(valid.sum()),
        "halos": ts.attrs["halos"]["n_halos"],
        "halo_fingerprint": ts.attrs["halos"]["fingerprint"],
        "design": ts.attrs["design"]["batches"],
        "summary_ranges": ranges,
        "sapphire_version": ts.attrs["sapphire_version"],
        "fingerprint": ts.fingerprint,
        "runs": len(ts.attrs.get("history", [])),
    }


def plot_design(ts: TrainingSet, path: str | os.PathLike) -> Path:
    """Pairwise projections of the design in the unit cube: done points, points with failed
    halos (red), points not yet computed (grey)."""
    import matplotlib.pyplot as plt

    unit = ts.prior.to_unit(np.asarray(ts.theta.compute()))
    done = np.asarray(ts.done.compute())
    failed = np.asarray(ts.n_failed.compute()) > 0
    d = unit.shape[1]
    fig, axes = plt.subplots(d, d, figsize=(1.6 * d, 1.6 * d), squeeze=False)
    groups = [
        (~done, "0.75", "not computed"),
        (done & ~failed, "tab:blue", "done"),
        (done & failed, "tab:red", "failed halos"),
    ]
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if i == j:
                ax.hist(unit[:, i], bins=20, range=(0, 1), color="tab:blue")
            elif j < i:
                for mask, colour, label in groups:
                    ax.scatter(unit[mask, j], unit[mask, i], s=2, color=colour, label=label, linewidths=0)
                ax.set_xlim(0, 1)
                ax.set_ylim(0, 1)
            else:
                ax.axis("off")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == d - 1:
                ax.set_xlabel(ts.prior.names[j], fontsize=7)
            if j == 0:
                ax.set_ylabel(ts.prior.names[i], fontsize=7)
    handles, labels = axes[1, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", markerscale=4)
    fig.suptitle(f"{ts.path.name}: {int(done.sum())}/{ts.n_points} done, {int((done & failed).sum())} with failed halos (unit cube)")
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def inspect_store(path: str | os.PathLike, figure: str | os.PathLike | None = None) -> dict[str, Any]:
    """:func:`summarise` a store and, if ``figure`` is given, draw :func:`plot_design` there."""
    ts = open_training_set(path)
    summary = summarise(ts)
    if figure is not None:
        summary["figure"] = str(plot_design(ts, figure))
    return summary
