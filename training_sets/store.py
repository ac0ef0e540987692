"""The training-set store: a Zarr v3 group of design points, summaries and exact gradients.

Layout (``SCHEMA_VERSION`` 2), every array chunked along the design axis N in blocks of
``chunk`` points (one block = one work unit: a worker writes whole blocks, never parts)::

    theta             (N, 8)     float64   design points (physical parameter units)
    summaries         (N, S)     float64   kernel-regression means (dex / 12+log O/H)
    summary_stderr    (N, S)     float64   their standard errors
    summary_support   (N, S)     float64   effective number of halos at each centre (< 3: poorly supported)
    summary_jacobian  (N, S, 8)  float64   d summaries / d theta (exact)
    n_failed          (N,)       int32     halos whose solve failed at that point (-1: not done)
    done              (N,)       bool      row written completely
    halo_log_state    (N, H, 7)  float64   optional: per-halo z = 0 log states
    halos/            times, log_mhalo, mhalo_rate, t_start, coeff_{d,c,b,a}: the population

Attributes (``attrs``): ``schema_version``, ``sapphire_version``, ``model_config``,
``solver``, ``prior``, ``observations`` (with the kernel centres), ``summary_names``,
``halos`` (fingerprint, size, provenance: seed, mass range), ``design`` (its batches: kind,
seed, size), ``chunk``, ``save_states``.  ``history`` (one entry per run: start time, backend,
devices) is the only attribute that is not a function of the inputs; :func:`store_digest`
leaves it out, so two stores computed differently compare equal when their contents are.

Crash safety: Zarr's local store writes each chunk file atomically (temporary file + rename),
and a block's ``done`` flags are written after all its data.  A killed job therefore leaves
every block either complete (``done``) or to be recomputed in full.

Damage (schema 2): every chunk of every array is zstd-compressed and then carries a crc32c
checksum of its bytes (Zarr v3's ``crc32c`` codec), verified whenever it is read; chunks are
written even when they equal the fill value, so a done block has a file for every array.  A
chunk that does not decode (flipped bits, truncation) raises :class:`StoreError` naming the
array, the chunk, its rows and the store; :func:`scan_chunks` lists every unreadable or
missing chunk, ``sapphire inspect --verify`` reports them, and ``sapphire generate --resume``
recomputes their rows (:func:`training_sets.generate.repair_store`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

import sapphire
from sapphire.halos import HaloPopulation
from sapphire.jsonio import json_ready
from sapphire.observations import Observations
from sapphire.population_summaries import summary_names
from sapphire.prior import Prior
from sapphire.summaries import SUMMARY_DEFINITION, SUMMARY_DEFINITION_TEXT

SCHEMA_VERSION = 2
# What each schema version changed, quoted when an older store is refused.
SCHEMA_CHANGES = {
    2: "every chunk carries a crc32c checksum verified on read, and chunks equal to the fill value are written",
}
DATA_ARRAYS = ("theta", "summaries", "summary_stderr", "summary_support", "summary_jacobian", "n_failed")
HALO_ARRAYS = ("times", "log_mhalo", "mhalo_rate", "t_start", "coeff_d", "coeff_c", "coeff_b", "coeff_a")
# Attributes that must agree between a store and the run that writes into it.
IDENTITY_KEYS = (
    "schema_version",
    "summary_definition",
    "model_config",
    "solver",
    "prior",
    "observations",
    "halos",
    "chunk",
    "save_states",
)


class StoreError(ValueError):
    """A store that is missing, corrupt, of another schema, or made with other settings."""


def chunk_codecs() -> tuple:
    """The bytes-to-bytes codecs of every array: zstd, then a crc32c checksum of the
    compressed bytes (so truncation and flipped bits are both caught before decompression)."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return (ZstdCodec(level=0, checksum=False), Crc32cCodec())


def writable(root, name: str):
    """Array ``name`` of the group, configured to write chunks even when they equal the fill
    value (a failed point's all-NaN block still gets its files, so a missing file means damage)."""
    return root[name].with_config({"write_empty_chunks": True})


