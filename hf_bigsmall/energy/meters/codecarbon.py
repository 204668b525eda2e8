"""CodeCarbon as an optional cross-check (`pip install "hf-bigsmall[codecarbon]"`).

Only its offline tracker is used, with an explicit country, so it never calls the network or
guesses the region; `tracking_mode="process"` makes it a per-process figure like our estimate,
keyed `codecarbon/<host>/<pid>`. It is never chosen automatically: pass `backend="codecarbon"`.
"""

from __future__ import annotations

import os
from typing import Any

from ...utils.import_utils import is_codecarbon_available, require
from .base import JOULES_PER_KWH, EnergyMeter, MeterUnavailable, hostname



class CodeCarbonMeter(EnergyMeter):
    """Reads CodeCarbon's `OfflineEmissionsTracker` energy total (kWh) as cumulative joules.

    Args:
        country_iso_code (`str`): ISO 3166-1 alpha-3 code of where the machine runs (e.g. `"FRA"`);
            required, so that nothing is guessed.

    Example:

    ```python
    >>> meter = CodeCarbonMeter(country_iso_code="FRA")
    >>> meter.read()  # {'codecarbon/myhost/1234': 3.1}
    ```
    """

    energy_source = "codecarbon"
    measures_cpu = True

    def __init__(self, country_iso_code: str):
        if not country_iso_code:
            raise ValueError("The codecarbon backend needs country_iso_code (e.g. 'FRA'): it runs offline and never guesses.")
        if not is_codecarbon_available():
            require("codecarbon")  # raises an ImportError naming the extra
        from codecarbon import OfflineEmissionsTracker

        try:
            self._tracker = OfflineEmissionsTracker(
                country_iso_code=country_iso_code, save_to_file=False, log_level="error", tracking_mode="process"
            )
            self._tracker.start()
        except Exception as error:
            raise MeterUnavailable(f"codecarbon failed to start: {error}") from error
        self.country_iso_code = country_iso_code
        self.key = f"codecarbon/{hostname()}/{os.getpid()}"

    def read(self) -> dict[str, float]:
        self._tracker.flush()  # measures power and energy up to now
        # `_total_energy` is what `flush`/`stop` report from; codecarbon has no public getter for it
        return {self.key: float(self._tracker._total_energy.kWh) * JOULES_PER_KWH}

    def describe(self) -> dict[str, Any]:
        return {
            "energy_source": self.energy_source,
            "method": "codecarbon OfflineEmissionsTracker (tracking_mode=process)",
            "country_iso_code": self.country_iso_code,
        }

    def close(self) -> None:
        try:
            self._tracker.stop()
        except Exception:  # stopping is best effort: the figures were already read
            pass
