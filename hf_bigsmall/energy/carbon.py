"""Grid carbon intensity: CO2 = kWh x gCO2/kWh.

The intensity is the user's number when given, else the country's from the table below, else the
world average; `GridIntensity.origin` records which, and every report shows it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .meters.base import JOULES_PER_KWH, float_from_env, warn_once

# Carbon intensity of electricity generation, gCO2eq/kWh, 2023, rounded. Source: Ember, Yearly
# Electricity Data (also published by Our World in Data, "Carbon intensity of electricity
# generation"). Keys are ISO 3166-1 alpha-3 codes, as the Hub and codecarbon use. Grids change
# every year: pass your provider's figure as `grid_intensity_g_per_kwh` when you have one.
GRID_INTENSITY_G_PER_KWH: dict[str, float] = {
    "AUS": 549, "AUT": 110, "BEL": 138, "BRA": 98, "CAN": 170, "CHE": 34, "CHN": 582,
    "DEU": 381, "DNK": 151, "ESP": 174, "FIN": 79, "FRA": 56, "GBR": 238, "IDN": 676,
    "IND": 713, "IRL": 282, "ISL": 28, "ITA": 331, "JPN": 485, "KOR": 432, "MEX": 423,
    "NLD": 268, "NOR": 30, "POL": 662, "PRT": 165, "RUS": 441, "SGP": 471, "SWE": 41,
    "TWN": 561, "USA": 369, "ZAF": 708,
}
WORLD_AVERAGE_G_PER_KWH = 481.0  # Ember 2023 world average
# The dirtiest national grids are near 900 gCO2/kWh; anything above this is a unit mistake (kg?).
MAX_G_PER_KWH = 2000.0
INTENSITY_ENV_VAR = "HF_BIGSMALL_GRID_INTENSITY"


@dataclass(frozen=True)
class GridIntensity:
    """gCO2eq per kWh, and where it came from (`user`, `country table (FRA)`, `default ...`)."""

    g_per_kwh: float
    origin: str
    country_iso_code: str | None = None

    def co2_grams(self, energy_joules: float) -> float:
        return energy_joules / JOULES_PER_KWH * self.g_per_kwh


def _check_intensity(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"grid intensity must be a number of gCO2/kWh, got {type(value).__name__}"
    if not 0 <= value <= MAX_G_PER_KWH:
        return (
            f"grid intensity {value} gCO2/kWh is outside [0, {MAX_G_PER_KWH:.0f}] (grids range from "
            "about 20 to 900 gCO2/kWh; was it given in kg or per MWh?)"
        )
    return None


def resolve_grid_intensity(
    grid_intensity_g_per_kwh: float | None = None, country_iso_code: str | None = None
) -> GridIntensity:
    """The user's intensity, else `HF_BIGSMALL_GRID_INTENSITY`, else the country's, else the world
    average. Bad arguments raise `ValueError`; a bad environment value is reported and skipped.
    """
    country = country_iso_code.upper() if isinstance(country_iso_code, str) else country_iso_code
    if country is not None and (not isinstance(country, str) or len(country) != 3):
        raise ValueError(f"country_iso_code must be an ISO 3166-1 alpha-3 code such as 'FRA' or 'USA', got {country_iso_code!r}.")
    if grid_intensity_g_per_kwh is not None:
        problem = _check_intensity(grid_intensity_g_per_kwh)
        if problem:
            raise ValueError(f"grid_intensity_g_per_kwh: {problem}. Leave it unset to use the country table or the world average.")
        return GridIntensity(float(grid_intensity_g_per_kwh), "user", country)

    value, problem = float_from_env(INTENSITY_ENV_VAR)
    if value is not None:
        problem = _check_intensity(value)
        if problem is None:
            return GridIntensity(value, "environment", country)
    if problem:
        warn_once(f"{INTENSITY_ENV_VAR}: {problem}; ignoring it.")

    if country is not None:
        if country not in GRID_INTENSITY_G_PER_KWH:
            raise ValueError(
                f"No grid intensity for country {country!r} in the table ({', '.join(sorted(GRID_INTENSITY_G_PER_KWH))}): "
                "pass grid_intensity_g_per_kwh with your grid's figure."
            )
        return GridIntensity(GRID_INTENSITY_G_PER_KWH[country], f"country table ({country}, Ember 2023)", country)
    return GridIntensity(WORLD_AVERAGE_G_PER_KWH, "default (world average, Ember 2023; set country_iso_code or grid_intensity_g_per_kwh)")
