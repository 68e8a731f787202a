"""A config from flags and `--set section.field=value` overrides (`build_config`, `apply_overrides`): every
path named, typed and checked, with the field and the fix in each error."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, get_type_hints

from cent_serve.config.checks import _check, _number_fix, _numeric_fields
from cent_serve.config.fields import (DERIVED_FIELDS, _SECTION_FIX, _coerce, _from_dict, _is_null, _join, _not_a_field,
                                      _sections, _typed, served_context)
from cent_serve.config.files import load_config
from cent_serve.config.gpu import parse_hardware
from cent_serve.config.presets import resolve_model
from cent_serve.config.tree import CentConfig


MODEL_CHOSEN_WHOLE = ("model.name", "model.checkpoint")
"""Fields `--set` does not take: they name the model, whose every field `--model` (a preset or a
checkpoint directory) sets at once; set alone, they would relabel the model, not load it."""


def _parse_override(data: dict[str, Any], item: str) -> tuple[dict[str, Any], str, Any]:
    """(the section's dict in `data`, the field, its typed value) of one `section.field=value`
    string: ValueError naming an unknown field or section, a section set to a value, a value
    of the wrong type or against the config's rule for numbers (`_number_fix`), before anything
    is built. Cross-field checks are left to the config's own validation."""
    path, sep, text = item.partition("=")
    path = path.strip()
    if not sep or not path:
        raise ValueError(f"override {item!r} is invalid: write section.field=value, e.g. device.clock_hz=1e9")
    keys = path.split(".")
    node: Any = data
    cls: type = CentConfig
    where = ""
    for key in keys[:-1]:
        if not isinstance(node, dict) or key not in node or key not in _sections(cls):
            raise ValueError(_not_a_field(path, f"{_join(where, key)} is not a config section (sections"
                                                f"{' of ' + where if where else ''}: {', '.join(_sections(cls)) or 'none'})"))
        node, cls, where = node[key], _sections(cls)[key], _join(where, key)
    name = keys[-1]
    if not isinstance(node, dict) or name not in node:
        gone = DERIVED_FIELDS.get(path)
        raise ValueError(f"{path} is not a field any more: {gone}" if gone else
                         _not_a_field(path, f"known fields{' of ' + where if where else ''} are {', '.join(sorted(node))}"))
    if name in _sections(cls):
        _check(False, path, text, _SECTION_FIX.format(name=path, leaf=name))
    if path in MODEL_CHOSEN_WHOLE and not (path == "model.checkpoint" and _is_null(text)):
        _check(False, path, text, f"the model is chosen whole: use --model NAME_OR_DIR (a preset or a checkpoint "
                                  f"directory; cent sweep: --vary model=A,B), e.g. --model {text}")
    if name in _numeric_fields(cls):  # parsed as the field's type, whatever the value it holds
        kind, optional = _numeric_fields(cls)[name]
        value = None if optional and _is_null(text) else _coerce(text, kind(), path)
        fix = _number_fix(cls, name, value)
        _check(fix is None, path, value, fix or "")
    else:
        value = _typed(_coerce(text, node[name], path), get_type_hints(cls)[name], path)
    return node, name, value


def _served_context(overrides: list[str]) -> dict[str, int]:
    """`fields.served_context` of the last model.max_seq_len `overrides` set, else {}: a checkpoint's
    config.json is read within the context served, so a sliding window that would hide keys only beyond it
    (Qwen's, Gemma 2's) runs. A value that is no positive integer is left to `apply_overrides`'s refusal."""
    found: dict[str, int] = {}
    for item in overrides:
        path, _, value = item.partition("=")
        if path.strip() == "model.max_seq_len":
            found = served_context(value)
    return found


def build_config(model: str | None = None, *, config: str | Path | None = None, devices: int | None = None,
                 pp: int | None = None, tp: int | None = None, hardware: str | None = None,
                 numerics: str | None = None, seed: int | None = None, overrides: list[str] | tuple = ()) -> CentConfig:
    """The config the `cent` commands' flags resolve, as keywords: `build_config("llama2-70b", devices=32,
    pp=80, overrides=["device.clock_hz=1e9"])` is `--model llama2-70b --devices 32 --pp 80 --set
    device.clock_hz=1e9`. In their order of precedence: the `config` file (YAML), then `model` (a
    preset's name or a checkpoint directory, replacing the whole model section), `seed`, `numerics`,
    `devices`, `pp`, `tp` (None: the file's or the default), `hardware` (`cent` or `gpu:KIND:N`), then
    every `overrides` item (`section.field=value`). ValueError, one line naming the field, the value and
    the fix (worded with the flags: `--model` is `model`, `--set` is `overrides`)."""
    if isinstance(overrides, str):  # one item given bare: a list of its characters would be refused one by one
        overrides = [overrides]
    served = _served_context(list(overrides or ()))  # the context a checkpoint's config.json is read within
    cfg = load_config(config, served) if config else CentConfig()
    if model is not None:  # "" is refused by name, not read as "not given" (the default model)
        cfg.model = resolve_model(str(model), **served)
    if seed is not None:
        cfg.model.seed = seed
    if numerics is not None:  # False or "" are refused, not read as "not given" (auto)
        if not isinstance(numerics, str):
            raise ValueError(f"numerics={numerics!r} is invalid: use 'full', 'off' or 'auto' (a string: "
                             f"numerics=\"off\" for timing only)")
        cfg.numerics = numerics
    if devices is not None or pp is not None or tp is not None:
        p = cfg.parallel  # these replace their fields; the rest (lm_head) is the config's
        cfg.parallel = dataclasses.replace(p, num_devices=p.num_devices if devices is None else devices,
                                           pp=p.pp if pp is None else pp, tp=p.tp if tp is None else tp)
    overrides = list(overrides or ())
    if hardware is not None:
        gpu = parse_hardware(hardware, _custom_name(cfg, overrides))
        if gpu is None:
            cfg.gpu = dataclasses.replace(cfg.gpu, count=0)
        else:  # set as the first overrides: a kind of one's own may be described by the --set items after it
            overrides = [f"gpu.kind={gpu[0]}", f"gpu.count={gpu[1]}", *overrides]
    cfg = apply_overrides(cfg, overrides)
    if hardware is not None:
        _check_hardware(hardware, cfg)
    return cfg


def _custom_name(cfg: CentConfig, overrides: list[str]) -> str:
    """gpu.custom.name as the config will have it: the last `--set gpu.custom.name=` of `overrides`, else
    the config file's (`--hardware gpu:NAME:N` may name the kind a --set describes)."""
    given = [item.split("=", 1)[1].strip() for item in overrides
             if "=" in item and item.split("=", 1)[0].strip() == "gpu.custom.name"]
    return given[-1] if given else cfg.gpu.custom.name


def _check_hardware(hw: str, cfg: CentConfig) -> None:
    """`--hardware` says what serves; a `--set gpu.count` or `gpu.kind` that contradicts it (e.g.
    `--hardware gpu:a100-80gb:4 --set gpu.count=0`, which would quietly run CENT) is refused."""
    gpu = parse_hardware(hw, cfg.gpu.custom.name)
    if gpu is None:
        wrong = "gpu.count" if cfg.on_gpus else None
    else:
        wrong = "gpu.count" if cfg.gpu.count != gpu[1] else "gpu.kind" if cfg.gpu.kind != gpu[0] else None
    if wrong:
        value = getattr(cfg.gpu, wrong.split(".")[1])
        raise ValueError(f"{wrong}={value!r} is invalid with --hardware {hw}, which sets the hardware: drop "
                         f"--set {wrong}, or say it in --hardware (gpu:KIND:N for GPUs, cent for CENT devices)")


def check_override(cfg: CentConfig, item: str) -> Any:
    """The typed value of `item`, or ValueError when `apply_overrides(cfg, [item])` would refuse it on
    its own (an unknown field, a value of the wrong type or against the rule for numbers); `cent
    sweep` checks its `--vary` values with it before any point runs."""
    return _parse_override(dataclasses.asdict(cfg), item)[2]


def apply_overrides(cfg: CentConfig, overrides: list[str]) -> CentConfig:
    """Apply `section.field=value` strings (e.g. `device.clock_hz=1e9`) and re-validate."""
    data = dataclasses.asdict(cfg)
    for item in overrides:
        node, name, value = _parse_override(data, item)
        node[name] = value
    return _from_dict(CentConfig, data, "")
