"""Summarise a training-set store: coverage, failures, value ranges, and a figure of the
design's pairwise projections; verify it chunk by chunk (:func:`verify_store`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from sapphire.summaries import MIN_SUPPORT, count_poorly_supported

from .store import TrainingSet, jacobian_rows, open_group, open_training_set, read_rows, scan_chunks

#: Physical bounds that :func:`verify_store` checks on every done row whose halos all solved:
#: summaries are log10 masses, mass ratios and 12 + log10(O/H) (a few dex to ~12), so |value|
#: beyond 30 dex (1e30) cannot be physical; standard errors lie in [0, 30] dex; Jacobian
#: entries (dex per unit of a parameter) finite and below 1e6 in size (1e6 would mean a 1e-6
#: change of a parameter moves a summary by a dex); supports (effective numbers of halos) >= 0.  All of them finite.  theta lies inside the stored prior box, n_failed in [0, n_halos].
PHYSICAL_BOUNDS = {
    "summaries": (-30.0, 30.0),
    "summary_stderr": (0.0, 30.0),
    "summary_support": (0.0, 1e6),
    "summary_jacobian": (-1e6, 1e6),
}


def summarise(ts: TrainingSet) -> dict[str, Any]:
    """Coverage (rows done), failures (points with failed halos, failed halos in total),
    non-finite rows, and per relation the range of the summaries over the done rows."""
    done = np.asarray(ts.done.compute())
    n_failed = np.asarray(ts.n_failed.compute())
    valid = ts.valid_mask()
    summaries = (
        np.asarray(ts.summaries[np.nonzero(done)[0]].compute()) if done.any() else np.zeros((0, len(ts.summary_names)))
    )
    rows = np.nonzero(valid)[0]
    support = np.asarray(ts.summary_support[rows].compute()) if rows.size else np.zeros((0, len(ts.summary_names)))
    poor = ~(support >= MIN_SUPPORT)  # (valid rows, S)
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
        "value_only_points": int(np.sum(~ts.has_jacobian)),
        "halos": ts.attrs["halos"]["n_halos"],
        "halo_fingerprint": ts.attrs["halos"]["fingerprint"],
        "design": ts.attrs["design"]["batches"],
        "summary_ranges": ranges,
        "poorly_supported": {
            "min_support": MIN_SUPPORT,
            "valid_points_with_any": int(np.sum(count_poorly_supported(support) > 0)),
            "per_summary": {name: int(n) for name, n in zip(ts.summary_names, poor.sum(axis=0)) if n},
        },
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
    fig.suptitle(
        f"{ts.path.name}: {int(done.sum())}/{ts.n_points} done, {int((done & failed).sum())} with failed halos (unit cube)"
    )
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


def _worst(values: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Per row of ``values`` (n, k), the bad entry of largest size (non-finite first)."""
    size = np.where(bad, np.nan_to_num(np.abs(values), nan=np.inf), -1.0)
    return values[np.arange(values.shape[0]), np.argmax(size, axis=1)]


def _out_of_bounds(root, skip: set[tuple[str, int]]) -> list[dict[str, Any]]:
    """Rows whose values break :data:`PHYSICAL_BOUNDS`, the prior box or the halo count,
    block by block (an array's damaged blocks, ``(array, first row)`` in ``skip``, are left
    out)."""
    attrs = dict(root.attrs)
    low, high = np.asarray(attrs["prior"]["low"], float), np.asarray(attrs["prior"]["high"], float)
    n_halos = int(attrs["halos"]["n_halos"])
    n, chunk = root["theta"].shape[0], int(attrs["chunk"])
    has_jacobian = jacobian_rows(attrs, n)  # value-only rows hold NaN Jacobians by design
    flagged: list[dict[str, Any]] = []

    def flag(name: str, start: int, values: np.ndarray, bad: np.ndarray, rows: np.ndarray, allowed: str) -> None:
        worst = _worst(values, bad)
        for i in np.nonzero(rows & bad.any(axis=1))[0]:
            flagged.append({"array": name, "row": start + int(i), "value": float(worst[i]), "allowed": allowed})

    for start in range(0, n, chunk):
        block = slice(start, min(start + chunk, n))
        every = np.ones(block.stop - start, bool)
        if ("theta", start) not in skip:
            theta = read_rows(root, "theta", block)
            flag(
                "theta",
                start,
                theta,
                ~np.isfinite(theta) | (theta < low) | (theta > high),
                every,
                "inside the prior box",
            )
        if ("done", start) in skip or ("n_failed", start) in skip:
            continue
        done, n_failed = read_rows(root, "done", block), read_rows(root, "n_failed", block)
        counts = n_failed[:, None].astype(float)
        flag("n_failed", start, counts, (counts < 0) | (counts > n_halos), done, f"0..{n_halos}")
        solved = done & (n_failed == 0)
        for name, (lo, hi) in PHYSICAL_BOUNDS.items():
            if (name, start) not in skip and solved.any():
                values = read_rows(root, name, block).reshape(block.stop - start, -1)
                flag(
                    name,
                    start,
                    values,
                    ~np.isfinite(values) | (values < lo) | (values > hi),
                    solved & has_jacobian[block] if name == "summary_jacobian" else solved,
                    f"finite, in [{lo:g}, {hi:g}]",
                )
    return flagged


def verify_store(path: str | os.PathLike, progress: bool = False) -> dict[str, Any]:
    """Read every chunk of a store (checksums verified) and check its values.  Returns
    ``damaged``: one entry per chunk that does not decode or is missing where data must be
    (array, chunk key, rows [start, stop), problem; see
    :func:`~training_sets.store.scan_chunks`), and ``out_of_bounds``: one entry per row and
    array whose values break :data:`PHYSICAL_BOUNDS`, the prior box or the halo count
    (array, row, the worst value, what is allowed).  ``ok``: neither found."""
    root = open_group(path)
    damage = scan_chunks(root, progress=progress)
    chunk = int(root.attrs["chunk"])
    skip = {(d.array, d.rows[0] // chunk * chunk) for d in damage}
    flagged = _out_of_bounds(root, skip)
    return {
        "path": str(path),
        "damaged": [
            {"array": d.array, "chunk": d.key, "rows": list(d.rows), "problem": d.problem, "line": d.describe()}
            for d in damage
        ],
        "out_of_bounds": flagged,
        "ok": not damage and not flagged,
    }
