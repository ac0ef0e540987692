"""Same model, two machines: do a GPU's states and Jacobians match the CPU's?

    python benchmarks/compare_devices.py save OUT.npz [--halos 256]    # on each machine
    python benchmarks/compare_devices.py compare CPU.npz GPU.npz        # anywhere

``save`` evolves the seeded diffmah halos at the prior centre and at the stiff corner and stores
the z = 0 log states, exact Jacobians, success flags and step counts with the machine's name.
``compare`` prints, per point, the largest state difference [dex] and the median / max relative
Jacobian difference on entries above 1e-3 (the validation's threshold), and the failure counts.
Both runs use the default solver settings, so differences are those of the two backends'
floating-point arithmetic amplified by adaptive stepping (a different accepted step sequence
is a legitimate outcome; it moves results by about the solver tolerance).
"""

from __future__ import annotations

import argparse
import platform
import sys

import numpy as np

POINTS = {
    "centre": None,  # the prior centre
    "stiff_corner": np.array([2.0, -3.0, 0.0, -3.0, -2.0, 0.0, -0.5, 0.0]),
}


def save(path: str, n_halos: int) -> None:
    import jax

    import sapphire

    model = sapphire.Model()
    halos = sapphire.HaloPopulation.from_diffmah(n_halos, seed=0)
    arrays = {}
    for name, theta in POINTS.items():
        theta = np.asarray(sapphire.DEFAULT_PRIOR.centre) if theta is None else theta
        evolution, jacobian = model.evolve_with_jacobian(theta, halos)
        arrays[f"{name}/log_state"] = np.asarray(evolution.log_state)
        arrays[f"{name}/jacobian"] = np.asarray(jacobian)
        arrays[f"{name}/success"] = np.asarray(evolution.success)
        arrays[f"{name}/num_steps"] = np.asarray(evolution.num_steps)
    device = jax.devices()[0]
    arrays["machine"] = np.array(
        f"{platform.machine()} | jax {jax.__version__} on {device.platform}:{device.device_kind}"
    )
    np.savez(path, **arrays)
    print(f"saved {path} ({arrays['machine']})")


def compare(path_a: str, path_b: str) -> int:
    a, b = np.load(path_a), np.load(path_b)
    print(f"A: {a['machine']}\nB: {b['machine']}")
    for name in POINTS:
        ok = a[f"{name}/success"] & b[f"{name}/success"]
        state_diff = np.abs(a[f"{name}/log_state"][ok] - b[f"{name}/log_state"][ok])
        ja, jb = a[f"{name}/jacobian"][ok], b[f"{name}/jacobian"][ok]
        big = np.abs(ja) > 1e-3
        rel = np.abs(ja - jb)[big] / np.abs(ja)[big]
        print(
            f"{name:13s} failed A/B {int((~a[f'{name}/success']).sum())}/{int((~b[f'{name}/success']).sum())}"
            f"  max |state diff| {state_diff.max():.2e} dex  Jacobian rel. diff median {np.median(rel):.2e}"
            f" p95 {np.percentile(rel, 95):.2e} max {rel.max():.2e}"
            f"  mean steps A/B {a[f'{name}/num_steps'].mean():.0f}/{b[f'{name}/num_steps'].mean():.0f}"
        )
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_save = sub.add_parser("save")
    p_save.add_argument("out")
    p_save.add_argument("--halos", type=int, default=256)
    p_cmp = sub.add_parser("compare")
    p_cmp.add_argument("a")
    p_cmp.add_argument("b")
    args = parser.parse_args(argv)
    if args.command == "save":
        save(args.out, args.halos)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