def store_identity(model, halos: HaloPopulation, obs: Observations, chunk: int, save_states: bool) -> dict[str, Any]:
    """The attributes that define what a store's rows mean: model constants, solver settings,
    prior box, observations (kernel centres), halo population and chunking."""
    return json_ready(
        {
            "schema_version": SCHEMA_VERSION,
            "summary_definition": SUMMARY_DEFINITION,
            "model_config": model.config.to_dict(),
            "solver": model.settings.to_dict(),
            "prior": model.prior.to_dict(),
            "observations": obs.to_dict(),
            "halos": {
                "fingerprint": halos.fingerprint(),
                "n_halos": halos.n_halos,
                "n_times": halos.n_times,
                "provenance": dict(halos.provenance),
            },
            "chunk": int(chunk),
            "save_states": bool(save_states),
        }
    )


def _check_chunk(chunk: int) -> int:
    if int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    return int(chunk)


def create_store(
    path: str | os.PathLike,
    theta: np.ndarray,
    model,
    halos: HaloPopulation,
    obs: Observations,
    *,
    design: Mapping[str, Any],
    chunk: int = 8,
    save_states: bool = False,
) -> Path:
    """Create a new store at ``path`` holding the design ``theta`` (N, 8), nothing computed
    yet (``done`` all False).  ``design`` describes how ``theta`` was drawn (kind, seed, ...).
    Refuses to overwrite an existing path."""
    import zarr

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; use --resume to continue it, or choose another path")
    chunk = _check_chunk(chunk)
    theta = model.prior.validate(np.atleast_2d(theta))
    n, s, h = theta.shape[0], obs.n_summary, halos.n_halos
    root = zarr.open_group(str(path), mode="w-")
    attrs = store_identity(model, halos, obs, chunk, save_states)
    attrs.update(
        sapphire_version=sapphire.__version__,
        summary_names=list(summary_names(obs)),
        design={"batches": [json_ready(dict(design, n_points=n))]},
        history=[],
    )
    shapes = {
        "theta": ((n, theta.shape[1]), "float64", np.nan),
        "summaries": ((n, s), "float64", np.nan),
        "summary_stderr": ((n, s), "float64", np.nan),
        "summary_support": ((n, s), "float64", np.nan),
        "summary_jacobian": ((n, s, theta.shape[1]), "float64", np.nan),
        "n_failed": ((n,), "int32", -1),
        "done": ((n,), "bool", False),
    }
    if save_states:
        shapes["halo_log_state"] = ((n, h, 7), "float64", np.nan)
    for name, (shape, dtype, fill) in shapes.items():
        root.create_array(
            name, shape=shape, chunks=(chunk,) + shape[1:], dtype=dtype, fill_value=fill, compressors=chunk_codecs()
        )
    writable(root, "theta")[:] = theta
    halo_group = root.create_group("halos")
    for name, values in halo_arrays(halos).items():
        halo_group.create_array(name, shape=values.shape, dtype=values.dtype, compressors=chunk_codecs())
        writable(halo_group, name)[...] = values
    root.attrs.update(attrs)  # attributes last: a store without them is recognisably unfinished
    return path


def halo_arrays(halos: HaloPopulation) -> dict[str, np.ndarray]:
    """The arrays stored under ``halos/`` (:data:`HALO_ARRAYS`), as numpy."""
    d, c, b, a = (np.asarray(x) for x in halos.coeffs)
    return {
        "times": np.asarray(halos.times),
        "log_mhalo": np.asarray(halos.log_mhalo),
        "mhalo_rate": np.asarray(halos.mhalo_rate),
        "t_start": np.asarray(halos.t_start),
        "coeff_d": d,
        "coeff_c": c,
        "coeff_b": b,
        "coeff_a": a,
    }


