"""How a config's fields are named, found and typed: dotted paths, sections, unknown or
removed fields with what was meant, and values coerced from YAML and `--set` text to each field's type."""
from __future__ import annotations

import math
from decimal import Decimal
from dataclasses import fields, is_dataclass
from functools import lru_cache
from typing import Any, get_type_hints

from cent_serve.config.checks import _check


DERIVED_FIELDS = {
    "device.capacity_bytes": "it is derived (num_channels x banks_per_channel x rows_per_bank x row_elements x "
                             "bytes_per_element): set those, e.g. device.rows_per_bank",
    "device.full_row_column_ops": "it is derived (row_elements / burst_elements): set those",
    "device.kv_row_cycles": "it is derived (a row's bursts through the DMA: row_elements / burst_elements lines "
                            "at device.dma_bytes_per_cycle)",
    "device.energy.bank_activation_nj": "it is derived (act_mw x t_rc_ns): set those",
    "device.energy.rd_burst_nj": "it is derived (rd_mw x t_burst_ns): set those",
    "device.energy.wr_burst_nj": "it is derived (wr_mw x t_burst_ns): set those",
    "device.energy.mac16_nj": "it is derived (banks_per_channel x mac_bank_read_share x rd_mw x t_ccd_ns): "
                              "set those, e.g. device.energy.mac_bank_read_share",
    "device.energy.controller_instruction_pj": "it is derived (controller_trx_mw / channels_per_controller, "
                                               "one cycle a data command): set those",
    "device.energy.dram_command_pj": "it is derived (controller_phy_mw / channels_per_controller, one cycle a "
                                     "command): set those",
    "device.energy.precharge_cycles": "it is a time now: device.energy.precharge_ns (16 ns: 32 cycles at 2 GHz)",
    "device.energy.write_precharge_cycles": "it is a time now: device.energy.write_precharge_ns (36.5 ns)",
    "device.energy.sram_static_mw": "it is three fields now: device.energy.global_buffer_static_mw, "
                                    "shared_buffer_static_mw, instruction_buffer_static_mw",
    "device.score_row_cycles": "it is derived per head in a row: device.score_head_cycles (+ its MAC columns)",
    "device.score_rep_cycles": "it is derived per head in a row: device.score_rep_head_cycles",
    "device.sv_parallel_rows": "it is derived (a head's V^T rows in a bank: head_dim / banks_per_channel)",
    "device.acc_norm_base": "the accelerator is described by its parts: device.acc_* (cent info --describe)",
    "device.acc_norm_per_8k": "the accelerator is described by its parts: device.acc_* (cent info --describe)",
    "device.acc_softmax_per_512": "the accelerator is described by its parts: device.acc_* (cent info --describe)",
    "device.acc_head": "the accelerator is described by its parts: device.acc_* (cent info --describe)",
    "device.acc_rotary": "the accelerator is described by its parts: device.acc_* (cent info --describe)",
}
"""Fields that were removed because they are derived from others: what to set instead."""


_TREE: list[type] = []
"""`tree.CentConfig`, the whole config, which `tree` hands in as it loads (`use_tree`): the dataclass
every dotted path starts from, for a mistyped field's "did you mean" and a field's default. Handed in,
not imported: the tree is built of sections whose modules import this one."""


def use_tree(cls: type) -> None:
    """Called once, by `tree`, with `CentConfig`."""
    _TREE[:] = [cls]


def _tree() -> type:
    """The whole config's dataclass (`use_tree`); the package's __init__ loads `tree` before any use."""
    assert _TREE, "cent_serve.config.tree has not handed in CentConfig"
    return _TREE[0]


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


