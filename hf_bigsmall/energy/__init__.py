"""Energy and CO2 accounting for training and inference.

- `meters`: NVML (GPU), RAPL (CPU package and DRAM), a labelled CPU-time estimate and an
  optional CodeCarbon cross-check, behind one interface; `select_meters` picks them.
- `callback.EnergyCallback`: per logging interval, evaluation, prediction and whole training,
  logged through the Trainer and written to `energy.json`.
- `inference.measure_inference`: joules per sample, latency and throughput of a forward pass.
- `card.co2_eq_emissions`: the Hub's `co2_eq_emissions` model-card metadata.

Nothing here imports torch, transformers or pynvml at import time.
"""
