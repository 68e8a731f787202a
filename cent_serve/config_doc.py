"""The configuration reference, generated from the config dataclasses' own docstrings.

Every field of the tree in `cent_serve.config` carries a one-line string literal right
under it. Python drops those at run time, so they are read back from the source with
`ast`. `describe_config()` renders them as Markdown: one table per section (field as
`--set` spells it, type, default, description), then the model presets with their sizes.
`docs/config.md` is exactly that text (`cent info --describe > docs/config.md`);
`tests/test_docs.py` fails when it is out of date or a field has no docstring.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from functools import lru_cache

import yaml

from cent_serve.config import MODEL_PRESETS, CentConfig, model_preset
from cent_serve.config.fields import size_text

__all__ = ["describe_config", "field_docs", "sections", "undocumented_fields"]

UNDOCUMENTED = "**undocumented**"
"""What the description column shows for a field without a docstring."""


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its docstring (the string literal right below the field), one line."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef)).body
    docs = {}
    for node, after in zip(body, body[1:] + [None]):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        if (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def _is_section(f: dataclasses.Field) -> bool:
    """A field whose default is itself a config dataclass (a subsection of the tree)."""
    return f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)


def sections(cls: type = CentConfig, prefix: str = "") -> list[tuple[str, type, list[dataclasses.Field]]]:
    """(dotted prefix, dataclass, its plain fields) for `cls` and every subsection, depth first."""
    plain = [f for f in dataclasses.fields(cls) if not _is_section(f)]
    out = [(prefix, cls, plain)]
    for f in dataclasses.fields(cls):
        if _is_section(f):
            out += sections(f.default_factory, f"{prefix}{f.name}.")
    return out


def undocumented_fields() -> list[str]:
    """Dotted names of every config field (sections included) that has no docstring."""
    missing = []
    for prefix, cls, _ in sections():
        docs = field_docs(cls)
        missing += [f"{prefix}{f.name}" for f in dataclasses.fields(cls) if not docs.get(f.name)]
    return missing


def _default(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()


def _yaml_value(value: object) -> str:
    """A default as it would be written in a YAML config (so `'off'` shows its quotes)."""
    if isinstance(value, float):
        value = float(f"{value:.12g}")  # 2.69 + 1.10 + 24.38 is 28.17, not 28.169999999999998
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _section_title(prefix: str, cls: type) -> str:
    return f"`{prefix.rstrip('.')}` ({cls.__name__})" if prefix else f"Top level ({cls.__name__})"


def preset_rows(dev=None) -> list[dict]:
    """Every preset: family, size, context, and the fewest devices `dev` (default: the paper's
    16 GiB device) that hold it (`fewest_devices`). The weights and the KV cache a token are counted
    as those devices store them, `dev.bytes_per_element` an element (bf16 by default; the KV cache
    `dev.kv_element_bytes`), as the counts are."""
    from cent_serve.config import CentConfig, DeviceConfig
    from cent_serve.preflight import fewest_devices

    dev, rows = dev or DeviceConfig(), []
    for name in MODEL_PRESETS:
        m = model_preset(name)
        cfg = CentConfig(model=m, device=dev)  # the scheduler's defaults: what a windowed block keeps
        rows.append(dict(preset=name, model_type=m.model_type, params_b=m.param_count() / 1e9,
                         context=m.max_seq_len, weights_gib=m.param_count() * dev.bytes_per_element / 2**30,
                         kv_kib_per_token=m.kv_bytes_per_token(dev.kv_element_bytes) / 1024,
                         devices_4k=fewest_devices(cfg, min(4096, m.max_seq_len)),
                         devices_context=fewest_devices(cfg, m.max_seq_len, batch=1)))
    return rows


def _presets() -> list[str]:
    lines = ["## Model presets", "",
             "`--model NAME`, or `model: {name: NAME}` in a YAML file. Weights are seeded random "
             "(`model.seed`). Parameters include the embedding and the (untied) LM head; the KV cache "
             "is bf16 over all layers; context is `model.max_seq_len`.", "",
             "| preset | family | D | F | N | H | Hkv | head | vocab | context | parameters | weights (bf16) | KV per token |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in MODEL_PRESETS:
        m = model_preset(name)
        params = m.param_count()
        size = f"{params / 1e9:.2f} B" if params >= 1e8 else f"{params / 1e6:.2f} M"
        lines.append(f"| `{name}` | {m.model_type} | {m.hidden_size} | {m.intermediate_size} | {m.num_layers} "
                     f"| {m.num_heads} | {m.num_kv_heads} | {m.head_dim} | {m.vocab_size} | {m.max_seq_len} "
                     f"| {size} ({params:,}) "
                     f"| {size_text(params * 2)} | {m.kv_bytes_per_token() / 1024:g} KiB |")
    return lines


def describe_config() -> str:
    """The configuration reference as Markdown (what `cent info --describe` prints)."""
    lines = ["# Configuration reference", "",
             "Generated by `cent info --describe` from the field docstrings in `cent_serve/config/`; "
             "do not edit by hand (`cent info --describe > docs/config.md` after changing a field).", "",
             "A config is one tree of dataclasses. In a YAML file (`--config FILE.yaml`) each section is a "
             "mapping (`parallel: {num_devices: 32, pp: 80}`); on the command line any field can be "
             "overridden with `--set section.field=value`, using the dotted names below "
             "(e.g. `--set device.clock_hz=1e9`, `--set device.energy.rd_mw=500`). Unknown names are "
             "refused. `model: {name: PRESET}` fills the other model fields from the preset; fields given "
             "beside `name` override it. Quote `'off'` in YAML: unquoted, YAML reads it as false.", "",
             "Order of precedence: the `--config` file, then the flags `--model` (which replaces the "
             "whole `model` section, as `cent sweep --vary model=...` does: the file's model fields beside its "
             "preset or checkpoint are warned of, not read; `--set model.F=V` applies to the model chosen), "
             "`--seed`, `--numerics`, `--devices`, `--pp`, `--tp`, then every `--set`; "
             "`cent serve`'s own flags (`--host`, `--port`, `--clock`, `--pace-factor`, `--ray-address`, "
             "`--placement`, `--api-key`) come last. `cent info` prints the resolved config; `cent bench` "
             "writes it beside its results (`config.json`).", ""]
    for prefix, cls, plain in sections():
        docs = field_docs(cls)
        lines += [f"## {_section_title(prefix, cls)}", ""]
        intro = inspect.getdoc(cls) or ""
        for paragraph in intro.split("\n\n"):
            lines += [" ".join(paragraph.split()), ""]
        subsections = [f for f in dataclasses.fields(cls) if _is_section(f)]
        if subsections:
            names = ", ".join(f"`{prefix}{f.name}`" for f in subsections)
            lines += [f"Subsections: {names} (below).", ""]
        if plain:
            lines += ["| field | type | default | description |", "|---|---|---|---|"]
            for f in plain:
                doc = docs.get(f.name) or UNDOCUMENTED
                lines.append(f"| `{prefix}{f.name}` | `{_cell(str(f.type))}` | `{_cell(_yaml_value(_default(f)))}` "
                             f"| {_cell(doc)} |")
            lines.append("")
    lines += _presets()
    return "\n".join(lines) + "\n"