def jacobian_rows(attrs: Mapping[str, Any], n_points: int | None = None) -> np.ndarray:
    """(N,) bool: rows of the store's design blocks evaluated with exact Jacobians (a block
    recorded with ``"jacobian": false`` holds value-only points: ``sapphire generate
    --no-jacobian``, ``append_design(..., {"jacobian": False})``; their Jacobian rows are NaN)."""
    parts = [
        np.full(int(b["n_points"]), bool(b.get("jacobian", True))) for b in attrs.get("design", {}).get("batches", [])
    ]
    rows = np.concatenate(parts) if parts else np.zeros(0, bool)
    if n_points is not None and rows.size != n_points:  # an unrecorded tail: as written, with Jacobians
        rows = np.concatenate([rows, np.ones(max(n_points - rows.size, 0), bool)])[:n_points]
    return rows


def open_group(path: str | os.PathLike, mode: str = "r"):
    """The store's Zarr group, after checking it exists and carries this schema's attributes."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise StoreError(f"no training-set store at {path}")
    try:
        root = zarr.open_group(str(path), mode=mode)
        attrs = dict(root.attrs)
    except Exception as err:  # zarr raises several types for unreadable metadata
        raise StoreError(f"{path} is not a readable Zarr group ({type(err).__name__}: {err})") from err
    version = attrs.get("schema_version")
    if version is None:
        raise StoreError(
            f"{path} has no schema_version attribute: not a sapphire training set, or its creation was interrupted"
        )
    if version != SCHEMA_VERSION:
        newer = "newer" if int(version) > SCHEMA_VERSION else "older"
        changes = "; ".join(f"version {v}: {what}" for v, what in sorted(SCHEMA_CHANGES.items()) if v > int(version))
        raise StoreError(
            f"{path} has schema version {version} ({newer} than this sapphire {sapphire.__version__}, "
            f"which reads version {SCHEMA_VERSION})"
            + (f"; changed since: {changes}; regenerate the store" if changes else "")
        )
    check_summary_definition(path, attrs)
    missing = [name for name in DATA_ARRAYS + ("done",) if name not in root]
    if missing or "halos" not in root:
        raise StoreError(f"{path} is missing arrays {missing or ['halos/']}: corrupt store")
    n = root["theta"].shape[0]
    for name in DATA_ARRAYS + ("done",):
        if root[name].shape[0] != n:
            raise StoreError(f"{path}: array {name} has {root[name].shape[0]} rows, theta has {n}: corrupt store")
    return root


def check_summary_definition(path, attrs: Mapping[str, Any]) -> None:
    """:class:`StoreError` unless the store's rows were computed with this sapphire's summary
    definition (``summary_definition`` attribute; absent: definition 1)."""
    stored = attrs.get("summary_definition", 1)
    if stored != SUMMARY_DEFINITION:
        raise StoreError(
            f"{path} holds summaries of summary definition {stored}; this sapphire computes "
            f"{SUMMARY_DEFINITION} ({SUMMARY_DEFINITION_TEXT}): regenerate the store"
        )


def check_identity(path, attrs: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Raise :class:`StoreError` naming every identity attribute in which ``attrs`` (a store's)
    differs from ``expected`` (the current run's)."""
    differing = [key for key in IDENTITY_KEYS if json_ready(attrs.get(key)) != json_ready(expected.get(key))]
    if differing:
        details = "; ".join(_first_difference(key, attrs.get(key), expected.get(key)) for key in differing)
        raise StoreError(f"{path} was made with other settings: {details}")


def _first_difference(key: str, stored: Any, wanted: Any) -> str:
    if isinstance(stored, dict) and isinstance(wanted, dict):
        for sub in sorted(set(stored) | set(wanted)):
            if json_ready(stored.get(sub)) != json_ready(wanted.get(sub)):
                return f"{key}.{sub} is {_short(stored.get(sub))} in the store, {_short(wanted.get(sub))} here"
    return f"{key} is {_short(stored)} in the store, {_short(wanted)} here"


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_halos(root) -> HaloPopulation:
    """The halo population stored in the group, checked against its recorded fingerprint."""
    import jax.numpy as jnp

    arrays = {name: read_rows(root, f"halos/{name}", slice(None)) for name in HALO_ARRAYS}
    info = root.attrs["halos"]
    halos = HaloPopulation(
        times=jnp.asarray(arrays["times"]),
        log_mhalo=jnp.asarray(arrays["log_mhalo"]),
        mhalo_rate=jnp.asarray(arrays["mhalo_rate"]),
        t_start=jnp.asarray(arrays["t_start"]),
        coeffs=tuple(jnp.asarray(arrays[f"coeff_{k}"]) for k in "dcba"),
        provenance=tuple(sorted((str(k), str(v)) for k, v in info["provenance"].items())),
    )
    if halos.fingerprint() != info["fingerprint"]:
        raise StoreError(
            f"halo arrays fingerprint {halos.fingerprint()} != recorded {info['fingerprint']}: corrupt store"
        )
    return halos


