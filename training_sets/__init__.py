"""Training sets: Latin-hypercube designs evaluated in bulk (summaries, their standard errors and
exact summary Jacobians) into a resumable Zarr v3 store.

    from training_sets import generate, open_training_set
    report = generate("ts.zarr", n_points=64, n_halos=32, seed=0)
    ts = open_training_set("ts.zarr")      # lazy, dask-backed
    for batch in ts.batches(128, seed=0): ...
"""

from .design import extend_design, latin_hypercube_design, read_design_table
from .generate import GenerationReport, append_design, extend_store, generate
from .store import SCHEMA_VERSION, StoreError, TrainingSet, open_training_set, store_digest

__all__ = [
    "SCHEMA_VERSION",
    "GenerationReport",
    "StoreError",
    "TrainingSet",
    "append_design",
    "extend_design",
    "extend_store",
    "generate",
    "latin_hypercube_design",
    "open_training_set",
    "read_design_table",
    "store_digest",
]
