"""Observed relations: default numbers, validation, CSV input, derived sets, serialisation."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from sapphire.observations import (
    RELATION_NAMES,
    XGASS_DETECTION_LIMIT,
    DetectionLimit,
    Observations,
    Relation,
    mzr_andrews_martini2013,
    smhm_behroozi2019_samples,
)


@pytest.fixture(scope="module")
def default() -> Observations:
    return Observations.default()


# ------------------------------------------------------------------------------------------------
# default numbers
# ------------------------------------------------------------------------------------------------
def test_default_shapes_and_order(default):
    assert default.names == RELATION_NAMES == ("smhm", "gas_ratio", "mzr")
    assert [rel.size for rel in default.relations] == [11, 8, 11]
    assert default.n_summary == 30
    assert default.slices == {
        "smhm": slice(0, 11),
        "gas_ratio": slice(11, 19),
        "mzr": slice(19, 30),
    }
    for rel in default.relations:
        assert np.all(rel.sigma > 0)
        assert rel.x.dtype == np.float64
        assert rel.source and rel.x_label and rel.y_label
    np.testing.assert_allclose(default["smhm"].x, np.linspace(10.0, 12.5, 11), atol=1e-14)
    np.testing.assert_allclose(default["mzr"].x, np.arange(8.0, 10.51, 0.25), atol=1e-14)
    assert "non-detections" in default["gas_ratio"].note


def test_default_smhm_close_to_behroozi_best_fit(default):
    smhm = default["smhm"]
    best = smhm_behroozi2019_samples(smhm.x)[0]
    # the best fit itself is sensible
    at = dict(zip(np.round(smhm.x, 2), best))
    assert -1.7 < at[12.25] < -1.6
    assert -3.35 < at[10.25] < -3.15
    assert np.max(np.abs(smhm.y - best)) < 0.15
    assert np.all((smhm.y > -4.0) & (smhm.y < -1.4))
    # peak efficiency near 10^12.25 Msun, rising below
    assert np.argmax(smhm.y) in (8, 9, 10) and np.all(np.diff(smhm.y[:8]) > 0)
    # sigma: 0.1 dex systematic in quadrature with a 16-84 half-spread of a few 0.01 dex
    assert np.all(smhm.sigma > 0.1) and np.all(smhm.sigma < 0.25)
    samples = smhm_behroozi2019_samples(smhm.x)
    assert samples.shape == (248, 11) and np.all(np.isfinite(samples))
    np.testing.assert_allclose(smhm.y, np.median(samples, axis=0), rtol=1e-14)
    p16, p84 = np.percentile(samples, [16, 84], axis=0)
    np.testing.assert_allclose(smhm.sigma, np.sqrt((0.5 * (p84 - p16)) ** 2 + 0.01), rtol=1e-14)


def test_smhm_at_redshift_two_is_finite_and_lower():
    x = np.linspace(10.5, 12.5, 5)
    z0 = np.median(smhm_behroozi2019_samples(x, 0.0), axis=0)
    z2 = np.median(smhm_behroozi2019_samples(x, 2.0), axis=0)
    assert np.all(np.isfinite(z2)) and np.all(z2 < z0)


def test_default_gas_ratio(default):
    gas = default["gas_ratio"]
    np.testing.assert_allclose(gas.x[[0, -1]], [9.156, 11.211])
    np.testing.assert_allclose(gas.y[0], 0.147 + math.log10(1.33), rtol=1e-14)
    np.testing.assert_allclose(gas.y[-1], -1.499 + math.log10(1.33), rtol=1e-14)
    np.testing.assert_array_equal(gas.sigma, 0.1)
    assert np.all((gas.y > -1.5) & (gas.y < 0.4))


def test_default_mzr(default):
    mzr = default["mzr"]
    np.testing.assert_allclose(mzr_andrews_martini2013(8.901), 8.798 - math.log10(2.0), rtol=1e-14)
    np.testing.assert_allclose(mzr.y, mzr_andrews_martini2013(mzr.x), rtol=1e-14)
    np.testing.assert_array_equal(mzr.sigma, 0.2)
    assert np.all(np.diff(mzr.y) > 0) and np.all((mzr.y > 8.0) & (mzr.y < 8.8))


def test_arrays_are_read_only(default):
    with pytest.raises(ValueError):
        default["smhm"].y[0] = 0.0
    source = np.array([9.0, 10.0])
    rel = Relation("mzr", source, source, source)
    source[0] = 5.0  # a copy was stored
    assert rel.x[0] == 9.0


# ------------------------------------------------------------------------------------------------
# Relation validation
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="sfr"), "'sfr'"),
        (dict(y=[1.0, 2.0]), "lengths differ"),
        (dict(x=[8.0, np.nan, 10.0]), r"x\[1\] = nan"),
        (dict(y=[1.0, 2.0, np.inf]), r"y\[2\] = inf"),
        (dict(sigma=[0.1, -0.2, 0.1]), r"sigma\[1\] = -0.2"),
        (dict(sigma=[0.1, 0.0, 0.1]), r"sigma\[1\] = 0.0"),
        (dict(x=[8.0, 10.0, 10.0]), r"x\[2\] = 10.0"),
        (dict(x=[[8.0, 9.0, 10.0]]), "1-D"),
        (
            dict(x=[8.0, 9.0, 13.0]),
            r"'mzr': centre x\[2\] = 13.0 is outside the relation's declared range \[6.0, 12.5\]",
        ),
        (dict(name="smhm", x=[8.5, 9.0, 10.0]), r"'smhm': centre x\[0\] = 8.5 is outside .* \[9.0, 15.0\]"),
        (dict(bandwidth=0.0), r"'mzr': bandwidth = 0.0 must be finite and > 0"),
        (dict(bandwidth=-0.2), r"'mzr': bandwidth = -0.2 must be"),
        (dict(bandwidth=np.nan), r"'mzr': bandwidth = nan must be"),
        (dict(bandwidth=np.inf), r"'mzr': bandwidth = inf must be"),
        (dict(bandwidth="wide"), r"'mzr': bandwidth = 'wide' is not a number"),
        (dict(x=[9.0], y=[8.0], sigma=[0.1]), r"'mzr': one centre; give its bandwidth"),
        (dict(x=[], y=[], sigma=[]), "no points"),
        (dict(x=["a", "b", "c"]), "not numeric"),
    ],
)
def test_relation_validation(kwargs, match):
    base = dict(name="mzr", x=[8.0, 9.0, 10.0], y=[8.0, 8.1, 8.2], sigma=[0.1, 0.1, 0.1])
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Relation(**base)


def test_bandwidth_default_explicit_and_fingerprint(default):
    """Default bandwidth: twice the median spacing of the centres; it enters equality and fingerprint."""
    assert default["smhm"].bandwidth == pytest.approx(0.5) and default["mzr"].bandwidth == pytest.approx(0.5)
    assert default["gas_ratio"].bandwidth == pytest.approx(2 * np.median(np.diff(default["gas_ratio"].x)))
    wider = dataclasses.replace(default["mzr"], bandwidth=0.7)
    assert wider.bandwidth == 0.7 and wider != default["mzr"]
    assert wider.fingerprint() != default["mzr"].fingerprint()
    assert Relation.from_dict(wider.to_dict()) == wider
    one = Relation("mzr", [9.0], [8.5], [0.1], bandwidth=0.3)
    assert one.bandwidth == 0.3


def test_observations_canonical_order_and_duplicates(default):
    rels = tuple(reversed(default.relations))
    assert Observations(rels).names == RELATION_NAMES
    assert Observations(rels) == default
    with pytest.raises(ValueError, match="more than once"):
        Observations((default["mzr"], default["mzr"]))
    with pytest.raises(ValueError, match="at least one"):
        Observations(())


# ------------------------------------------------------------------------------------------------
# derived sets, identity, serialisation
# ------------------------------------------------------------------------------------------------
def test_select(default):
    sub = default.select(["mzr", "smhm"])
    assert sub.names == ("smhm", "mzr")
    assert sub.n_summary == 22
    assert sub.slices == {"smhm": slice(0, 11), "mzr": slice(11, 22)}
    assert default.select("gas_ratio").names == ("gas_ratio",)
    np.testing.assert_array_equal(sub.y[sub.slices["mzr"]], default.y[default.slices["mzr"]])
    with pytest.raises(ValueError, match="'sfr'"):
        default.select(["sfr"])
    with pytest.raises(ValueError, match="'gas_ratio' is not present"):
        sub.select(["gas_ratio"])
    with pytest.raises(ValueError, match="no names"):
        default.select([])


def test_scaled(default):
    half = default.scaled(0.5)
    np.testing.assert_allclose(half.sigma, 0.5 * default.sigma, rtol=1e-15)
    np.testing.assert_array_equal(half.y, default.y)
    assert half.fingerprint() != default.fingerprint()
    part = default.scaled({"mzr": 0.25})
    np.testing.assert_allclose(part["mzr"].sigma, 0.05)
    np.testing.assert_array_equal(part["smhm"].sigma, default["smhm"].sigma)
    for bad in (0.0, -1.0, np.nan, np.inf, "x"):
        with pytest.raises(ValueError, match="sigma_scale"):
            default.scaled(bad)
    with pytest.raises(ValueError, match="not present"):
        default.select("smhm").scaled({"mzr": 0.5})


def test_stacked_vectors(default):
    assert default.x.shape == default.y.shape == default.sigma.shape == (30,)
    for rel in default.relations:
        np.testing.assert_array_equal(default.y[default.slices[rel.name]], rel.y)


def test_fingerprint(default):
    fp = default.fingerprint()
    assert isinstance(fp, str) and len(fp) == 16 and int(fp, 16) >= 0
    assert Observations.default().fingerprint() == fp
    # labels and notes do not change it; numbers do
    relabelled = Observations(tuple(dataclasses.replace(rel, note="other", x_label="X") for rel in default.relations))
    assert relabelled.fingerprint() == fp
    nudged = default["mzr"].y.copy()
    nudged[3] += 1e-12
    changed = Observations((default["smhm"], default["gas_ratio"], dataclasses.replace(default["mzr"], y=nudged)))
    assert changed.fingerprint() != fp
    assert default.select(["smhm", "mzr"]).fingerprint() != fp
    assert hash(default) == hash(Observations.default())


def test_to_dict_round_trip(default):
    text = json.dumps(default.to_dict())
    back = Observations.from_dict(json.loads(text))
    assert back == default
    assert back.fingerprint() == default.fingerprint()
    assert back["gas_ratio"].note == default["gas_ratio"].note
    d = json.loads(text)
    d["relations"][0]["y"][0] += 0.01
    with pytest.raises(ValueError, match="fingerprint"):
        Observations.from_dict(d)
    del d["fingerprint"]
    assert Observations.from_dict(d) != default


# ------------------------------------------------------------------------------------------------
# CSV input
# ------------------------------------------------------------------------------------------------
def _write_csv(path, rel: Relation, comments=("my table", "second comment")):
    lines = [f"# {c}" for c in comments] + ["x,y,sigma"]
    for a, b, c in zip(rel.x, rel.y, rel.sigma):
        lines.append(f"{float(a)!r},{float(b)!r},{float(c)!r}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_from_csv_round_trip(tmp_path, default):
    paths = {name: _write_csv(tmp_path / f"{name}.csv", default[name]) for name in RELATION_NAMES}
    obs = Observations.from_csv(**paths)
    assert obs.names == RELATION_NAMES
    assert obs["gas_ratio"].detection_limit is None  # a user's table: none unless given
    assert obs.fingerprint() != default.fingerprint()
    obs = Observations.from_csv(**paths, detection_limits={"gas_ratio": XGASS_DETECTION_LIMIT})
    assert obs.fingerprint() == default.fingerprint()
    for rel in obs.relations:
        np.testing.assert_array_equal(rel.y, default[rel.name].y)
        assert "my table" in rel.source and str(paths[rel.name]) in rel.source
        assert rel.x_label == default[rel.name].x_label


def test_from_csv_subset(tmp_path, default):
    path = _write_csv(tmp_path / "gas.csv", default["gas_ratio"].scaled(2.0))
    obs = Observations.from_csv(gas_ratio=str(path))
    assert obs.names == ("gas_ratio",)
    np.testing.assert_allclose(obs.sigma, 0.2)


def test_from_csv_needs_a_file():
    with pytest.raises(ValueError, match="at least one"):
        Observations.from_csv()


def test_from_csv_missing_file(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        Observations.from_csv(mzr=missing)


GOOD_HEADER = "# comment\nx,y,sigma\n"


@pytest.mark.parametrize(
    "body, match",
    [
        ("# only comments\n", "no header"),
        ("x,y\n1,2\n", r"line 1: header must be 'x,y,sigma'"),
        ("x,y,err\n1,2,3\n", r"line 1: header must be 'x,y,sigma'"),
        (GOOD_HEADER, "no data rows"),
        (GOOD_HEADER + "1,2,0.1\n2,3\n", r"line 4 \(data row 2\): expected 3 columns"),
        (GOOD_HEADER + "1,2,0.1,7\n", r"line 3 \(data row 1\): expected 3 columns"),
        (GOOD_HEADER + "1,abc,0.1\n", r"line 3 \(data row 1\), column 'y': 'abc' is not a number"),
        (GOOD_HEADER + "1,2,0.1\n2,nan,0.1\n", r"line 4 \(data row 2\), column 'y': 'nan'"),
        (GOOD_HEADER + "inf,2,0.1\n", r"line 3 \(data row 1\), column 'x': 'inf' is not finite"),
        (GOOD_HEADER + "1,2,0\n", r"line 3 \(data row 1\), column 'sigma': '0' is not > 0"),
        (GOOD_HEADER + "1,2,-0.1\n", r"column 'sigma': '-0.1' is not > 0"),
        (GOOD_HEADER + "1,2,0.1\n3,2,0.1\n2,2,0.1\n", r"line 5 \(data row 3\), column 'x'"),
        (GOOD_HEADER + "1,2,0.1\n1,2,0.1\n", r"line 4 \(data row 2\), column 'x'.*increasing"),
    ],
)
def test_from_csv_bad_input(tmp_path, body, match):
    path = tmp_path / "bad_table.csv"
    path.write_text(body)
    with pytest.raises(ValueError, match=match) as info:
        Observations.from_csv(smhm=path)
    assert "bad_table.csv" in str(info.value)


def test_from_csv_tolerates_blank_lines_and_spaces(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_text("# c\n\n x , y , sigma \n9, 2, 0.1\n\n10 ,3 ,0.2\n")
    rel = Observations.from_csv(mzr=path)["mzr"]
    np.testing.assert_array_equal(rel.x, [9.0, 10.0])
    np.testing.assert_array_equal(rel.sigma, [0.1, 0.2])


def test_xgass_detection_limit_values_and_smoothness(default):
    limit = default["gas_ratio"].detection_limit
    assert limit == XGASS_DETECTION_LIMIT
    helium = math.log10(1.33)
    # Far from the corner at log M* = 9.7 the smooth max is either limit (to < 1e-3 dex).
    np.testing.assert_allclose(
        limit.limit(np.array([8.5, 11.0])), [8.0 - 8.5 + helium, math.log10(0.02) + helium], atol=1e-3
    )
    # A detected galaxy is untouched; an empty ISM enters at the limit; the map is monotone.
    np.testing.assert_allclose(limit.apply(10.5, 0.0), 0.0, atol=1e-6)
    np.testing.assert_allclose(limit.apply(10.5, -9.0), limit.limit(10.5), atol=1e-12)
    ys = np.linspace(-6.0, 1.0, 701)
    observed = np.asarray(limit.apply(10.0, ys))
    assert np.all(np.diff(observed) >= 0.0) and observed.min() >= float(limit.limit(10.0))
    near = ys > float(limit.limit(10.0)) - 2.0  # strictly increasing until softplus underflows
    assert np.all(np.diff(observed[near]) > 0.0)
    # Differentiable, slope in (0, 1]: d y_obs / d y at and below the limit.
    import jax

    slope = jax.vmap(jax.grad(lambda y: limit.apply(10.0, y)))(ys)
    assert np.all((np.asarray(slope) >= 0.0) & (np.asarray(slope) <= 1.0)) and np.all(np.asarray(slope)[near] > 0.0)
    with pytest.raises(ValueError, match="width = -0.1"):
        DetectionLimit(8.0, -1.7, width=-0.1)
    with pytest.raises(ValueError, match="log_mass_limit = nan"):
        DetectionLimit(float("nan"), -1.7)


def test_detection_limit_keeps_an_empty_ism_from_dragging_the_mean(default):
    """Two halos at the same M*: one gas-rich, one whose ISM is (nearly) empty.  Without the
    limit the mean follows the empty one's log ratio; with it, it moves by < 0.05 dex between
    log ratios of -6 and -12."""
    import jax.numpy as jnp

    from sapphire.summaries import summary_statistics

    obs = default.select("gas_ratio")
    plain = Observations((dataclasses.replace(obs["gas_ratio"], detection_limit=None),))
    log_mstar = jnp.array([10.0, 10.0, 10.3])
    means = {}
    for label, o in (("limited", obs), ("plain", plain)):
        for empty in (-6.0, -12.0):
            state = jnp.zeros((3, 7)).at[:, 0].set(log_mstar).at[:, 2].set(log_mstar + jnp.array([-0.5, empty, -0.7]))
            means[label, empty] = np.asarray(summary_statistics(log_mstar + 2.0, state, jnp.ones(3, bool), o)[0])
    assert np.max(np.abs(means["plain", -6.0] - means["plain", -12.0])) > 1.0
    assert np.max(np.abs(means["limited", -6.0] - means["limited", -12.0])) < 0.05
