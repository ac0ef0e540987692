"""A user's table of one observed relation: CSV of (x, y, sigma), read with line-numbered errors."""

from __future__ import annotations

import math
import os
from typing import Union

import numpy as np

from .relation import DEFAULT_LABELS, Relation

__all__ = ["PathLike", "read_relation_csv"]

PathLike = Union[str, "os.PathLike[str]"]

_CSV_COLUMNS = ("x", "y", "sigma")


def read_relation_csv(name: str, path: PathLike) -> Relation:
    """Relation ``name`` from the CSV file ``path`` (format: ``Observations.from_csv``);
    ``FileNotFoundError`` or a ``ValueError`` naming file, line and column."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Observations.from_csv: {name} file {path!r} not found")
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    comments: list[str] = []
    header_line = None
    rows: list[tuple[int, list[str]]] = []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if header_line is None:
                comments.append(line.lstrip("#").strip())
            continue
        if header_line is None:
            header_line = lineno
            columns = tuple(c.strip().lower() for c in line.split(","))
            if columns != _CSV_COLUMNS:
                raise ValueError(f"{path}: line {lineno}: header must be 'x,y,sigma', got {line!r}")
            continue
        rows.append((lineno, [c.strip() for c in line.split(",")]))
    if header_line is None:
        raise ValueError(f"{path}: no header line 'x,y,sigma' found")
    if not rows:
        raise ValueError(f"{path}: no data rows after the header (line {header_line})")
    values = np.empty((len(rows), 3))
    for i, (lineno, cells) in enumerate(rows):
        where = f"{path}: line {lineno} (data row {i + 1})"
        if len(cells) != 3:
            raise ValueError(f"{where}: expected 3 columns x,y,sigma, got {len(cells)}")
        for j, (column, cell) in enumerate(zip(_CSV_COLUMNS, cells)):
            try:
                value = float(cell)
            except ValueError:
                raise ValueError(f"{where}, column {column!r}: {cell!r} is not a number") from None
            if not math.isfinite(value):
                raise ValueError(f"{where}, column {column!r}: {cell!r} is not finite")
            if column == "sigma" and value <= 0.0:
                raise ValueError(f"{where}, column 'sigma': {cell!r} is not > 0")
            values[i, j] = value
        if i > 0 and values[i, 0] <= values[i - 1, 0]:
            raise ValueError(
                f"{where}, column 'x': {cells[0]!r} is not greater than the previous x "
                f"({values[i - 1, 0]!r}); x must be strictly increasing"
            )
    x_label, y_label = DEFAULT_LABELS[name]
    source = f"user CSV {path}"
    if comments:
        source += ": " + " ".join(c for c in comments if c)
    return Relation(
        name=name,
        x=values[:, 0],
        y=values[:, 1],
        sigma=values[:, 2],
        x_label=x_label,
        y_label=y_label,
        source=source,
        note="",
    )
