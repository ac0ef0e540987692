"""Emulator (issue 5): Sobolev training, ensemble error, artifacts, report; tiny configurations.

The target is a synthetic, smooth analytic function of theta with a known Jacobian, on the 11
summaries of the ``mzr`` relation, so no ODE solve is needed.  One small ensemble is trained
once per module and shared; compilation dominates the cost.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sapphire
from emulator import (
    FORMAT_VERSION,
    InMemoryTrainingSet,
    SobolevEmulator,
    emulator_report,
    evaluate_predictions,
    exclusion_counts,
    split_design,
    train_emulator,
)

PRIOR = sapphire.DEFAULT_PRIOR
OBS = sapphire.Observations.default().select("mzr")
S = OBS.n_summary
TINY = dict(hidden=(32, 32), epochs=120, patience=120, batch_size=16, learning_rate=5e-3, progress=False)


def synthetic(theta):
    """Smooth analytic summaries (n, S) and their exact Jacobian d s / d theta (n, S, 8)."""
    rng = np.random.default_rng(123)
    freq = rng.uniform(0.5, 2.5, (S, 8))
    phase = rng.uniform(0, 2 * np.pi, (S, 8))
    amp = rng.uniform(0.05, 0.3, (S, 8)) * (np.arange(8) < 4)[None, :]  # 4 informative parameters
    u = PRIOR.to_unit(np.atleast_2d(theta))
    arg = freq[None] * u[:, None, :] + phase[None]
    values = 8.5 + np.sum(amp[None] * np.sin(arg), axis=2) + 0.3 * u[:, None, 0] * u[:, None, 1]
    dvalues_du = amp[None] * freq[None] * np.cos(arg)
    dvalues_du[:, :, 0] += 0.3 * u[:, None, 1]
    dvalues_du[:, :, 1] += 0.3 * u[:, None, 0]
    return values, dvalues_du / PRIOR.width


def synthetic_set(n, seed=0, **overrides):
    theta = PRIOR.from_unit(np.random.default_rng(seed).uniform(size=(n, 8)))
    values, jac = synthetic(theta)
    arrays = dict(theta=theta, summaries=values, summary_stderr=np.full_like(values, 0.02), summary_jacobian=jac)
    arrays.update(overrides)
    return InMemoryTrainingSet(**arrays, observations=OBS)


@pytest.fixture(scope="module")
def emu():
    return train_emulator(synthetic_set(120), ensemble=3, seed=1, **TINY)


def test_sobolev_lowers_gradient_error():
    """Same data, same architecture and seed: lambda = 1 gives clearly better Jacobians (and no
    worse values) than lambda = 0 at small N (clean data: plain mean-square penalties)."""
    ts = synthetic_set(60, seed=2)
    test = synthetic_set(200, seed=3)
    errors = {}
    for lam in (1.0, 0.0):
        model = train_emulator(
            ts,
            gradient_weight=lam,
            ensemble=1,
            seed=0,
            split=(0.85, 0.15, 0.0),
            huber_delta=None,
            value_huber_delta=None,
            summary_weighting="standardised",
            **TINY,
        )
        mean, _ = model.predict(test.theta)
        m = evaluate_predictions(mean, model.jacobian(test.theta), test.load(), OBS, PRIOR)
        errors[lam] = (np.median(m["jacobian_rel_error"]), np.median(m["value_error"]))
    assert errors[1.0][0] < 0.5 * errors[0.0][0], errors
    assert errors[1.0][1] < errors[0.0][1], errors


def test_predict_shapes_and_positive_error(emu):
    theta = PRIOR.centre
    mean, error = emu.predict(theta)
    assert mean.shape == (S,) and error.shape == (S,)
    assert np.all(np.asarray(error) > 0)
    batch = PRIOR.from_unit(np.random.default_rng(0).uniform(size=(5, 8)))
    mean_b, error_b = emu.predict(batch)
    assert mean_b.shape == (5, S) and error_b.shape == (5, S) and np.all(np.asarray(error_b) > 0)
    np.testing.assert_allclose(mean_b[0], emu.predict(batch[0])[0], rtol=1e-6)  # float32 arithmetic
    assert emu.members(theta).shape == (3, S)
    assert emu.ensemble_size == 3
    raw = emu.predict(theta, calibrated=False)[1]
    np.testing.assert_allclose(error, emu.calibration_factor * raw, rtol=1e-12)
    assert emu.jacobian(batch).shape == (5, S, 8)


def test_jacobian_matches_finite_differences(emu):
    emu = emu.with_precision("float64")  # steps of 1e-6 need float64 arithmetic
    theta = PRIOR.from_unit(np.full(8, 0.37))
    jac = np.asarray(emu.jacobian(theta))
    assert jac.shape == (S, 8)
    h = 1e-6 * PRIOR.width
    fd = np.stack(
        [
            (
                np.asarray(emu.predict(theta + h[j] * np.eye(8)[j])[0])
                - np.asarray(emu.predict(theta - h[j] * np.eye(8)[j])[0])
            )
            / (2 * h[j])
            for j in range(8)
        ],
        axis=-1,
    )
    np.testing.assert_allclose(jac, fd, rtol=1e-5, atol=1e-7 * np.abs(jac).max())


def test_predict_traceable_under_jit_and_grad(emu):
    emu = emu.with_precision("float64")
    theta = jnp.asarray(PRIOR.from_unit(np.full(8, 0.6)))
    y = jnp.asarray(OBS.y)

    def loglike(t):
        mean, error = emu.predict(t)
        var = jnp.asarray(OBS.sigma) ** 2 + error**2
        return -0.5 * jnp.sum((mean - y) ** 2 / var + jnp.log(var))

    value = jax.jit(loglike)(theta)
    grad = jax.jit(jax.grad(loglike))(theta)
    assert np.isfinite(value) and grad.shape == (8,) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(value, loglike(theta), rtol=1e-12)
    h = 1e-6
    fd = (loglike(theta + h * jnp.eye(8)[2]) - loglike(theta - h * jnp.eye(8)[2])) / (2 * h)
    np.testing.assert_allclose(grad[2], fd, rtol=1e-5, atol=1e-8)


def test_float32_evaluation_agrees_with_float64(emu):
    """The default float32 arithmetic moves predictions, errors and Jacobians by ~1e-7
    relative (outputs stay float64); the float64 copy leaves the original untouched."""
    assert emu.precision == "float32"
    exact = emu.with_precision("float64")
    assert emu.precision == "float32" and exact.precision == "float64"
    theta = PRIOR.from_unit(np.random.default_rng(7).uniform(size=(6, 8)))
    fast, slow = emu.predict_and_jacobian(theta), exact.predict_and_jacobian(theta)
    for a, b in zip(fast, slow):
        assert a.dtype == jnp.float64
        scale = np.abs(np.asarray(b)).max(axis=-1, keepdims=True)
        assert np.max(np.abs(np.asarray(a) - np.asarray(b)) / scale) < 1e-5
        assert not np.array_equal(np.asarray(a), np.asarray(b))  # it really ran in float32
    with pytest.raises(ValueError, match="precision must be one of .* got 'float16'"):
        emu.with_precision("float16")


def test_check_theta_and_training_range(emu):
    bad = PRIOR.centre.copy()
    bad[3] = 5.0
    with pytest.raises(ValueError, match="B_etaE = 5.0 lies outside the prior box"):
        emu.check_theta(bad)
    assert emu.check_theta(PRIOR.centre).shape == (8,)
    assert emu.in_training_range(PRIOR.centre) and not emu.in_training_range(bad)
    assert emu.in_training_range(np.stack([PRIOR.centre, bad])).tolist() == [True, False]


def test_save_load_round_trip(emu, tmp_path):
    path = emu.save(tmp_path / "model.emu")
    loaded = SobolevEmulator.load(path, observations=OBS.scaled(0.5))  # sigma may differ
    theta = PRIOR.from_unit(np.random.default_rng(5).uniform(size=(4, 8)))
    for a, b in zip(emu.predict(theta), loaded.predict(theta)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(emu.jacobian(theta)), np.asarray(loaded.jacobian(theta)))
    assert loaded.store_fingerprint == emu.store_fingerprint
    assert loaded.summary_names == emu.summary_names and loaded.ensemble_size == 3
    assert loaded.observations == OBS and loaded.prior == PRIOR
    assert loaded.training["split"] == emu.training["split"]
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["sapphire_version"] == sapphire.__version__


def test_load_errors(emu, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        SobolevEmulator.load(tmp_path / "missing.emu")
    path = emu.save(tmp_path / "model.emu")
    with pytest.raises(ValueError, match="trained on relations"):
        SobolevEmulator.load(path, observations=sapphire.Observations.default())
    moved = sapphire.Observations((sapphire.Relation(name="mzr", x=OBS.x + 0.1, y=OBS.y, sigma=OBS.sigma),))
    with pytest.raises(ValueError, match="relation 'mzr' was trained at x ="):
        SobolevEmulator.load(path, observations=moved)
    newer = tmp_path / "newer.emu"
    shutil.copytree(path, newer)
    meta = json.loads((newer / "metadata.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (newer / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format version .*upgrade sapphire"):
        SobolevEmulator.load(newer)
    old = tmp_path / "old_definition.emu"  # trained before issue 16: no summary_definition
    shutil.copytree(path, old)
    meta = json.loads((old / "metadata.json").read_text())
    assert meta.pop("summary_definition") == 2
    (old / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="summary definition 1; this sapphire computes 2 .*fixed bandwidth.*retrain"):
        SobolevEmulator.load(old)
    wider = sapphire.Observations((dataclasses.replace(OBS["mzr"], bandwidth=0.7),))
    with pytest.raises(ValueError, match="relation 'mzr' was trained with bandwidth 0.5"):
        SobolevEmulator.load(path, observations=wider)
    corrupt = tmp_path / "corrupt.emu"
    shutil.copytree(path, corrupt)
    (corrupt / "arrays.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="corrupt"):
        SobolevEmulator.load(corrupt)
    (corrupt / "metadata.json").write_text("{")
    with pytest.raises(ValueError, match="unreadable metadata.json"):
        SobolevEmulator.load(corrupt)


def test_failed_points_excluded_and_counted():
    base = synthetic_set(48, seed=7)
    n_failed = np.zeros(48, int)
    n_failed[[1, 2, 3]] = 2
    summaries = base.summaries.copy()
    summaries[5, 0] = np.nan
    jac = base.summary_jacobian.copy()
    jac[6, 1, 2] = np.inf
    done = np.ones(48, bool)
    done[7] = False
    ts = InMemoryTrainingSet(base.theta, summaries, base.summary_stderr, jac, n_failed, done, observations=OBS)
    valid, counts = exclusion_counts(ts)
    assert counts == {"n_points": 48, "n_valid": 42, "excluded": 6, "not_done": 1, "failed_halos": 3, "non_finite": 2}
    with pytest.warns(UserWarning, match="6 of 48 design points excluded"):
        model = train_emulator(ts, ensemble=1, **dict(TINY, epochs=2))
    assert model.training["excluded"] == counts
    used = set().union(*(set(v) for k, v in model.training["split"].items() if k != "n_train_split"))
    assert used == set(valid.tolist()) and not used & {1, 2, 3, 5, 6, 7}


def test_split_disjoint_and_seeded():
    idx = np.arange(100) * 3
    a, b, c = split_design(idx, seed=4), split_design(idx, seed=4), split_design(idx, seed=5)
    for key in ("train", "val", "test"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["train"], c["train"])
    assert (a["train"].size, a["val"].size, a["test"].size) == (80, 10, 10)
    parts = [set(a[k].tolist()) for k in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(idx.tolist())
    with pytest.raises(ValueError, match="no training point"):
        split_design(np.arange(2), (0.01, 0.5, 0.5))


def test_explicit_split_trains_on_exactly_the_given_rows():
    """split_indices (learning curves on the same design points as another store's split):
    the given train rows (first n_train of them) and val/test rows are used as given."""
    from emulator.data import explicit_split

    ts = synthetic_set(60)
    train, val, test = np.arange(40)[::-1], np.arange(40, 50), np.arange(50, 60)
    model = train_emulator(
        ts, ensemble=1, split_indices={"train": train, "val": val, "test": test}, n_train=30, **dict(TINY, epochs=2)
    )
    split = model.training["split"]
    np.testing.assert_array_equal(np.sort(split["train"]), np.sort(train[:30]))
    np.testing.assert_array_equal(split["val"], val)
    np.testing.assert_array_equal(split["test"], test)
    valid = np.arange(60)
    for bad, message in (
        ({"train": train, "val": val}, "exactly the keys"),
        ({"train": [0, 1], "val": [1, 2], "test": []}, "overlap"),
        ({"train": [0, 0], "val": [1], "test": []}, "repeats"),
        ({"train": [0, 99], "val": [1], "test": []}, "not valid design points"),
        ({"train": [0], "val": [], "test": []}, "at least one train and one val"),
    ):
        with pytest.raises(ValueError, match=message):
            explicit_split(bad, valid)


def test_report_and_seeded_training(emu, tmp_path):
    report = emulator_report(emu, synthetic_set(120), tmp_path / "report", progress=False)
    assert report["n_test"] == len(emu.training["split"]["test"])
    assert report["test_points"] == "the emulator's held-out test split"
    for key in ("value_error_sigma_obs", "jacobian_rel_error", "fisher", "calibration", "acceptance"):
        assert key in report
    assert 0.0 < report["fisher"]["overlap_median"] <= 1.0
    assert set(report["figures"]) >= {"value_error.png", "jacobian_error.png", "fisher.png", "calibration.png"}
    assert json.loads((tmp_path / "report" / "emulator_report.json").read_text())["n_test"] == report["n_test"]
    with pytest.raises(ValueError, match="trained on relations"):
        other = synthetic_set(10)
        other.observations = sapphire.Observations.default().select("smhm")
        emulator_report(emu, other, tmp_path / "bad", progress=False)


def test_same_seed_same_emulator():
    ts = synthetic_set(40, seed=9)
    a = train_emulator(ts, ensemble=2, seed=3, **dict(TINY, epochs=5))
    b = train_emulator(ts, ensemble=2, seed=3, **dict(TINY, epochs=5))
    np.testing.assert_array_equal(np.asarray(a.predict(PRIOR.centre)[0]), np.asarray(b.predict(PRIOR.centre)[0]))


def test_trains_from_a_zarr_store(tmp_path):
    """The streaming path: a small store (synthetic rows written into the real layout), read
    through training_sets.open_training_set / batches."""
    from training_sets import open_training_set
    from training_sets.store import create_store

    theta = PRIOR.from_unit(np.random.default_rng(11).uniform(size=(40, 8)))
    path = create_store(
        tmp_path / "ts.zarr",
        theta,
        sapphire.Model(),
        sapphire.HaloPopulation.from_diffmah(4, seed=0),
        OBS,
        design={"kind": "test"},
        chunk=8,
    )
    import zarr

    root = zarr.open_group(str(path), mode="r+")
    values, jac = synthetic(theta)
    root["summaries"][:] = values
    root["summary_stderr"][:] = 0.02
    root["summary_support"][:] = 50.0
    root["summary_jacobian"][:] = jac
    n_failed = np.zeros(40, np.int32)
    n_failed[0] = 1
    root["n_failed"][:] = n_failed
    root["done"][:] = True
    ts = open_training_set(path)
    with pytest.warns(UserWarning, match="1 of 40 design points excluded"):
        model = train_emulator(str(path), ensemble=2, block_size=16, **dict(TINY, epochs=3))
    assert model.store_fingerprint == ts.fingerprint
    assert model.training["excluded"]["failed_halos"] == 1
    assert model.store_identity["schema_version"] == ts.schema_version
    report = emulator_report(model, ts, tmp_path / "report", figures=False, progress=False)
    assert report["n_test"] == len(model.training["split"]["test"]) and report["store"]["fingerprint"] == ts.fingerprint


def test_error_by_parameter_half_locates_the_bad_half():
    """Errors that grow towards low A_etaM show up as a lower-half/upper-half contrast in
    A_etaM (expected medians 0.1975 / 0.0925) and in no other parameter (both ~0.145)."""
    from emulator.report import error_by_parameter_half

    u = np.random.default_rng(4).uniform(size=(2000, 8))
    jac_error = 0.04 + 0.21 * (1.0 - u[:, 0])
    value_error = 2.0 * jac_error[:, None] * np.ones((1, S))
    halves = error_by_parameter_half(
        PRIOR.from_unit(u), {"value_error": value_error, "jacobian_rel_error": jac_error}, PRIOR
    )
    first = halves[PRIOR.names[0]]
    assert first["jacobian_lower"] == pytest.approx(0.1975, abs=0.01)
    assert first["jacobian_upper"] == pytest.approx(0.0925, abs=0.01)
    assert first["value_worst_lower"] == pytest.approx(2 * first["jacobian_lower"])
    for name in PRIOR.names[1:]:
        assert halves[name]["jacobian_lower"] == pytest.approx(0.145, abs=0.015), name
        assert halves[name]["jacobian_upper"] == pytest.approx(0.145, abs=0.015), name


def test_model_stderr_keeps_the_slope_across_a_dense_posterior_region(emu):
    """The interpolated exact-model stderr (EmulatorForward's model variance) keeps its slope
    across a posterior-sized cluster of refine points inside a prior-wide design: the slope of
    log stderr enters ln L through its normalisation.  A kernel mean at the design's spacing
    flattened it (the quickstart's -0.3 sigma shift, docs/design.md s.14); the local-linear fit
    recovers a planted slope to 5%, is exact for a constant, and is differentiable."""
    import copy

    rng = np.random.default_rng(0)
    prior = emu.prior
    centre = np.full(prior.ndim, 0.5)
    wide = rng.uniform(size=(300, prior.ndim))
    cluster = np.tile(centre, (300, 1))
    cluster[:, :2] += rng.normal(0.0, 0.02, size=(300, 2))  # a 2-free check's posterior, sd 0.02 of the box
    unit = np.vstack([wide, cluster])
    slope = 5.0  # d log stderr / d u_0: -18% to +22% across +-2 sd
    log_se = np.log(0.1) + slope * (unit[:, :1] - 0.5) + np.zeros((1, emu.n_summary))
    planted = copy.copy(emu)
    planted.training_theta = np.asarray(prior.from_unit(unit))
    planted.training_stderr = np.exp(log_se)
    planted._stderr_model = None
    points = np.tile(centre, (5, 1))
    points[:, 0] += np.linspace(-0.04, 0.04, 5)
    got = np.log(np.asarray(planted.model_stderr(prior.from_unit(points))))
    fitted = np.polyfit(points[:, 0], got[:, 0], 1)[0]
    assert fitted == pytest.approx(slope, rel=0.05)
    np.testing.assert_allclose(got[2], np.log(0.1), atol=1e-3)
    constant = copy.copy(planted)
    constant.training_stderr = np.full_like(planted.training_stderr, 0.2)
    constant._stderr_model = None
    np.testing.assert_allclose(
        np.asarray(constant.model_stderr(prior.from_unit(rng.uniform(size=(4, prior.ndim))))), 0.2, rtol=1e-9
    )
    # against an independent weighted least-squares solve of every coefficient (numpy)
    from scipy.spatial import cKDTree

    from emulator.artifact import STDERR_BANDWIDTH, STDERR_RIDGE

    h = STDERR_BANDWIDTH * np.median(cKDTree(unit).query(unit, k=2)[0][:, 1])
    u0 = rng.uniform(0.2, 0.8, size=prior.ndim)
    du = (unit - u0) / h
    w = np.exp(-0.5 * np.sum(du**2, axis=1) - np.max(-0.5 * np.sum(du**2, axis=1)))
    x = np.hstack([np.ones((len(du), 1)), du])
    a = (x * w[:, None]).T @ x + STDERR_RIDGE * w.sum() * np.diag(np.r_[0.0, np.ones(prior.ndim)])
    reference = np.exp(np.linalg.solve(a, (x * w[:, None]).T @ log_se)[0])
    np.testing.assert_allclose(np.asarray(planted.model_stderr(prior.from_unit(u0))), reference, rtol=1e-9)
    theta = np.asarray(prior.from_unit(centre))
    grad = jax.grad(lambda t: jnp.log(planted.model_stderr(t)[0]))(jnp.asarray(theta))
    assert grad[0] * float(prior.width[0]) == pytest.approx(slope, rel=0.05) and np.all(np.isfinite(grad))
