"""sapphire.cosmology against colossus (flat LCDM, no radiation) and against itself.

Colossus settings: flat=True, relspecies=False (no photons/neutrinos, so Omega_r = 0 and
Omega_L = 1 - Omega_m as in MODEL.md), interpolation=False (exact quadrature rather than
lookup tables), persistence='' (no cache files written).  Residual differences come only from
the constants: colossus uses G = 4.300917e-6 and we use G = 4.30091e-6, and 1 km/s =
1.02271 kpc/Gyr (rounded; exact 1.0227122 for a Julian Gyr), both ~2e-6 relative.  Colossus
measures ages in *tropical* Gyr (3.15569252e16 s) while sapphire's Gyr is Julian (3.15576e16 s,
config.GYR_S): the two differ by 2.2e-5, which the test converts away explicitly.

Tolerances (relative): ages 1e-5 (the brief asked < 1e-4), round trips 1e-12,
Delta_vir 1e-10 (same formula), R_vir 1e-5 (G and rho_crit constants), c_vir 1e-10.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sapphire  # noqa: F401  (enables x64)
from sapphire import cosmology as cs
from sapphire.config import GYR_S, PLANCK15, Cosmology

colossus_cosmology = pytest.importorskip("colossus.cosmology.cosmology")
from colossus.halo import concentration as col_conc  # noqa: E402
from colossus.halo import mass_so  # noqa: E402
from colossus.utils import constants as colossus_constants  # noqa: E402

REDSHIFTS = np.array([0.0, 0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0])


@pytest.fixture(scope="module")
def col():
    return colossus_cosmology.setCosmology(
        "sapphire_planck15",
        params=dict(
            flat=True,
            H0=PLANCK15.hubble_constant,
            Om0=PLANCK15.omega_matter,
            Ob0=PLANCK15.omega_baryon,
            sigma8=0.8159,
            ns=0.9667,
            relspecies=False,
        ),
        interpolation=False,
        persistence="",
    )


def test_radiation_is_off(col):
    assert col.Or0 == 0.0
    assert col.Ode0 == pytest.approx(PLANCK15.omega_lambda, rel=1e-12)


def test_ages_match_colossus(col):
    ours = np.asarray(cs.age_at_redshift(REDSHIFTS))
    theirs = np.array([col.age(z) for z in REDSHIFTS])
    theirs = theirs * colossus_constants.GYR / GYR_S  # tropical -> Julian Gyr
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


def test_present_age():
    t0 = cs.present_age()
    assert isinstance(t0, float)
    assert t0 == pytest.approx(13.80, abs=0.01)
    assert t0 == pytest.approx(float(cs.age_at_scale_factor(1.0)), rel=1e-14)
    assert float(cs.redshift_at_age(t0)) == pytest.approx(0.0, abs=1e-12)


def test_round_trips():
    a = jnp.logspace(-3, 0, 50)
    np.testing.assert_allclose(cs.scale_factor_at_age(cs.age_at_scale_factor(a)), a, rtol=1e-12)
    z = jnp.asarray(REDSHIFTS)
    np.testing.assert_allclose(cs.redshift_at_age(cs.age_at_redshift(z)), z, rtol=1e-11, atol=1e-12)


def test_other_cosmology_changes_age():
    other = Cosmology(hubble_constant=70.0, omega_matter=0.3, omega_baryon=0.045)
    assert cs.present_age(other) != pytest.approx(cs.present_age(), rel=1e-3)
    assert float(cs.age_at_scale_factor(1.0, other)) == pytest.approx(cs.present_age(other))


def test_hubble_and_critical_density(col):
    z = jnp.asarray(REDSHIFTS)
    h = PLANCK15.little_h
    # colossus: H(z) in km/s/Mpc, rho_c in Msun h^2 / kpc^3.
    np.testing.assert_allclose(cs.hubble_parameter(z) * 1000.0, col.Hz(REDSHIFTS), rtol=1e-12)
    np.testing.assert_allclose(cs.critical_density(z), col.rho_c(REDSHIFTS) * h**2, rtol=1e-5)
    np.testing.assert_allclose(cs.matter_fraction(z), col.Om(REDSHIFTS), rtol=1e-12)


def test_virial_overdensity_matches_colossus(col):
    # colossus' deltaVir is w.r.t. the critical density (its densityThreshold multiplies rho_c).
    ours = np.asarray(cs.virial_overdensity(jnp.asarray(REDSHIFTS)))
    np.testing.assert_allclose(ours, mass_so.deltaVir(REDSHIFTS), rtol=1e-10)
    assert ours[0] == pytest.approx(102.0, abs=1.0)
    assert ours[-1] == pytest.approx(18 * np.pi**2, rel=2e-3)


def test_virial_radius_matches_colossus(col):
    h = PLANCK15.little_h
    masses = np.logspace(8, 15, 8)
    for z in (0.0, 1.0, 4.0):
        ours = np.asarray(cs.virial_radius(jnp.asarray(masses), z))
        theirs = mass_so.M_to_R(masses * h, z, "vir") / h  # kpc/h -> kpc
        np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    # V_vir sanity: Milky-Way-mass halo at z = 0 has V_vir ~ 130 km/s (virial definition).
    assert float(cs.virial_velocity(1e12, 0.0)) == pytest.approx(130.0, rel=0.05)


def test_concentration_matches_colossus(col):
    h = PLANCK15.little_h
    masses = np.logspace(10.5, 15, 7)
    for z in (0.0, 0.5, 1.0, 2.0, 4.0):
        ours = np.asarray(cs.halo_concentration(jnp.asarray(masses), z))
        theirs = col_conc.concentration(masses * h, "vir", z, model="dutton14")
        np.testing.assert_allclose(ours, theirs, rtol=1e-10)


def test_nfw_enclosed_mass_fraction():
    c = jnp.array([4.0, 10.0, 20.0])
    np.testing.assert_allclose(cs.nfw_enclosed_mass_fraction(1.0, c), 1.0, rtol=1e-14)
    x = jnp.linspace(0.01, 1.0, 30)
    f = cs.nfw_enclosed_mass_fraction(x, 10.0)
    assert np.all(np.diff(np.asarray(f)) > 0)
    # Direct check at r = R_vir / 10, c = 10: m(1) / m(10).
    m = lambda y: np.log1p(y) - y / (1 + y)  # noqa: E731
    assert float(cs.nfw_enclosed_mass_fraction(0.1, 10.0)) == pytest.approx(m(1.0) / m(10.0), rel=1e-14)


def test_differentiable_and_vectorised():
    def f(z):
        return cs.virial_velocity(1e11, z) + cs.age_at_redshift(z) + cs.halo_concentration(1e11, z)

    g = jax.vmap(jax.grad(f))(jnp.linspace(0.0, 6.0, 13))
    assert np.all(np.isfinite(np.asarray(g)))
    # dt/da = 1 / (a H(a)) in Gyr.
    a = 0.5
    dtda = float(jax.grad(cs.age_at_scale_factor)(a))
    hz = float(cs.hubble_parameter(1.0 / a - 1.0)) * 1.02271  # km/s/kpc -> 1/Gyr
    assert dtda == pytest.approx(1.0 / (a * hz), rel=1e-10)
    assert np.all(np.isfinite(np.asarray(jax.jit(cs.scale_factor_at_age)(jnp.linspace(0.1, 14, 5)))))
