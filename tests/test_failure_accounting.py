"""Failure accounting: failed halos recorded per MAP start, per Laplace point and per HMC draw,
with one warning; the emulator's training design recorded in its artifact and a warning when
a forecast leaves its coverage; no silent fallback in the spread calibration.

Known answers come from a toy whose "failed halos" are a known function of theta (2 halos fail
wherever theta_0 > its analytic mode), and from a tiny emulator trained on known points."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import sapphire
from emulator import SobolevEmulator, train_emulator
from emulator.data import InMemoryTrainingSet
from forecasts import EmulatorForward, LinearGaussianForward, find_map, laplace, run_hmc
from forecasts.forward import COVERAGE_GAP, check_training_coverage


class FailingToy(LinearGaussianForward):
    """A linear-Gaussian toy whose likelihood "excluded 2 failed halos" wherever theta_0 > 0
    (the analytic mode of theta_0 is 0 by construction)."""

    @staticmethod
    def _predict_full(extra, data, theta_full):
        mean = data["A"] @ theta_full + data["b"]
        return mean, jnp.zeros_like(mean), jnp.where(theta_full[0] > 0.0, 2, 0).astype(jnp.int32)


class AlwaysFailing(LinearGaussianForward):
    """2 failed halos at every theta."""

    @staticmethod
    def _predict_full(extra, data, theta_full):
        mean = data["A"] @ theta_full + data["b"]
        return mean, jnp.zeros_like(mean), jnp.asarray(2, jnp.int32)


A = np.array([[1.0, 0.3], [0.2, 1.0], [0.5, -0.4]])


@pytest.fixture(scope="module")
def toy():
    return FailingToy(A, np.zeros(3), np.zeros(3), np.full(3, 0.1))  # mode at theta = 0


def test_map_and_laplace_record_failed_halos(toy):
    with pytest.warns(
        RuntimeWarning, match=r"find_map: the likelihood excluded failed halos in 3 of 3 starts \(up to 2"
    ):
        fit = find_map(AlwaysFailing(A, np.zeros(3), np.zeros(3), np.full(3, 0.1)), n_starts=3, max_steps=50)
    assert fit.max_failed.tolist() == [2, 2, 2] and fit.n_failed.tolist() == [2, 2, 2]
    # mode at theta_0 = -1, where nothing fails; the first start begins where 2 halos fail
    shifted = FailingToy(A, np.zeros(3), A @ np.array([-1.0, 0.0]), np.full(3, 0.1))
    starts = np.array([[0.5, 0.1], [-1.5, 0.1], [-1.2, -0.2]])
    with pytest.warns(
        RuntimeWarning, match=r"find_map: the likelihood excluded failed halos in [123] of 3 starts \(up to 2"
    ):
        fit = find_map(shifted, starts=starts, max_steps=50)
    assert fit.max_failed[0] == 2 and fit.n_failed.tolist() == [0, 0, 0] and fit.n_converged == 3
    assert fit.to_dict()["max_failed"][0] == 2
    point = np.array([0.05, 0.0])
    with pytest.warns(RuntimeWarning, match="laplace: the likelihood excluded failed halos"):
        assert laplace(toy, point).n_failed == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no failures: no warning
        assert laplace(toy, -point).n_failed == 0 and laplace(toy, -point, method="fd_grad").n_failed == 0


def test_hmc_records_failed_halos_per_draw(toy):
    with pytest.warns(
        RuntimeWarning, match=r"run_hmc: the likelihood excluded failed halos in \d+ of 200 draws \(up to 2"
    ):
        post = run_hmc(toy, num_chains=2, num_warmup=50, num_samples=100, seed=0)
    assert post.n_failed.shape == (2, 100)
    np.testing.assert_array_equal(post.n_failed, np.where(post.samples[..., 0] > 0.0, 2, 0))  # exactly where it failed
    summary = post.summary()
    assert (
        summary["draws_with_failed_halos"] == int(np.sum(post.samples[..., 0] > 0)) > 20
        and summary["max_failed_halos"] == 2
    )


OBS = sapphire.Observations.default().select("mzr")
PRIOR = sapphire.DEFAULT_PRIOR


@pytest.fixture(scope="module")
def tiny_emulator():
    """A 1-member emulator on 64 random points (its spread calibration must say it fell back)."""
    rng = np.random.default_rng(0)
    theta = PRIOR.from_unit(rng.uniform(0.2, 0.8, size=(64, 8)))  # the design covers the middle of the box only
    u = PRIOR.to_unit(theta)
    S = OBS.n_summary
    values = 8.5 + 0.1 * u[:, :1] * np.ones((1, S))
    jac = np.zeros((64, S, 8))
    jac[:, :, 0] = 0.1 / PRIOR.width[0]
    ts = InMemoryTrainingSet(
        theta=theta, summaries=values, summary_stderr=np.full_like(values, 0.02), summary_jacobian=jac, observations=OBS
    )
    with pytest.warns(RuntimeWarning, match=r"calibrate_spread: an ensemble of 1 has no spread; .*factor 1\.0"):
        emu = train_emulator(ts, ensemble=1, hidden=(8,), epochs=3, patience=3, batch_size=16, seed=0, progress=False)
    return emu, theta


def test_artifact_records_its_training_design(tiny_emulator, tmp_path):
    emu, theta = tiny_emulator
    train_idx = np.asarray(emu.training["split"]["train"])
    np.testing.assert_array_equal(emu.training_theta, theta[train_idx])
    loaded = SobolevEmulator.load(emu.save(tmp_path / "tiny.emu"))
    np.testing.assert_array_equal(loaded.training_theta, emu.training_theta)
    # distances in design spacings: 0 at a training point, median 1 between training points
    # (the definition of the spacing), far at a corner of the box the design never visited
    assert loaded.coverage_distance(emu.training_theta[0]) == 0.0
    d = loaded.coverage_distance(np.delete(emu.training_theta, 0, axis=0) + 1e-9)
    assert d.shape == (emu.training_theta.shape[0] - 1,)
    corner = PRIOR.from_unit(np.full(8, 0.02))
    assert loaded.coverage_distance(corner) > COVERAGE_GAP
    # an artifact without a design (older format): the distance is unknown, the box still known
    bare = SobolevEmulator(
        architecture=emu.architecture,
        params=emu.params,
        scalings=emu.scalings,
        prior=emu.prior,
        observations=emu.observations,
        summary_names=emu.summary_names,
        store_fingerprint=emu.store_fingerprint,
        theta_range=emu.theta_range,
    )
    assert np.isnan(bare.coverage_distance(corner)) and not bare.in_training_range(corner)


def test_forecasts_warn_when_they_leave_the_training_coverage(tiny_emulator):
    emu, _ = tiny_emulator
    fm = EmulatorForward(emu, free=["A_etaM", "B_etaM"])
    inside = fm.prior.from_unit(np.array([[0.5, 0.5]]))
    outside = fm.prior.from_unit(np.array([[0.02, 0.98]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_training_coverage(fm, inside, "test")["n_outside"] == 0
    with pytest.warns(
        RuntimeWarning, match=r"test: 1 of 2 points lie outside the emulator's training coverage \(1 outside the box"
    ):
        report = check_training_coverage(fm, np.concatenate([inside, outside]), "test")
    assert report["n_outside"] == 1 and report["max_distance"] > 1.0  # beyond the box: farther than the median spacing
    with pytest.warns(RuntimeWarning, match="laplace: 1 of 1 expansion points lie outside"):
        fisher = laplace(fm, outside[0])
    assert fisher.coverage["n_outside"] == 1
    # a model that is not trained (the exact model, a toy) has no coverage to leave
    toy = LinearGaussianForward(np.eye(2), np.zeros(2), np.zeros(2), np.ones(2))
    assert check_training_coverage(toy, np.zeros((1, 2)), "test") is None