def group_path(root) -> Path | None:
    """The directory of a group's local store (None for other kinds of store)."""
    location = getattr(root.store, "root", None)
    return None if location is None else Path(location) / root.path


@dataclasses.dataclass(frozen=True)
class ChunkDamage:
    """One damaged chunk: ``array`` (``"summaries"``, ``"halos/times"``), its ``key`` in the
    array (``"c/1/0"``), the ``rows`` [start, stop) along the array's first axis that it holds
    (design points, or halos under ``halos/``), and the ``problem`` (``"missing"``, or why it
    did not decode)."""

    array: str
    key: str
    rows: tuple[int, int]
    problem: str

    def describe(self) -> str:
        what = "halos" if self.array.startswith("halos/") else "rows"
        return f"array {self.array} chunk {self.key} ({what} {self.rows[0]}-{self.rows[1] - 1}): {self.problem}"


def _problem(err: BaseException) -> str:
    """One short line for a chunk that did not decode."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if "checksum" in text.lower():
        return "crc32c checksum mismatch (bytes changed or truncated)"
    return f"unreadable ({type(err).__name__}: {text[:100]})"


def _chunk_rows(arr, coords: tuple[int, ...]) -> tuple[int, int]:
    if not arr.ndim:
        return (0, 1)
    start = coords[0] * arr.chunks[0]
    return (start, min(start + arr.chunks[0], arr.shape[0]))


def _chunk_grid(arr, rows: slice = slice(None)) -> Iterator[tuple[int, ...]]:
    """Chunk coordinates of ``arr`` whose rows meet ``rows`` (all of them for 0-d arrays)."""
    grid = arr.cdata_shape if arr.ndim else ()
    if not arr.ndim:
        yield ()
        return
    start, stop, _ = rows.indices(arr.shape[0])
    first, last = start // arr.chunks[0], max(stop - 1, start) // arr.chunks[0]
    for coords in np.ndindex(*grid):
        if first <= coords[0] <= last:
            yield tuple(int(c) for c in coords)


def _check_chunk_readable(arr, coords: tuple[int, ...]) -> str | None:
    """None if the chunk decodes, else the problem."""
    try:
        arr.blocks[coords] if coords else arr[...]
    except Exception as err:  # codecs raise ValueError, zstd its own error types
        return _problem(err)
    return None


def damage_error(root, name: str, selection: Any = slice(None), err: BaseException | None = None) -> StoreError:
    """The one-line :class:`StoreError` for a read of ``name`` that failed: the first chunk
    of the selection that does not decode, its rows, the store, and what to run."""
    arr = root[name]
    rows = selection[0] if isinstance(selection, tuple) and selection else selection
    rows = rows if isinstance(rows, slice) else slice(None)
    where = group_path(root) or root.store
    for coords in _chunk_grid(arr, rows):
        problem = _check_chunk_readable(arr, coords)
        if problem is not None:
            damage = ChunkDamage(name, arr.metadata.encode_chunk_key(coords), _chunk_rows(arr, coords), problem)
            return StoreError(
                f"{where}: {damage.describe()}; `sapphire inspect {where} --verify` lists every damaged chunk, "
                f"`sapphire generate {where} --resume` recomputes them"
            )
    detail = _problem(err) if err is not None else "unknown problem"
    return StoreError(f"{where}: array {name} could not be read: {detail}")


def read_rows(root, name: str, selection: Any = slice(None)) -> np.ndarray:
    """``root[name][selection]`` as numpy; a chunk that does not decode (checksum mismatch,
    truncation) raises :func:`damage_error`'s one-line :class:`StoreError` instead of the
    codec's traceback."""
    arr = root[name]
    try:
        return np.asarray(arr[selection] if arr.ndim else arr[...])
    except Exception as err:
        raise damage_error(root, name, selection, err) from None


