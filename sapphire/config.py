"""Every constant of the model in one frozen place (MODEL.md sections 1, 5 and 6).

Units inside the engine: mass Msun, time Gyr, length kpc, velocity km/s,
energy Msun (km/s)^2.  Both classes are frozen dataclasses: hashable, so they can
be passed as static arguments to ``jax.jit``, and serialisable with ``to_dict``
so that every artifact can record them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: Gravitational constant in kpc (km/s)^2 / Msun.
G_KPC_KMS2_PER_MSUN = 4.30091e-6
#: 1 km/s expressed in kpc/Gyr.
KMS_IN_KPC_PER_GYR = 1.02271
#: Proton mass in grams.
PROTON_MASS_G = 1.67262192e-24
#: Boltzmann constant in erg / K.
BOLTZMANN_ERG_PER_K = 1.380649e-16
#: Solar mass in grams.
MSUN_G = 1.98847e33
#: One kpc in cm.
KPC_CM = 3.0856775814913673e21
#: One Gyr in seconds.
GYR_S = 3.15576e16


@dataclasses.dataclass(frozen=True)
class Cosmology:
    """Flat LCDM background (MODEL.md section 1). Defaults: Planck 2015."""

    hubble_constant: float = 67.74  # H0 in km/s/Mpc
    omega_matter: float = 0.3089
    omega_baryon: float = 0.0486

    @property
    def omega_lambda(self) -> float:
        return 1.0 - self.omega_matter

    @property
    def baryon_fraction(self) -> float:
        """Cosmic baryon fraction f_b = Omega_b / Omega_m."""
        return self.omega_baryon / self.omega_matter

    @property
    def little_h(self) -> float:
        return self.hubble_constant / 100.0

    @property
    def hubble_constant_per_gyr(self) -> float:
        """H0 in 1/Gyr (km/s/Mpc -> km/s/kpc -> 1/Gyr)."""
        return self.hubble_constant / 1000.0 * KMS_IN_KPC_PER_GYR

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PLANCK15 = Cosmology()


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Fixed constants of the thermal-limit two-zone model (MODEL.md sections 2-6).

    Change a value with ``dataclasses.replace(DEFAULT_CONFIG, f_rad=0.0)``.
    """

    cosmology: Cosmology = PLANCK15
    # --- halo forcing (section 2)
    halo_start_mass: float = 1e9  # Msun; a halo starts when M_h first reaches this
    # --- initial conditions (section 3)
    initial_star_ism_fraction: float = 1e-4  # M_* = M_ISM = this x f_b M_h at t_i
    initial_metallicity_solar: float = 1e-3  # Z_0 / Z_sun
    # --- power-law parameters (section 4): redshift slopes Az_X
    redshift_slope_eta_m: float = 0.0
    redshift_slope_eta_e: float = 0.0
    redshift_slope_eta_z: float = 0.0
    redshift_slope_t_dep: float = -1.5
    loading_pivot_velocity: float = 100.0  # km/s
    # --- fixed constants (section 5)
    mean_molecular_weight: float = 0.59
    hydrogen_mass_fraction: float = 0.75
    electron_to_hydrogen: float = 1.2
    sn_energy_per_mass: float = 5.03e5  # (km/s)^2 per Msun formed
    metal_yield: float = 0.02
    return_fraction: float = 0.4
    solar_metallicity: float = 0.0134
    solar_oxygen_abundance: float = 8.69  # 12 + log(O/H) of the Sun
    inflow_metallicity: float = 1e-3  # Z_in (absolute); 0 switches pre-enrichment off
    cgm_density_slope: float = 1.5  # alpha in rho ~ r^-alpha
    cgm_inner_radius_fraction: float = 0.1  # r_0 / R_vir
    # --- rates (section 6)
    cooling_cutoff_log_temperature: float = 4.0  # centre of the sigmoid below 1e4 K
    cooling_cutoff_width_dex: float = 0.05
    f_rad: float = 0.1  # floor of the CGM radiative-loss time, in free-fall times
    overpressure_softness: float = 0.02  # d in the softplus of the excess energy
    uv_mass_log_z0: float = 10.0  # log10 M_c at z = 0
    uv_mass_slope: float = 0.28  # d log10 M_c / dz
    uv_mass_log_floor: float = 8.0

    @property
    def baryon_fraction(self) -> float:
        return self.cosmology.baryon_fraction

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable view of every constant (nested cosmology included)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        values = dict(values)
        cosmology = Cosmology(**values.pop("cosmology", {}))
        return cls(cosmology=cosmology, **values)


DEFAULT_CONFIG = ModelConfig()
