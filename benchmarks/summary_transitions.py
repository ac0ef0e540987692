"""Where are the exact summaries sharp?  Scan one parameter across its prior range.

    python benchmarks/summary_transitions.py [--param A_etaM] [--halos 128] [--steps 61] [--bases 3]
        [--low L --high H]

``--low``/``--high`` restrict the scan to [L, H] (default: the whole prior range); with a step
of 0.01 (e.g. ``--low -0.5 --high 1.0 --steps 151``) the printed per-relation statistics are the
max and 99th percentile |second difference| (sigma_obs per step) and the largest |derivative|
(sigma_obs per prior width), also written to ``--out`` .json.

At each of ``--bases`` base points (the prior centre, then uniform draws, seed 1) the chosen
parameter is stepped over its whole prior range; each step is one ``Model.summaries_with_jacobian``
call.  Writes the summaries (in units of sigma_obs, centred) and their exact derivative (sigma_obs
per prior width) to ``--out`` (.npz + .png).  Used to explain where the emulator's errors live
(docs/design.md s.9): the summaries change regime over ~0.1-0.3 in A_etaM at low mass loading.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import sapphire

sapphire.set_host_device_count()

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

RELATION_COLOURS = {"smhm": "C0", "gas_ratio": "C1", "mzr": "C2"}


def scan(
    param: str,
    n_halos: int,
    n_steps: int,
    n_bases: int,
    seed: int = 1,
    low: float | None = None,
    high: float | None = None,
) -> dict[str, np.ndarray]:
    prior = sapphire.DEFAULT_PRIOR
    j = prior.names.index(param)
    model = sapphire.Model()
    halos = sapphire.HaloPopulation.from_diffmah(n_halos, seed=0)
    obs = sapphire.Observations.default()
    sigma = np.asarray(obs.sigma)
    width = float(prior.width[j])
    grid = np.linspace(prior.low[j] if low is None else low, prior.high[j] if high is None else high, n_steps)
    rng = np.random.default_rng(seed)
    bases = [np.asarray(prior.centre)] + [rng.uniform(prior.low, prior.high) for _ in range(n_bases - 1)]
    values, derivatives = [], []
    for b, base in enumerate(bases):
        rows, drows = [], []
        for x in grid:
            theta = base.copy()
            theta[j] = x
            summaries, jacobian = model.summaries_with_jacobian(theta, halos, obs)
            rows.append(np.asarray(summaries.mean) / sigma)
            drows.append(np.asarray(jacobian)[:, j] / sigma * width)
        values.append(rows)
        derivatives.append(drows)
        print(f"base {b + 1}/{n_bases} done", flush=True)
    return {
        "grid": grid,
        "bases": np.array(bases),
        "values": np.array(values),
        "derivatives": np.array(derivatives),
        "names": np.array(summaries.names),
        "param": param,
    }


def plot(result: dict, path: Path) -> None:
    n_bases = result["values"].shape[0]
    fig, axes = plt.subplots(n_bases, 2, figsize=(11, 3.2 * n_bases), squeeze=False)
    for b in range(n_bases):
        for i, name in enumerate(result["names"]):
            colour = RELATION_COLOURS[str(name).split("@")[0]]
            v = result["values"][b, :, i]
            axes[b, 0].plot(result["grid"], v - v.mean(), colour, lw=0.7)
            axes[b, 1].plot(result["grid"], result["derivatives"][b, :, i], colour, lw=0.7)
        axes[b, 0].set_ylabel(f"base {b}: summary - mean [sigma_obs]")
        axes[b, 1].set_ylabel("d summary / d param [sigma_obs per prior width]")
    for ax in axes[-1]:
        ax.set_xlabel(str(result["param"]))
    axes[0, 0].set_title("blue SMHM, orange gas ratio, green MZR")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def transition_statistics(result: dict) -> dict[str, dict[str, float]]:
    """Per relation, over every base point and summary: max and 99th percentile |second
    difference| of the summaries along the grid (sigma_obs per grid step) and max |derivative|
    (sigma_obs per prior width)."""
    relation = np.array([str(n).split("@")[0] for n in result["names"]])
    second = np.abs(np.diff(result["values"], n=2, axis=1))  # (bases, steps - 2, S)
    deriv = np.abs(result["derivatives"])
    out = {}
    for name in dict.fromkeys(relation):
        cols = relation == name
        d2 = second[..., cols]
        out[name] = {
            "max_second_difference": float(np.nanmax(d2)),
            "p99_second_difference": float(np.nanpercentile(d2, 99)),
            "max_abs_derivative": float(np.nanmax(deriv[..., cols])),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--param", default="A_etaM", choices=sapphire.DEFAULT_PRIOR.names)
    parser.add_argument("--halos", type=int, default=128)
    parser.add_argument("--steps", type=int, default=61)
    parser.add_argument("--bases", type=int, default=3)
    parser.add_argument("--low", type=float, default=None, help="start of the scan (default: prior low)")
    parser.add_argument("--high", type=float, default=None, help="end of the scan (default: prior high)")
    parser.add_argument("--out", default="benchmarks/results/emulator/transitions_A_etaM")
    args = parser.parse_args()
    result = scan(args.param, args.halos, args.steps, args.bases, low=args.low, high=args.high)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out.with_suffix(".npz"), **result)
    plot(result, out.with_suffix(".png"))
    d = np.abs(result["derivatives"])
    for b in range(d.shape[0]):
        print(
            f"base {b}: median |dS| {np.median(d[b]):.2f}, max {d[b].max():.1f} sigma_obs per prior width "
            f"(max at {args.param} = {result['grid'][np.unravel_index(d[b].argmax(), d[b].shape)[0]]:.2f})"
        )
    stats = transition_statistics(result)
    step = float(result["grid"][1] - result["grid"][0])
    for name, row in stats.items():
        print(
            f"{name}: |second difference| max {row['max_second_difference']:.3f}, p99 "
            f"{row['p99_second_difference']:.3f} sigma_obs per {step:.3g} step; max |derivative| "
            f"{row['max_abs_derivative']:.1f} sigma_obs per prior width"
        )
    out.with_suffix(".json").write_text(json.dumps({"step": step, "statistics": stats}, indent=1))


if __name__ == "__main__":
    main()
