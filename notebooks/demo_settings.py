"""Settings shared by notebooks 03-05, in one place.

Notebook 04 resumes the stores that 03 builds and 05 reloads the emulator that 04 trains, so
their model, sizes and seeds must agree: a store resumed with other settings is refused, and
an emulator trained on another store is retrained.  The notebooks import this module from
their own folder (Jupyter's working directory; ``python notebooks/NN_*.py`` puts it on the path;
the tests add it).

Environment: ``SAPPHIRE_NOTEBOOK_SIZE`` = ``small`` (default: minutes on a laptop) or ``tiny``
(the CI sizes, seconds, numbers meaningless); ``SAPPHIRE_NOTEBOOK_OUT`` the output root
(default ``runs/notebooks``).
"""

from __future__ import annotations

import os
from pathlib import Path

import sapphire
import training_sets

TINY = os.environ.get("SAPPHIRE_NOTEBOOK_SIZE", "small") == "tiny"
ROOT = Path(os.environ.get("SAPPHIRE_NOTEBOOK_OUT", "runs/notebooks"))
STORES = ROOT / ("stores-tiny" if TINY else "stores")  # tiny and small side by side
EMULATORS = ROOT / ("emulators-tiny" if TINY else "emulators")

# The training and test stores.
MODEL = sapphire.Model(solver="tsit5") if TINY else sapphire.Model()
N_HALOS = 8 if TINY else 32
N_TRAIN = 16 if TINY else 256
N_TEST = 8 if TINY else 64
CHUNK = 8 if TINY else 16
HALO_SEED, TRAIN_SEED, TEST_SEED = 0, 0, 1000

# The emulator (trained by 04, reloaded by 05).
TRAINING = (dict(ensemble=2, epochs=40, patience=20, hidden=(16, 16)) if TINY
            else dict(ensemble=4, epochs=600, patience=100, hidden=(64, 64, 64)))
EMU_SEED = 0


def generate_store(name: str, progress: bool = not TINY) -> training_sets.GenerationReport:
    """Build ``STORES/<name>.zarr`` (``name`` "train" or "test") with the settings above, or
    resume it: nothing is computed when it is already complete."""
    n_points, seed = {"train": (N_TRAIN, TRAIN_SEED), "test": (N_TEST, TEST_SEED)}[name]
    return training_sets.generate(STORES / f"{name}.zarr", n_points=n_points, n_halos=N_HALOS, seed=seed,
                                  halo_seed=HALO_SEED, chunk=CHUNK, model=MODEL, resume=True, progress=progress)
