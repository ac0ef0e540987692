"""sapphire emulator: a gradient-aware (Sobolev) deep ensemble of Flax (NNX) MLPs emulating the
summaries of a training-set store, with its own error estimate.

    from emulator import train_emulator, SobolevEmulator, emulator_report
    emu = train_emulator("ts.zarr", gradient_weight=1.0, ensemble=5)   # or an InMemoryTrainingSet
    mean, error = emu.predict(theta)          # (S,), (S,): traceable, differentiable
    J = emu.jacobian(theta)                   # (S, 8) d mean / d theta
    emu.save("out.emu"); emu = SobolevEmulator.load("out.emu", observations=obs)
    report = emulator_report(emu, "ts.zarr", "report_dir")

Modules: ``network`` (MLP, ensemble, scalings), ``train`` (data adapter, split, Sobolev
training, spread calibration), ``artifact`` (``SobolevEmulator``, save/load), ``report``
(validation metrics, figures, learning curves), ``gp`` (scikit-learn GP baseline).
"""

import sapphire  # noqa: F401  (enables float64 before any JAX array exists)

from .artifact import FORMAT_VERSION, SobolevEmulator, check_compatible_observations  # noqa: E402
from .calibration import calibrate_spread  # noqa: E402
from .data import InMemoryTrainingSet, as_training_set, exclusion_counts, split_design  # noqa: E402
from .gp import GaussianProcessBaseline  # noqa: E402
from .network import Architecture, Scalings  # noqa: E402
from .report import emulator_report, evaluate_predictions, learning_curve, summarise  # noqa: E402
from .train import TrainingSettings, train_emulator  # noqa: E402

__all__ = [
    "FORMAT_VERSION",
    "Architecture",
    "GaussianProcessBaseline",
    "InMemoryTrainingSet",
    "Scalings",
    "SobolevEmulator",
    "TrainingSettings",
    "as_training_set",
    "calibrate_spread",
    "check_compatible_observations",
    "emulator_report",
    "evaluate_predictions",
    "exclusion_counts",
    "learning_curve",
    "split_design",
    "summarise",
    "train_emulator",
]
