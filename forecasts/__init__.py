"""sapphire forecasts: MAP, Fisher/Laplace and HMC against the exact model or an emulator, and
their cross-validation (issue 6).

    import sapphire, forecasts
    fm = forecasts.ExactForward(sapphire.Model(), halos, obs, free=["A_etaM", "A_tdep"])
    # or forecasts.EmulatorForward(emu, obs, include_emulator_error=True, free=...)
    fit = forecasts.find_map(fm, n_starts=8, seed=0)          # every start; fit.best
    fisher = forecasts.laplace(fm, fit.best)                  # .covariance, .sigmas (or a saddle message)
    post = forecasts.run_hmc(fm, num_chains=4, num_warmup=500, num_samples=1000, checkpoint="run.npz")
    report = forecasts.cross_validate(exact_post, emulator_post)   # .verdict, .to_markdown(), .plot(dir)
    check = forecasts.reweighted_check(exact_fm, emulator_fm, emulator_post.samples)  # paired shift, small MC error

Modules: ``forward`` (forward models), ``optimize`` (MAP), ``fisher`` (Laplace, Gauss-Newton),
``hmc`` (NUTS, checkpointed), ``modes`` (tempered SMC: mode weights, evidence; NUTS per mode), ``crossval`` (posterior comparison), ``reweight`` (the same comparison by
importance reweighting, paired), ``campaigns`` (mock recovery,
error scaling), ``refine`` (posterior-focused refinement of an emulator), ``plots`` (figures).
"""

import sapphire  # noqa: F401  (enables float64 before any array is made)
from sapphire.likelihood import gaussian_log_likelihood  # the one Gaussian likelihood, re-exported

from .campaigns import (
    ALL_RELATION_SETS,
    ErrorScalingReport,
    RecoveryReport,
    emulator_factory,
    error_scaling_forecast,
    exact_factory,
    mock_observations,
    mock_recovery,
)
from .crossval import CrossValidationReport, Thresholds, classifier_two_sample_auc, cross_validate
from .fisher import FisherResult, finite_difference_hessian, fisher_result, gauss_newton_fisher, laplace
from .forward import EmulatorForward, ExactForward, ForwardModel, LinearGaussianForward, ValueAndGrad
from .hmc import CheckpointMismatch, HmcResult, run_hmc
from .modes import (
    ChainGroups,
    GaussianMixtureTarget,
    Mode,
    ModeChains,
    ModesResult,
    chi2_at,
    cluster_modes,
    group_chains,
    mode_starts,
    mode_table,
    modes_summary,
    outside_training,
    refine_modes,
    weigh_modes,
)
from .optimize import MapOptions, MapResult, find_map
from .refine import RefineResult, RefineSettings, Targets, refine, score_points
from .reweight import ReweightedCheck, reweighted_check

__all__ = [
    "ALL_RELATION_SETS",
    "CheckpointMismatch",
    "CrossValidationReport",
    "EmulatorForward",
    "ErrorScalingReport",
    "ExactForward",
    "FisherResult",
    "ForwardModel",
    "HmcResult",
    "LinearGaussianForward",
    "MapOptions",
    "MapResult",
    "RecoveryReport",
    "RefineResult",
    "RefineSettings",
    "ReweightedCheck",
    "Targets",
    "Thresholds",
    "ValueAndGrad",
    "classifier_two_sample_auc",
    "cross_validate",
    "emulator_factory",
    "error_scaling_forecast",
    "exact_factory",
    "finite_difference_hessian",
    "find_map",
    "reweighted_check",
    "fisher_result",
    "gauss_newton_fisher",
    "gaussian_log_likelihood",
    "laplace",
    "mock_observations",
    "mock_recovery",
    "refine",
    "score_points",
    "run_hmc",
    # posteriors with several modes (issue 19)
    "ChainGroups",
    "GaussianMixtureTarget",
    "Mode",
    "ModeChains",
    "ModesResult",
    "chi2_at",
    "cluster_modes",
    "group_chains",
    "mode_starts",
    "mode_table",
    "modes_summary",
    "outside_training",
    "refine_modes",
    "weigh_modes",
]
