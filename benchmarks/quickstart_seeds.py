"""Fresh quickstarts with different seeds: do they reach the same verdict, and how long do they take?

Runs ``sapphire quickstart --scale SCALE --seed S --out OUT/seed_S`` once per seed, each in a fresh
process and a fresh directory (an existing one is refused: the point is fresh runs), times it, and
writes a table of verdict, shift +- Monte-Carlo error per parameter, the exact and emulator ESS
per parameter, the decisive check's rounds and the wall time to ``RESULTS.json`` and ``RESULTS.md``.

    python benchmarks/quickstart_seeds.py --scale small --seeds 1,2,3 --out runs/quickstart_seeds

Run it on an idle machine (the timings are the point); ``--exact-budget`` passes through.
Install time is not included (add the ~1 min of ``pip install -e .`` by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_one(scale: str, seed: int, out: Path, exact_budget: float | None) -> dict:
    """One fresh quickstart in a subprocess; its summary plus the wall time and exit status."""
    command = [
        sys.executable,
        "-m",
        "sapphire.cli",
        "quickstart",
        "--scale",
        scale,
        "--seed",
        str(seed),
        "--out",
        str(out),
        "--quiet",
    ]
    if exact_budget is not None:
        command += ["--exact-budget", str(exact_budget)]
    started = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    summary_path = out / "summary.json"
    if not summary_path.exists():
        return {
            "seed": seed,
            "exit_status": code,
            "wall_s": round(wall, 1),
            "verdict": None,
            "error": f"no summary.json (see {out.parent / (out.name + '.log')})",
        }
    return row_from_summary(seed, code, wall, json.loads(summary_path.read_text()))


def row_from_summary(seed: int, code: int, wall: float, summary: dict) -> dict:
    """The table row of one quickstart's ``summary.json``."""
    if "parameters" not in summary["crossval"]:  # several modes: the check ran mode by mode
        return {
            "seed": seed,
            "exit_status": code,
            "wall_s": round(wall, 1),
            "verdict": summary["verdict"],
            "modes": summary["check_modes"],
        }
    params = summary["crossval"]["parameters"]
    check = summary["decisive_check"]
    return {
        "seed": seed,
        "exit_status": code,
        "wall_s": round(wall, 1),
        "verdict": summary["verdict"],
        "parameters": [p["name"] for p in params],
        "shift": [p["shift_in_reference_sigma"] for p in params],
        "shift_se": [p["shift_se"] for p in params],
        "width_ratio": [p["width_ratio"] for p in params],
        "width_ratio_se": [p["width_ratio_se"] for p in params],
        "auc": summary["crossval"]["auc"],
        "auc_se": summary["crossval"]["auc_se"],
        "exact_ess": [p["reference_ess"] for p in params],
        "emulator_ess": [p["candidate_ess"] for p in params],
        "rounds": len(check["rounds"]),
        "stopped": check["stopped"],
        "check_s": check["spent_s"],
        "exact_draws_per_chain": check["rounds"][-1]["exact_draws"],
        "advice": summary.get("advice", ""),
        "stage_seconds": {row["stage"]: row["seconds"] for row in summary["stages"]},
        "emulator_map": summary["emulator_map"]["line"],
        "cgm_fraction_cooling": summary["cgm_regime"]["fraction_cooling"],
        "reweighting": summary["crossval"].get("reweighting"),
    }


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"# Fresh quickstarts (`--scale {meta['scale']}`, seeds {', '.join(str(r['seed']) for r in rows)})",
        "",
        f"{meta['machine']}; {meta['date']}; install not included.",
        "",
        "| seed | verdict (exit) | shift +- MC error per parameter (sigma) | width ratio | AUC | ESS exact | ESS emulator | "
        "reweighted shift (verdict, Pareto k) | rounds (stopped) | wall (min) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if r["verdict"] is None:
            lines.append(
                f"| {r['seed']} | error (exit {r['exit_status']}) | {r['error']} | | | | | | {r['wall_s'] / 60:.1f} |"
            )
            continue
        shifts = ", ".join(f"{n} {s:+.3f} +- {e:.3f}" for n, s, e in zip(r["parameters"], r["shift"], r["shift_se"]))
        ratios = ", ".join(f"{v:.3f} +- {e:.3f}" for v, e in zip(r["width_ratio"], r["width_ratio_se"]))
        rw = r.get("reweighting")
        paired = (
            "n/a"
            if rw is None
            else ", ".join("n/a" if s is None else f"{s:+.3f} +- {e:.3f}" for s, e in zip(rw["shift"], rw["shift_se"]))
            + f" ({rw['verdict']}, {'n/a' if rw['pareto_k'] is None else format(rw['pareto_k'], '.2f')})"
        )
        lines.append(
            f"| {r['seed']} | {r['verdict']} ({r['exit_status']}) | {shifts} | {ratios} | {r['auc']:.3f} +- {r['auc_se']:.3f} | "
            f"{'/'.join(f'{v:.0f}' for v in r['exact_ess'])} | {'/'.join(f'{v:.0f}' for v in r['emulator_ess'])} | "
            f"{paired} | {r['rounds']} ({r['stopped']}) | {r['wall_s'] / 60:.1f} |"
        )
    verdicts = {r["verdict"] for r in rows}
    lines += [
        "",
        f"Verdicts agree: {'yes' if len(verdicts) == 1 and None not in verdicts else 'NO'} ({', '.join(map(str, sorted(verdicts, key=str)))}); "
        f"wall time {min(r['wall_s'] for r in rows) / 60:.1f}-{max(r['wall_s'] for r in rows) / 60:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", default="small", choices=["tiny", "small", "paper"])
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    p.add_argument("--out", default="runs/quickstart_seeds", help="one fresh folder per seed is made under it")
    p.add_argument("--exact-budget", type=float, default=None, help="seconds; default the scale's")
    p.add_argument(
        "--results",
        default=str(ROOT / "benchmarks" / "results" / "quickstart_seeds"),
        help="results path without suffix (.json and .md are written)",
    )
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers; got {args.seeds!r}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folders = [out / f"{args.scale}_seed_{s}" for s in seeds]
    existing = [str(f) for f in folders if f.exists()]
    if existing:
        p.error(f"not fresh: {', '.join(existing)} exist(s); remove them or choose another --out")
    rows = []
    for seed, folder in zip(seeds, folders):
        print(f"seed {seed}: {folder} ...", flush=True)
        rows.append(run_one(args.scale, seed, folder, args.exact_budget))
        r = rows[-1]
        print(f"seed {seed}: {r['verdict']} (exit {r['exit_status']}) in {r['wall_s'] / 60:.1f} min", flush=True)
    meta = {
        "scale": args.scale,
        "seeds": seeds,
        "exact_budget": args.exact_budget,
        "machine": f"{platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "python": sys.version.split()[0],
    }
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=1, default=float))
    results.with_suffix(".md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    verdicts = [r["verdict"] for r in rows]
    return 0 if len(set(verdicts)) == 1 and None not in verdicts else 1


if __name__ == "__main__":
    raise SystemExit(main())