class CheckedArray:
    """Array-like view of one array of a group whose reads go through :func:`read_rows`
    (what :class:`TrainingSet` hands to ``dask.array.from_array``)."""

    def __init__(self, root, name: str):
        arr = root[name]
        self.root, self.name = root, name
        self.shape, self.dtype, self.ndim = tuple(arr.shape), np.dtype(arr.dtype), arr.ndim

    def __getitem__(self, selection: Any) -> np.ndarray:
        return read_rows(self.root, self.name, selection)


def _missing_error(root, damage: ChunkDamage) -> StoreError:
    where = group_path(root) or root.store
    return StoreError(
        f"{where}: {damage.describe()} (its rows are marked done); `sapphire inspect {where} --verify` lists every "
        f"damaged chunk, `sapphire generate {where} --resume` recomputes them"
    )


def check_present(root, name: str, rows: slice) -> None:
    """Raise a one-line :class:`StoreError` if a chunk file of ``name`` holding ``rows`` is
    missing (Zarr would silently read the fill value).  Local stores only; others pass."""
    directory = group_path(root)
    if directory is None:
        return
    arr = root[name]
    for coords in _chunk_grid(arr, rows):
        key = arr.metadata.encode_chunk_key(coords)
        if not (directory / arr.path / key).exists():
            raise _missing_error(root, ChunkDamage(name, key, _chunk_rows(arr, coords), "missing"))


def array_names(root) -> list[str]:
    """Every array of a store: the data arrays, then ``halos/<name>``."""
    return sorted(root.array_keys()) + [f"halos/{k}" for k in HALO_ARRAYS if k in root["halos"]]


def scan_chunks(root, progress: bool = False) -> list[ChunkDamage]:
    """Read every chunk of every array of a store (checksums verified) and list the damaged
    ones: chunks that do not decode, and missing chunk files where the store says data must
    be (``theta`` and ``halos/`` always; the per-point arrays in blocks whose rows are all
    ``done``).  A missing ``done`` chunk reads as "not done", so its rows are recomputed
    anyway.  Memory: one chunk at a time."""
    from tqdm.auto import tqdm

    directory = group_path(root)
    names = array_names(root)
    done_arr = root["done"]
    done = np.zeros(done_arr.shape[0], bool)
    damaged: list[ChunkDamage] = []
    total = sum(int(np.prod(root[name].cdata_shape)) if root[name].ndim else 1 for name in names)
    with tqdm(total=total, desc="chunks", unit="chunk", disable=not progress, dynamic_ncols=True) as bar:
        for name in ["done"] + [n for n in names if n != "done"]:
            arr = root[name]
            for coords in _chunk_grid(arr):
                bar.update(1)
                key = arr.metadata.encode_chunk_key(coords)
                rows = _chunk_rows(arr, coords)
                present = directory is None or (directory / arr.path / key).exists()
                if not present:
                    must_exist = (
                        name == "theta"
                        or name.startswith("halos/")
                        or (name != "done" and bool(done[rows[0] : rows[1]].all()))
                    )
                    if must_exist:
                        damaged.append(ChunkDamage(name, key, rows, "missing"))
                    continue
                problem = _check_chunk_readable(arr, coords)
                if problem is not None:
                    damaged.append(ChunkDamage(name, key, rows, problem))
                elif name == "done":
                    done[rows[0] : rows[1]] = np.asarray(arr[rows[0] : rows[1]])
    return damaged


