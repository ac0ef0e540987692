"""sapphire: exact, differentiable galaxy-formation engine (see MODEL.md)."""

import jax

jax.config.update("jax_enable_x64", True)

from .config import DEFAULT_CONFIG, PLANCK15, Cosmology, ModelConfig  # noqa: E402
from .prior import DEFAULT_PRIOR, PARAMETER_NAMES, Prior  # noqa: E402

__version__ = "0.1.0"
