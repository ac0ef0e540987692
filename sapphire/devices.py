"""Use every CPU core: split a halo batch over several host devices.

XLA runs one vmapped solve on one core.  ``set_host_device_count(n)`` (call it before JAX
first touches a device, like ``numpyro.set_host_device_count``) makes XLA expose ``n`` CPU
devices; :func:`shard_halos` then places a stacked halo forcing across all local devices so
that jit partitions the batch (speed-up measured in docs/design.md s.11).  The same path
spreads a batch over several GPUs.
"""

from __future__ import annotations

import os
import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def set_host_device_count(n: int | None = None) -> None:
    """Expose ``n`` (default: all cores) CPU devices to XLA.  Must run before JAX initialises
    its backend; afterwards it has no effect (checked by :func:`local_device_count`)."""
    n = int(n or os.cpu_count() or 1)
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def local_device_count() -> int:
    return jax.local_device_count()


def shard_halos(tree, n_halo: int):
    """Place every leaf (leading axis = halo) across all local devices when the batch divides
    evenly; otherwise return it unchanged (one device)."""
    devices = jax.local_devices()
    if len(devices) < 2 or n_halo % len(devices):
        return tree
    mesh = Mesh(np.array(devices), ("halo",))
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec("halo")))