def store_digest(path: str | os.PathLike) -> str:
    """sha256 (16 hex digits) of every array's bytes and every attribute except ``history``:
    equal digests mean bit-identical contents."""
    root = open_group(path)
    digest = hashlib.sha256()
    attrs = {k: v for k, v in dict(root.attrs).items() if k != "history"}
    digest.update(json.dumps(attrs, sort_keys=True).encode())
    names = sorted(k for k in root.array_keys()) + [f"halos/{k}" for k in HALO_ARRAYS]
    for name in names:
        arr = root[name]
        digest.update(f"{name}{arr.shape}{arr.dtype}".encode())
        for start in range(0, arr.shape[0], max(arr.chunks[0], 1) if arr.ndim else 1):
            rows = slice(start, start + arr.chunks[0]) if arr.ndim else slice(None)
            digest.update(np.ascontiguousarray(read_rows(root, name, rows)).tobytes())
    return digest.hexdigest()[:16]


class TrainingSet:
    """Lazy, dask-backed, read-only view of a store; build with :func:`open_training_set`.

    Arrays (dask, chunked along N like the store): ``theta`` (N, 8), ``summaries`` (N, S),
    ``summary_stderr`` (N, S), ``summary_support`` (N, S), ``summary_jacobian`` (N, S, 8), ``n_failed`` (N,), ``done``
    (N,) and, if stored, ``halo_log_state`` (N, H, 7).  ``attrs``: the store's attributes.
    """

    def __init__(self, path: str | os.PathLike):
        import dask.array as da

        self.path = Path(path)
        self._root = open_group(self.path)
        self.attrs: dict[str, Any] = dict(self._root.attrs)
        for name in DATA_ARRAYS + ("done", "halo_log_state"):
            if name in self._root:
                arr = self._root[name]
                setattr(
                    self,
                    name,
                    da.from_array(CheckedArray(self._root, name), chunks=arr.chunks, name=f"{self.path}:{name}"),
                )
        self.prior = Prior(**{k: tuple(v) for k, v in self.attrs["prior"].items()})
        self.observations = Observations.from_dict(self.attrs["observations"])
        self.summary_names: tuple[str, ...] = tuple(self.attrs["summary_names"])
        if self.summary_names != summary_names(self.observations):
            raise StoreError(f"{self.path}: summary_names disagree with the stored observations: corrupt store")
        self.schema_version: int = int(self.attrs["schema_version"])
        #: (N,) bool: rows with an exact Jacobian (False: value-only points, :func:`jacobian_rows`)
        self.has_jacobian: np.ndarray = jacobian_rows(self.attrs, self.n_points)

    def __repr__(self) -> str:
        return (
            f"TrainingSet({str(self.path)!r}, points={self.n_points}, done={int(self.done.sum().compute())}, "
            f"summaries={len(self.summary_names)}, halos={self.attrs['halos']['n_halos']})"
        )

    @property
    def n_points(self) -> int:
        return int(self.theta.shape[0])

    @property
    def chunk(self) -> int:
        return int(self.attrs["chunk"])

    @property
    def fingerprint(self) -> str:
        """Content hash (see :func:`store_digest`); recorded by emulators trained on it."""
        if not hasattr(self, "_fingerprint"):
            self._fingerprint = store_digest(self.path)
        return self._fingerprint

    def halos(self) -> HaloPopulation:
        """The stored halo population (fingerprint-checked)."""
        return read_halos(self._root)

    def _blocks(self) -> Iterator[slice]:
        for start in range(0, self.n_points, self.chunk):
            yield slice(start, min(start + self.chunk, self.n_points))

    def valid_mask(self) -> np.ndarray:
        """(N,) bool: row done, no failed halo, every summary and Jacobian entry finite.
        Read block by block (memory: one chunk of each array).  Raises a one-line
        :class:`StoreError` for a damaged chunk, or a missing one in a finished block."""
        parts = []
        for rows in self._blocks():
            done = read_rows(self._root, "done", rows)
            if done.all():  # a finished block has a file in every array: a missing one is damage
                for name in DATA_ARRAYS:
                    check_present(self._root, name, rows)
            ok = done & (read_rows(self._root, "n_failed", rows) == 0)
            for name, axes in (("summaries", (1,)), ("summary_stderr", (1,))):
                ok &= np.isfinite(read_rows(self._root, name, rows)).all(axis=axes)
            jac_ok = np.isfinite(read_rows(self._root, "summary_jacobian", rows)).all(axis=(1, 2))
            ok &= jac_ok | ~self.has_jacobian[rows]  # value-only rows need no Jacobian
            parts.append(ok)
        return np.concatenate(parts) if parts else np.zeros(0, bool)

    def load(self, indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The rows at ``indices`` (default: all; returned in increasing order) as numpy
        arrays: theta, summaries, summary_stderr, summary_support, summary_jacobian, n_failed, has_jacobian.
        Reads only the chunks that hold them."""
        idx = np.arange(self.n_points) if indices is None else np.unique(np.asarray(indices, dtype=np.int64))
        if idx.size and (idx[0] < 0 or idx[-1] >= self.n_points):
            raise IndexError(f"row indices must lie in [0, {self.n_points}), got {idx[0]}..{idx[-1]}")
        out: dict[str, list[np.ndarray]] = {name: [] for name in DATA_ARRAYS}
        blocks = idx // self.chunk
        for block in np.unique(blocks):
            start = int(block) * self.chunk
            local = idx[blocks == block] - start
            stop = start + int(local[-1]) + 1
            for name in DATA_ARRAYS:
                out[name].append(read_rows(self._root, name, slice(start, stop))[local])
        loaded = {
            name: np.concatenate(parts)
            if parts
            else np.zeros((0,) + self._root[name].shape[1:], self._root[name].dtype)
            for name, parts in out.items()
        }
        loaded["has_jacobian"] = self.has_jacobian[idx]
        return loaded

    def batches(
        self,
        batch_size: int,
        indices: np.ndarray | None = None,
        seed: int = 0,
        buffer_chunks: int = 8,
    ) -> Iterator[dict[str, np.ndarray]]:
        """One shuffled pass over the rows at ``indices`` (default: every valid row) in
        minibatches of ``batch_size``, streamed: the store's chunks are visited in a seeded
        random order, ``buffer_chunks`` of them at a time are read and their selected rows
        shuffled, so memory stays at about ``buffer_chunks * chunk`` rows.  The last, partial
        batch is yielded too."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rng = np.random.default_rng(seed)
        wanted = np.zeros(self.n_points, bool)
        wanted[self.valid_mask() if indices is None else np.asarray(indices, dtype=np.int64)] = True
        chunk = self.chunk
        blocks = [b for b in range(-(-self.n_points // chunk)) if wanted[b * chunk : (b + 1) * chunk].any()]
        rng.shuffle(blocks)
        pending: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(blocks), buffer_chunks):
            rows = np.concatenate(
                [
                    np.arange(b * chunk, min((b + 1) * chunk, self.n_points))
                    for b in blocks[start : start + buffer_chunks]
                ]
            )
            rows = np.sort(rows[wanted[rows]])
            buffer = self.load(rows)
            order = rng.permutation(rows.size)
            for name, values in buffer.items():
                pending.setdefault(name, []).append(values[order])
            merged = {name: np.concatenate(parts) for name, parts in pending.items()}
            n_full = merged["theta"].shape[0] // batch_size
            for i in range(n_full):
                yield {name: values[i * batch_size : (i + 1) * batch_size] for name, values in merged.items()}
            pending = {name: [values[n_full * batch_size :]] for name, values in merged.items()}
        if pending and pending["theta"][0].shape[0]:
            yield {name: parts[0] for name, parts in pending.items()}


def open_training_set(path: str | os.PathLike, expected: Mapping[str, Any] | None = None) -> TrainingSet:
    """Open a store as a lazy :class:`TrainingSet`.  Raises :class:`StoreError` (a
    ``ValueError``) for a missing path, a non-store, another schema version, or, when
    ``expected`` (see :func:`store_identity`) is given, a store made with other settings."""
    ts = TrainingSet(path)
    if expected is not None:
        check_identity(ts.path, ts.attrs, expected)
    return ts
