"""Sensitivity figures, the prior-predictive helpers and the ``sensitivity`` / ``ppc`` commands.

The commands run in-process on tiny sizes with the tight Tsit5 settings of test_likelihood.py
and 10 halos, so that they reuse its compiled solves when both files run together.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.figure import Figure

import sapphire
from sapphire import plots
from sapphire.cli import _append_halos, main
from sapphire.prior import latin_hypercube

TIGHT_ARGS = ["--solver", "tsit5", "--rtol", "1e-10", "--atol", "1e-10", "--quiet", "--seed", "1"]
PRIOR = sapphire.DEFAULT_PRIOR


# ------------------------------------------------------------------------------------ figures
def test_jacobian_heatmap(tmp_path):
    jac = np.arange(56.0).reshape(7, 8) / 10 - 2.0
    jac[3, 4] = np.nan
    fig = plots.jacobian_heatmap(jac, title="halo", path=tmp_path / "h.png")
    assert isinstance(fig, Figure)
    assert (tmp_path / "h.png").stat().st_size > 10_000
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == 56 and "nan" in texts and f"{jac[6, 7]:.2g}" in texts
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list(sapphire.PARAMETER_NAMES)
    with pytest.raises(ValueError, match="shape"):
        plots.jacobian_heatmap(np.zeros((8, 7)))


def test_relation_sensitivities_and_binning():
    rng = np.random.default_rng(0)
    jac = rng.normal(size=(3, 5, 7, 8))
    sens = plots.relation_sensitivities(jac)
    np.testing.assert_array_equal(sens["log_mstar"], jac[..., 0, :])
    np.testing.assert_array_equal(sens["log_gas_ratio"], jac[..., 2, :] - jac[..., 0, :])
    np.testing.assert_array_equal(sens["oxygen_abundance"], jac[..., 3, :] - jac[..., 2, :])
    mass = np.array([10.1, 10.2, 11.1, 11.9, 12.0])
    values = sens["log_mstar"].copy()
    values[0, 0] = np.nan  # a failed halo in one draw
    centres, medians, counts = plots.binned_sensitivity(mass, values, [10.0, 11.0, 12.0])
    np.testing.assert_allclose(centres, [10.5, 11.5])
    assert counts.tolist() == [5, 9]  # 12.0 belongs to the last bin (closed on the right)
    sel = np.abs(values[:, :2].reshape(-1, 8))
    np.testing.assert_allclose(medians[0], np.median(sel[np.all(np.isfinite(sel), axis=1)], axis=0))


def test_sensitivity_vs_mass_and_ppc_figures(tmp_path):
    rng = np.random.default_rng(1)
    fig = plots.sensitivity_vs_mass(np.linspace(10, 12.5, 6), rng.normal(size=(4, 6, 7, 8)), path=tmp_path / "s.png")
    assert isinstance(fig, Figure) and len(fig.axes) == 3 and (tmp_path / "s.png").exists()
    assert len(fig.axes[0].get_lines()) == 8
    obs = sapphire.Observations.default()
    draws = obs.y[None, :] + rng.normal(0, 0.3, (50, obs.n_summary))
    fig = plots.prior_predictive_bands(obs, draws, path=tmp_path / "p.png")
    assert isinstance(fig, Figure) and len(fig.axes) == 3 and (tmp_path / "p.png").exists()
    gas_panel = fig.axes[obs.names.index("gas_ratio")]
    text = " ".join(t.get_text().replace("\n", " ") for t in gas_panel.texts)
    assert "means include non-detections" in text and "say so" not in text
    with pytest.raises(ValueError, match="draws"):
        plots.prior_predictive_bands(obs, draws[:, :-1])


# --------------------------------------------------------------------------- prior sampling
def test_latin_hypercube_is_seeded_stratified_and_inside_the_box():
    a, b, c = latin_hypercube(PRIOR, 16, 3), latin_hypercube(PRIOR, 16, 3), latin_hypercube(PRIOR, 16, 4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    PRIOR.validate(a)
    strata = np.floor(PRIOR.to_unit(a) * 16).astype(int)
    for column in strata.T:  # one point per stratum in every dimension
        assert sorted(column.tolist()) == list(range(16))
    corners = PRIOR.corners()
    assert corners.shape == (256, 8) and len({tuple(r) for r in corners}) == 256


# ---------------------------------------------------------------------------------- commands
def test_cli_sensitivity(tmp_path):
    out = tmp_path / "sens"
    assert main(["sensitivity", "--halos", "9", "--draws", "2", "--bins", "2", "--out", str(out), *TIGHT_ARGS]) == 0
    for name in ("jacobian_mw.png", "sensitivity_vs_mass.png"):
        assert (out / name).stat().st_size > 10_000
    report = json.loads((out / "sensitivity.json").read_text())
    assert report["parameters"] == list(sapphire.PARAMETER_NAMES)
    assert len(report["thetas"]) == 3 and report["failed_per_draw"] == [0, 0, 0]
    np.testing.assert_allclose(report["thetas"][0], PRIOR.centre)
    assert abs(report["mw_halo"]["log_mhalo"] - 12.0) < 0.02
    for q in ("log_mstar", "log_gas_ratio", "oxygen_abundance"):
        entry = report["quantities"][q]
        medians = np.array(entry["median_abs"])
        assert medians.shape == (2, 8) and np.all(np.isfinite(medians))
        assert entry["dominant"] == [report["parameters"][i] for i in np.argmax(medians, axis=1)]
        scaled = np.array(entry["median_abs_times_prior_width"])
        np.testing.assert_allclose(scaled, medians * np.array(report["prior_width"]), rtol=1e-12)
        assert sum(entry["counts"]) == 2 * 9  # 2 draws x 9 halos (the MW halo is not in the ensemble)
    # the heat map's Jacobian is the MW halo's at the prior centre
    model = sapphire.Model(solver="tsit5", rtol=1e-10, atol=1e-10)
    halos = _append_halos(
        sapphire.HaloPopulation.from_diffmah(9, seed=1),
        sapphire.HaloPopulation.from_diffmah(1, logm_min=11.99, logm_max=12.01, seed=1),
    )
    jac = np.asarray(model.jacobian(PRIOR.centre, halos))[-1]
    np.testing.assert_allclose(report["mw_halo"]["jacobian"], jac, rtol=1e-12, atol=1e-14)


def test_cli_ppc(tmp_path):
    out = tmp_path / "ppc"
    assert main(["ppc", "--draws", "3", "--halos", "10", "--out", str(out), *TIGHT_ARGS]) == 0
    assert (out / "ppc.png").stat().st_size > 10_000
    report = json.loads((out / "ppc.json").read_text())
    draws = np.load(out / "ppc_draws.npz")
    obs = sapphire.Observations.default()
    assert draws["mean"].shape == (3, obs.n_summary) and report["n_draws"] == 3
    assert report["failed_per_draw"] == [0, 0, 0] and report["draws_with_failures"] == 0
    np.testing.assert_array_equal(draws["thetas"], latin_hypercube(PRIOR, 3, 1))
    # the recorded draws are the model's summaries at the recorded thetas
    model = sapphire.Model(solver="tsit5", rtol=1e-10, atol=1e-10)
    again = model.summaries(draws["thetas"][1], sapphire.HaloPopulation.from_diffmah(10, seed=1), obs)
    np.testing.assert_allclose(draws["mean"][1], again.mean, rtol=0, atol=1e-12)
    # poorly supported summaries (10 halos cannot cover every centre) are counted and recorded
    np.testing.assert_allclose(draws["support"][1], again.support, rtol=1e-12)
    poor = draws["support"] < sapphire.summaries.MIN_SUPPORT
    assert report["poorly_supported_per_draw"] == poor.sum(axis=1).tolist() and poor.any()
    assert again.n_poorly_supported == poor[1].sum() == len(again.poorly_supported)
    np.testing.assert_allclose([p["fraction_poorly_supported"] for p in report["points"]], poor.mean(axis=0))
    lo, hi = draws["mean"].min(axis=0), draws["mean"].max(axis=0)
    inside = []
    for i, point in enumerate(report["points"]):
        assert point["y"] == pytest.approx(obs.y[i]) and point["envelope"] == pytest.approx([lo[i], hi[i]])
        assert point["inside_envelope"] == bool(lo[i] <= obs.y[i] <= hi[i])
        b_lo, b_hi = point["band"]
        assert lo[i] <= b_lo <= b_hi <= hi[i]
        assert point["inside_band"] == bool(b_lo <= obs.y[i] <= b_hi)
        inside.append(point["inside_envelope"])
    assert report["fractions"]["all"]["inside_envelope"] == pytest.approx(np.mean(inside))
    assert set(report["fractions"]) == {"smhm", "gas_ratio", "mzr", "all"}


@pytest.mark.parametrize(
    "argv, match",
    [
        (["ppc", "--draws", "0"], "--draws"),
        (["ppc", "--halos", "1"], "--halos"),
        (["sensitivity", "--draws", "-1"], "--draws"),
        (["sensitivity", "--bins", "0"], "--bins"),
        (["ppc", "--rtol", "2"], "rtol"),
    ],
)
def test_cli_bad_arguments(tmp_path, argv, match):
    with pytest.raises(SystemExit, match=match):
        main([*argv, "--out", str(tmp_path / "x")])
