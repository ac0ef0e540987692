"""Strict JSON for every artefact sapphire writes: numpy -> Python, NaN/inf -> null.

The one JSON sanitiser of the package: command outputs, reports, store attributes and emulator
metadata all go through :func:`json_ready`, so a file that one part writes another can read
with any strict JSON parser.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

__all__ = ["json_ready", "write_json"]


def json_ready(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into Python numbers and lists, tuples into
    lists, dict keys into strings, and non-finite floats into ``None`` (recursively)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def write_json(path: str | os.PathLike, payload: Any, indent: int = 1) -> None:
    """Write :func:`json_ready` of ``payload`` to ``path`` as strict JSON (no NaN tokens)."""
    with open(path, "w") as handle:
        handle.write(json.dumps(json_ready(payload), indent=indent, allow_nan=False))
