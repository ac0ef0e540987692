"""Where are the exact summaries sharp?  Scan one parameter across its prior range.

    python benchmarks/summary_transitions.py [--param A_etaM] [--halos 128] [--steps 61] [--bases 3]

At each of ``--bases`` base points (the prior centre, then uniform draws, seed 1) the chosen
parameter is stepped over its whole prior range; each step is one ``Model.summaries_with_jacobian``
call.  Writes the summaries (in units of sigma_obs, centred) and their exact derivative (sigma_obs
per prior width) to ``--out`` (.npz + .png).  Used to explain where the emulator's errors live
(docs/design.md s.9): the summaries change regime over ~0.1-0.3 in A_etaM at low mass loading.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import sapphire

sapphire.set_host_device_count()

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

RELATION_COLOURS = {"smhm": "C0", "gas_ratio": "C1", "mzr": "C2"}


def scan(param: str, n_halos: int, n_steps: int, n_bases: int, seed: int = 1) -> dict[str, np.ndarray]:
    prior = sapphire.DEFAULT_PRIOR
    j = prior.names.index(param)
    model = sapphire.Model()
    halos = sapphire.HaloPopulation.from_diffmah(n_halos, seed=0)
    obs = sapphire.Observations.default()
    sigma = np.asarray(obs.sigma)
    width = float(prior.width[j])
    grid = np.linspace(prior.low[j], prior.high[j], n_steps)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--param", default="A_etaM", choices=sapphire.DEFAULT_PRIOR.names)
    parser.add_argument("--halos", type=int, default=128)
    parser.add_argument("--steps", type=int, default=61)
    parser.add_argument("--bases", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/emulator/transitions_A_etaM")
    args = parser.parse_args()
    result = scan(args.param, args.halos, args.steps, args.bases)
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


if __name__ == "__main__":
    main()
