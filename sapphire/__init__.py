"""sapphire: exact, differentiable engine of a two-zone galaxy-formation model (MODEL.md).

Public API (everything a user needs is re-exported here)::

    model = sapphire.Model()
    halos = sapphire.HaloPopulation.from_diffmah(256, seed=0)
    out = model.evolve(sapphire.DEFAULT_PRIOR.centre, halos)   # out.log_state (256, 7)
    jac = model.jacobian(sapphire.DEFAULT_PRIOR.centre, halos)  # (256, 7, 8)
"""

import jax

jax.config.update("jax_enable_x64", True)

from .config import DEFAULT_CONFIG, PLANCK15, Cosmology, ModelConfig  # noqa: E402
from .devices import set_host_device_count  # noqa: E402
from .halos import HaloForcing, HaloPopulation  # noqa: E402
from .likelihood import LikelihoodResult, log_likelihood, log_likelihood_and_grad  # noqa: E402
from .model import Evolution, Model  # noqa: E402
from .observations import Observations, Relation  # noqa: E402
from .physics import STATE_NAMES  # noqa: E402
from .population_summaries import Summaries  # noqa: E402
from .prior import DEFAULT_PRIOR, PARAMETER_NAMES, Prior  # noqa: E402
from .solve import SolverSettings  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_PRIOR",
    "PARAMETER_NAMES",
    "PLANCK15",
    "STATE_NAMES",
    "Cosmology",
    "Evolution",
    "HaloForcing",
    "HaloPopulation",
    "Model",
    "ModelConfig",
    "Observations",
    "Prior",
    "Relation",
    "SolverSettings",
    "__version__",
    "set_host_device_count",
    "LikelihoodResult",
    "Summaries",
    "log_likelihood",
    "log_likelihood_and_grad",
]
