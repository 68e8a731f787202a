"""GPUs beside CENT (docs/gpu_model.md): `kinds` (datasheets and constants), `timing` (a step's
time and energy), `executor` (the executor interface over the GPU model)."""