@lru_cache(maxsize=None)
def _sections(cls: type) -> dict[str, type]:
    """Field name -> dataclass of the fields of `cls` that are sections of fields (model, device, ...)."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if is_dataclass(hints[f.name])}


@lru_cache(maxsize=None)
def _all_paths(cls: type = None) -> tuple[str, ...]:
    """Every field's dotted path in the config, sections' fields included (`device.energy.t_ccd_ns`)."""
    if cls is None:  # the whole tree, which is built of these sections
        cls = _tree()
    out = []
    for f in fields(cls):
        sub = _sections(cls).get(f.name)
        out += [f"{f.name}.{p}" for p in _all_paths(sub)] if sub else [f.name]
    return tuple(out)


def _likely_meant(path: str) -> list[str]:
    """Fields a mistyped `path` likely meant: a close spelling of the whole path, else the name, or
    one close to it, in another section (device.t_ccd_ns: device.energy.t_ccd_ns)."""
    import difflib

    paths = _all_paths()
    near = difflib.get_close_matches(path, paths, n=3, cutoff=0.8)
    if not near:
        names = difflib.get_close_matches(path.rsplit(".", 1)[-1], {p.rsplit(".", 1)[-1] for p in paths}, n=3,
                                          cutoff=0.8)
        near = [p for p in paths if p.rsplit(".", 1)[-1] in names]
    return near[:3]


FLAG_FIELDS = {"devices": "parallel.num_devices", "num_devices": "parallel.num_devices", "pp": "parallel.pp",
               "tp": "parallel.tp"}
"""A command-line flag's name (`--devices`, or `cent sweep --vary devices=...`) set as if it were a
field: the field it sets."""


def _not_a_field(path: str, why: str) -> str:
    """The error for a key that is no field: what it likely meant, else `why` (what the section has)."""
    if path in FLAG_FIELDS:
        flag = "devices" if FLAG_FIELDS[path] == "parallel.num_devices" else path
        return (f"{path} is not a field: did you mean {FLAG_FIELDS[path]} (which --{flag} sets)? (cent info "
                "--describe lists every field)")
    near = _likely_meant(path)
    if near:
        return f"{path} is not a field: did you mean {' or '.join(near)}? (cent info --describe lists every field)"
    return f"{path} is not a field: {why}"


_SECTION_FIX = ("{name} is a section of fields, not a value: set its fields, e.g. --set {name}.FIELD=VALUE "
                "(in YAML: `{leaf}: {{FIELD: VALUE, ...}}`)")
"""The fix for a section given a scalar (`--set device=5`, YAML `device: {energy: 5}`)."""


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys by name."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}={data!r} is invalid: expected a mapping of fields")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            gone = DERIVED_FIELDS.get(_join(where, key))
            if gone:
                raise ValueError(f"{_join(where, key)} is not a field any more: {gone}")
            raise ValueError(_not_a_field(_join(where, key), f"known fields{' of ' + where if where else ''} are "
                                                             f"{', '.join(sorted(known))}"))
        hint = hints[key]
        if is_dataclass(hint):
            if value is None:  # a section left empty in YAML (`device:`): its defaults
                continue
            if isinstance(value, dict):
                value = _from_dict(hint, value, _join(where, key))
            elif not isinstance(value, hint):
                _check(False, _join(where, key), value, _SECTION_FIX.format(name=_join(where, key), leaf=key))
        else:
            value = _typed(value, hint, _join(where, key))
        kwargs[key] = value
    return cls(**kwargs)


NULL_WORDS = ("none", "null", "")
"""How a config file or `--set` writes an unset optional field."""


def _is_null(text: str) -> bool:
    return text.strip().lower() in NULL_WORDS


def _int_text(text: str) -> int:
    """An integer written as text: 4096, or as a float that is one (1e4, 64.0: YAML reads `1e4` as a
    string, and --set gives strings). ValueError otherwise."""
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise ValueError(text) from None
        return int(value)


def served_context(value: Any) -> dict[str, int]:
    """{"max_seq_len": N} of a model.max_seq_len value that is a positive integer (an int, or text as
    `_int_text` reads it: 64, 64.0, 6.4e1), else {}: the context a checkpoint's config.json is read
    within (`overrides.build_config`, `files.load_config`). Any other value is refused where the field
    is set, not here."""
    if isinstance(value, bool):
        return {}
    try:
        context = value if isinstance(value, int) else _int_text(str(value).strip())
    except (ValueError, OverflowError):
        return {}
    return {"max_seq_len": context} if context > 0 else {}


def _ids_text(value: Any, name: str) -> tuple[int, ...]:
    """A tuple of ids from a list, one id, or text `5,9` (nothing or none: no ids)."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, str):
        items = [] if _is_null(value) else [x for x in value.split(",") if x.strip()]
    else:
        items = [value]
    try:
        return tuple(v if isinstance(v, int) and not isinstance(v, bool) else _int_text(str(v)) for v in items)
    except (ValueError, OverflowError):
        raise ValueError(f"{name}={value!r} is invalid: expected integers separated by commas "
                         f"(e.g. {name}=128008,128009), or none") from None


