"""One config tree for cent-serve (nested dataclasses, one docstring per field).

`CentConfig` holds everything: the model, the CENT device, the CXL fabric, the
parallel mapping, the scheduler and the server (and, for a comparison, the GPUs).
Every field has the paper's value (or a sensible default) and every cross-field
check raises `ValueError` naming the field, the offending value and the fix.

Hardware constants cite docs/hardware_model.md (the restatement of the CENT paper,
ASPLOS 2025, and its artifact) by section.

The sections live in modules of their own; import from here:

- `model`: `ModelConfig`
- `presets`: the presets (`MODEL_PRESETS`, `model_preset`), `model_label`, `resolve_model`
- `hardware`: `DeviceConfig`, `EnergyConfig`, `FabricConfig`
- `runtime`: `ParallelConfig`, `SchedulerConfig`, `ServerConfig`
- `gpu`: `GpuConfig`, `parse_hardware`
- `tree`: `CentConfig`
- `overrides`: `build_config`, `apply_overrides` (`--set section.field=value`)
- `files`: `load_config` (YAML), `config_to_dict`
- `checks`, `fields`: what every section shares (range checks, dotted paths, typed values)
- `hf_config` (with `families`, `gemma3`, `hf_files`): a checkpoint's config.json as a `ModelConfig`
  (`model_config_from_hf`, which `resolve_model` and a YAML `checkpoint:` call)
"""
from cent_serve.config.checks import NUMBER_RANGE
from cent_serve.config.files import REDACTED, bench_flags, config_to_dict, load_config
from cent_serve.config.gpu import GPU_ATTENTION_READS, GpuConfig, parse_hardware
from cent_serve.config.hardware import DeviceConfig, EnergyConfig, FabricConfig
from cent_serve.config.model import MODEL_TYPES, MOE_TYPES, ROPE_TYPES, ModelConfig
from cent_serve.config.overrides import apply_overrides, build_config, check_override
from cent_serve.config.presets import MODEL_PRESETS, model_label, model_preset, preset_changes, resolve_model
from cent_serve.config.runtime import (LM_HEAD_PLACEMENTS, LOGPROBS_MODES, MAX_DEVICES, PLACEMENTS, ParallelConfig,
                                       SchedulerConfig, ServerConfig)
from cent_serve.config.tree import CentConfig, checkpoint_has_weights

__all__ = [
    "ModelConfig", "DeviceConfig", "EnergyConfig", "FabricConfig", "ParallelConfig", "SchedulerConfig",
    "ServerConfig", "GpuConfig", "CentConfig", "parse_hardware", "MODEL_PRESETS", "model_preset", "model_label",
    "preset_changes", "resolve_model", "build_config", "load_config", "apply_overrides", "check_override",
    "config_to_dict", "bench_flags", "checkpoint_has_weights", "MAX_DEVICES", "PLACEMENTS", "LOGPROBS_MODES",
    "LM_HEAD_PLACEMENTS", "MODEL_TYPES", "MOE_TYPES", "ROPE_TYPES", "GPU_ATTENTION_READS", "NUMBER_RANGE", "REDACTED",
]