def _words_text(value: Any, name: str) -> tuple[str, ...]:
    """A tuple of words from a list, or text `a,b` (nothing or none: no words)."""
    if isinstance(value, str):
        items = [] if _is_null(value) else [x.strip() for x in value.split(",") if x.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    if not all(isinstance(v, str) for v in items):
        raise ValueError(f"{name}={value!r} is invalid: expected words separated by commas "
                         f"(e.g. {name}=full_attention,sliding_attention), or none")
    return tuple(items)


def _factors_text(value: Any, name: str) -> tuple[float, ...]:
    """A tuple of positive numbers from a list or text `1,1.5` (nothing or none: no numbers)."""
    items = value if isinstance(value, (list, tuple)) else [] if value is None or _is_null(str(value)) \
        else [v for v in str(value).split(",") if v.strip()]
    out = []
    for v in items:
        try:
            number = float(v) if not isinstance(v, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and number > 0):
            raise ValueError(f"{name}={value!r} is invalid: expected positive numbers separated by commas "
                             f"(e.g. {name}=1.0,1.5,2.0), or none")
        out.append(number)
    return tuple(out)


def _typed(value: Any, hint: Any, name: str) -> Any:
    """Coerce YAML/JSON scalars to the field's type (PyYAML reads `1.0e9` as a string; `--set`
    gives strings); `X | None` takes None or an X."""
    args = [a for a in getattr(hint, "__args__", ()) if a is not type(None)]
    if type(None) in getattr(hint, "__args__", ()) and len(args) == 1:
        if value is None or (isinstance(value, str) and _is_null(value)):
            return None
        hint = args[0]
        if hint in (int, float) and isinstance(value, str):
            try:
                value = float(value) if hint is float else _int_text(value)
            except (ValueError, OverflowError):
                raise ValueError(f"{name}={value!r} is invalid: expected {'a number' if hint is float else 'an integer'}"
                                 " or none") from None
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{name}={value!r} is invalid: expected {_a_number(name)}") from None
    if hint is int and not isinstance(value, int):
        try:
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                return _int_text(value)
        except (ValueError, OverflowError):
            pass
        raise ValueError(f"{name}={value!r} is invalid: expected an integer, e.g. {_integer_example(name)}")
    if hint is bool and not isinstance(value, bool):
        flag = _bool_text(str(value)) if isinstance(value, (str, int)) else None
        if flag is None:
            raise ValueError(f"{name}={value!r} is invalid: expected true or false")
        return flag  # 0 / 1, "no" / "yes" ... as --set reads them
    if hint is str and not isinstance(value, str):
        quote = (f": YAML reads an unquoted {'on, yes or true' if value else 'off, no or false'} as {str(value).lower()}, "
                 f"so quote the word ({name.rsplit('.', 1)[-1]}: \"{'on' if value else 'off'}\")"
                 if isinstance(value, bool) else
                 f": YAML reads an unquoted {value} as a number, so quote it ({name.rsplit('.', 1)[-1]}: \"{value}\")"
                 if isinstance(value, (int, float)) else "")
        raise ValueError(f"{name}={value!r} is invalid: expected a string{quote}")
    if getattr(hint, "__origin__", None) is tuple:  # by the element type: words, factors (longrope's) or ids
        read = {str: _words_text, float: _factors_text}.get(hint.__args__[0], _ids_text)
        return read(value, name)
    return value


INTEGER_EXAMPLES = {"device.bytes_per_element": "1 (int8), 2 (bfloat16) or 4 (float32); sub-byte types such as "
                                                "4-bit are not modelled",
                    "device.kv_bytes_per_element": "1 (int8), 2 (bfloat16) or 4 (float32), or null (the weights' "
                                                   "device.bytes_per_element)",
                    "model.head_dim": "128", "model.sliding_window": "4096", "gpu.max_num_seqs": "256",
                    "gpu.max_num_batched_tokens": "8192", "model.moe_intermediate_size": "14336",
                    "model.rope_original_max_position": "8192"}
"""The example an integer field's type error gives, where its default would mislead (a default of 0
means "off" or "derived", so those fields with no example here get 4; a default of None, 4096)."""


def _integer_example(name: str) -> str:
    """The example an integer field's type error gives: `INTEGER_EXAMPLES`' words, else the field's
    default when it is positive (a device count's 8, not a context length's 4096), else 4 (a default
    of 0 is "off" or "derived": gpu.count 0 is no GPU), else (a default of None: unset) 4096."""
    if name in INTEGER_EXAMPLES:
        return INTEGER_EXAMPLES[name]
    default = _field_default(name)
    if not isinstance(default, int) or isinstance(default, bool):
        return "4096"  # unset by default (None): a count of tokens or blocks
    return str(default) if default > 0 else "4"


def _a_number(name: str) -> str:
    """What a number field's type error asks for: `a number, e.g. ` the field's default when it is
    positive (a pace factor's 1, a clock's 2e9; every such field once said 1.5e9), written exactly
    (`_number_text`), else 0.5 (a default of 0 is "off"); a field unset by default (None) gets no example."""
    default = _field_default(name)
    if default is None:
        return "a number"
    if isinstance(default, (int, float)) and not isinstance(default, bool) and math.isfinite(default) and default > 0:
        return f"a number, e.g. {_number_text(default)}"
    return "a number, e.g. 0.5"


def _number_text(value: float) -> str:
    """A finite number as a user would type it: its shortest digits at 15 significant figures (a sum's
    binary rounding dropped: 2.69 + 1.10 + 24.38 reads 28.17, not 28.169999999999998), never :g's 6
    (1234567.0 is 1234567, not 1.23457e+06; 267.7082056 stays so), written positionally
    for exponents -4 to 5 (:g's range) and otherwise whichever of positional and `<mantissa>e<exponent>` is
    shorter (2e9, 1.5e9, 3e-5, 12345678)."""
    exact = Decimal(repr(float(f"{value:.15g}"))).normalize()  # 15 figures: a double's exact decimal digits
    sign, digits, exp = exact.as_tuple()
    plain = f"{exact:f}"
    power = exp + len(digits) - 1  # of the leading digit
    if -4 <= power < 6:
        return plain
    mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    sci = f"{'-' if sign else ''}{mantissa}e{power}"
    return sci if len(sci) < len(plain) else plain


def size_text(nbytes: float) -> str:
    """Bytes for a person (capacity errors, the docs' preset table): GiB with enough digits to tell
    sizes apart, MiB under 1 GiB (a device made small by an override reads "64 MiB", not "0 GiB")."""
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.2f} GiB"
    mib = nbytes / 2**20
    return f"{mib:.3g} MiB" if mib < 999.5 else f"{mib:.0f} MiB"  # 1023 MiB, not 1.02e+03


def _field_default(name: str) -> Any:
    """The default of the config field `name` (`section.field`), or None when it has none or is not one."""
    cls, (*sections, leaf) = _tree(), name.split(".")
    for section in sections:
        cls = _sections(cls).get(section) if cls is not None else None
    return next((f.default for f in fields(cls) if f.name == leaf), None) if cls is not None else None


def _bool_text(text: str) -> bool | None:
    """A boolean as `--set` and a YAML file both take it (1/true/yes/on, 0/false/no/off), or None."""
    low = text.strip().lower()
    return True if low in ("1", "true", "yes", "on") else False if low in ("0", "false", "no", "off") else None


def _coerce(text: str, current: Any, name: str) -> Any:
    """Parse a CLI override string into the type of the current value."""
    if isinstance(current, bool):
        flag = _bool_text(text)
        if flag is None:
            raise ValueError(f"{name}={text!r} is invalid: use true or false")
        return flag
    if current is None:
        return None if _is_null(text) else text
    if isinstance(current, tuple):  # ids, words or factors, comma-separated: typed by the field's hint (`_typed`)
        return text
    try:
        if isinstance(current, int):
            return _int_text(text)
        if isinstance(current, float):
            return float(text)
    except (ValueError, OverflowError):
        kind = (f"an integer, e.g. {_integer_example(name)}" if isinstance(current, int)
                else _a_number(name))
        raise ValueError(f"{name}={text!r} is invalid: expected {kind}") from None
    return text
