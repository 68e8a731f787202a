"""A config from a YAML file (a sweep's or a run's `config.yaml`), refusing duplicate keys and
unknown fields, the bench flags a run's file records, and a config back to plain data (`config_to_dict`,
for config.json and the API)."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from cent_serve.config.checks import _check
from cent_serve.config.fields import _from_dict, _sections, served_context
from cent_serve.config.hf_config import model_config_from_hf
from cent_serve.config.presets import MODEL_PRESETS
from cent_serve.config.tree import CentConfig


REDACTED = "<redacted>"
"""What `config_to_dict` writes for an API key (`load_config` reads it back as no key)."""


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain JSON-able data (tuples become lists; an API key is redacted; on GPUs, the
    batching their kind gave, not its 0: a results' config.json says what ran)."""
    data = json.loads(json.dumps(dataclasses.asdict(cfg)))
    server = data.get("server") if isinstance(data, dict) else None
    if isinstance(server, dict) and server.get("api_key"):
        server["api_key"] = REDACTED
    if isinstance(cfg, CentConfig) and cfg.on_gpus:
        data["gpu"].update(max_num_seqs=cfg.gpu.num_seqs, max_num_batched_tokens=cfg.gpu.num_batched_tokens)
    model = data.get("model") if isinstance(data, dict) else None
    if isinstance(model, dict) and model.get("checkpoint"):  # absolute: the file is read back from any directory
        model["checkpoint"] = os.path.abspath(model["checkpoint"])  # (a relative path would be the file's own)
    return data


@lru_cache(maxsize=None)
def _unique_keys_loader():
    """yaml's safe loader, refusing a key given twice in one mapping (it keeps the last silently: a
    sweep's base config set twice would run the value the user did not mean)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:  # the keys written here (a `<<` merge may override them: legal)
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"{key} is given twice in one section: "
                                                            "keep one of them", key_node.start_mark)
                seen.add(key)
            except TypeError:  # unhashable: construct_mapping says so in yaml's words
                pass
        return loader.construct_mapping(node, deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


_BENCH_DEFAULTS = dict(start_s=0.0, time_scale=1.0, prompt_scale=1.0, output_scale=1.0, burstiness=1.0, seed=0)
"""A recorded `bench` option at these values needs no flag."""


def bench_flags(bench: dict) -> str:
    """The `cent bench` flags that select the requests a results file's `bench` section records
    (`bench.cli._recorded`): its trace, or `--synthetic` and the lengths, and every option given."""
    import shlex

    out = []
    for key, value in bench.items():
        if value is None or key in ("executor", "arrivals", "url") or _BENCH_DEFAULTS.get(key) == value:
            continue
        if key == "trace":
            arrivals = str(bench.get("arrivals", "poisson"))
            out += (["--synthetic", arrivals] if value == "synthetic"  # ShareGPT's gamma arrivals need it too
                    else ["--trace", shlex.quote(str(value))] + (["--synthetic", arrivals] if arrivals != "poisson" else []))
        elif key != "format" or bench.get("trace") != "synthetic":
            # each key is its flag's name; a list (`bench sweep`'s rates) as the comma-separated values it takes
            text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
            out += ["--" + key.replace("_", "-"), shlex.quote(text)]
    return " ".join(out)


def load_config(path: str | Path, served: dict[str, int] | None = None) -> CentConfig:
    """Load a YAML (or JSON) config; a `model: {name: llama2-7b}` pulls in that preset. A relative
    `model.checkpoint` is the config file's directory's (as docker-compose and tsconfig read paths),
    not the current directory's. `served`: {"max_seq_len": N} of a --set that will override the file's
    (`overrides._served_context`), the context a checkpoint's config.json is read within."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"--config {str(path)!r} cannot be read ({exc.strerror}): give the path of a YAML "
                         "config file") from None
    try:
        data = yaml.load(text, Loader=_unique_keys_loader()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if "given twice" in problem:
            raise ValueError(f"config file {path}{where}: {problem}") from None
        raise ValueError(f"config file {path}: not valid YAML{where} ({problem}): fix the file "
                         "(indentation, a missing colon or quote)") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: expected a mapping of sections (model:, parallel:, ...) "
                         "at the top level")
    return config_from_mapping(data, path, served)


def config_from_mapping(data: dict[str, Any], path: str | Path, served: dict[str, int] | None = None) -> CentConfig:
    """`load_config`'s config of a file's parsed mapping (changed in place), `path` naming it in errors and
    giving the directory its relative paths are read from (`_paths_dir`; the current directory for a
    name that is not a file, as the config a server gives at GET /v1/cent/config, whose checkpoint path
    is absolute)."""
    bench = data.pop("bench", None)  # what cent bench writes beside a run's config (its trace, its executor)
    if isinstance(bench, dict) and bench.get("trace"):
        logging.getLogger("cent_serve").warning(
            "config file %s: its bench section (the requests its run replayed) is not read as config: to replay "
            "them again give cent bench its flags: %s", path, bench_flags(bench))
    status = data.pop("server_status", None)  # what the server of a --url replay said of itself: a record, not config
    workload = data.pop("workload", None)  # cent simulate --json's, a closed-form sweep row's
    if isinstance(workload, dict) and workload:
        logging.getLogger("cent_serve").warning(
            "config file %s: its workload (%s) is not read as config: give it as flags to rerun it (e.g. --prompt "
            "and --decode)", path, ", ".join(f"{k} {v}" for k, v in workload.items()))
    if status is not None and not data:  # a server without GET /v1/cent/config: read as config, the defaults
        model = status.get("model") if isinstance(status, dict) else None
        raise ValueError(f"config file {path}: server_status (model {model!r}) is what the server of a --url replay "
                         "said of itself, and that server did not give its config (GET /v1/cent/config): no config "
                         "to read; give the flags the server ran with (--model, --devices, ...) instead of --config")
    server = data.get("server")
    if isinstance(server, dict) and server.get("api_key") == REDACTED:
        logging.getLogger("cent_serve").warning("config file %s: server.api_key was redacted when it was written: "
                                                "no key is set (give --api-key or CENT_API_KEY)", path)
        server["api_key"] = None
    for section in _sections(CentConfig):
        value = data.get(section)
        if value is not None and not isinstance(value, dict):
            example = f"{{name: {value}}}" if section == "model" else "{field: value, ...}"
            raise ValueError(f"config file {path}: {section}={value!r} is invalid: {section} is a section of "
                             f"fields, write `{section}: {example}`")
    model = data.get("model")
    if isinstance(model, dict):
        try:
            data["model"] = _model_section(model, _paths_dir(path), str(path), served)
        except ValueError as exc:
            raise ValueError(f"config file {path}: {exc}") from None
    try:
        return _from_dict(CentConfig, data, "")
    except ValueError as exc:
        raise ValueError(f"config file {path}: {exc}") from None


def model_settings(path: str | Path) -> dict[str, Any]:
    """The fields a config file's `model:` section moves off the preset or checkpoint it names, as the file
    writes them (`{"max_seq_len": 8192}`): what a model chosen in its place (`--model`, cent sweep's `--vary
    model`) does not take. {} for a file with no such section, or one that names no preset nor checkpoint
    (a model of one's own, replaced whole). Called after `load_config` read the file without error."""
    import yaml

    from cent_serve.config.model import ModelConfig

    try:
        model = (yaml.load(Path(path).read_text(), Loader=_unique_keys_loader()) or {}).get("model")
        if not isinstance(model, dict) or (model.get("name") not in MODEL_PRESETS and model.get("checkpoint") is None):
            return {}
        served = served_context(model.get("max_seq_len"))  # both read within one context: the same window
        named = {k: model[k] for k in ("name", "checkpoint") if model.get(k) is not None}
        full, bare = (dataclasses.asdict(_from_dict(ModelConfig, _model_section(m, _paths_dir(path), str(path), served),
                                                    "model")) for m in (model, named))
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: v for k, v in model.items() if k not in ("name", "checkpoint") and full.get(k) != bare.get(k)}


def _paths_dir(path: str | Path) -> Path:
    """The directory a config file's relative paths are read from: the file's own, or the current
    directory for a config read from a stream (`--config /dev/stdin`, `--config <(...)`: a pipe, or
    a path under /dev or /proc, whose directory holds no checkpoint)."""
    p = Path(path)
    parent = Path(os.path.realpath(p.absolute().parent))
    if not p.is_file() or parent.parts[1:2] in (("dev",), ("proc",)):
        return Path.cwd()
    return p.parent


def _model_section(model: dict[str, Any], base_dir: Path, source: str = "",
                   served: dict[str, int] | None = None) -> dict[str, Any]:
    """A YAML `model:` section with what it names filled in, as `--model` would: `checkpoint: DIR`
    loads the checkpoint's config.json (a relative DIR is `base_dir`'s, the config file's directory)
    within the context served (`served`, else the section's max_seq_len: a window that hides keys only
    beyond the config.json's own context is read as `--model DIR --set model.max_seq_len` reads it),
    `name: PRESET` the preset; the fields given beside them override. Another name is a model of one's
    own and needs its shape beside it (`_SHAPE_FIELDS`); alone it is refused: it would only relabel
    the default model."""
    name, ckpt = model.get("name"), model.get("checkpoint")
    if ckpt is not None:
        where = os.path.abspath(base_dir / os.path.expanduser(str(ckpt)))  # an absolute DIR stays itself
        here = os.path.abspath(os.path.expanduser(str(ckpt)))
        if not os.path.exists(where) and here != where and os.path.exists(here):
            # a config cent wrote before it recorded checkpoints absolute: the path was the current directory's
            logging.getLogger("cent_serve").warning(
                "config file %s: model.checkpoint=%r is not in the config file's directory (%s): read as the "
                "current directory's, %s (as a config written by an older cent meant it); write it absolute, or "
                "relative to the config file's directory", source, str(ckpt), os.path.abspath(base_dir), here)
            where = here
        if not os.path.exists(where):
            raise ValueError(f"model.checkpoint={ckpt!r}: {where} does not exist: give the checkpoint directory's "
                             f"path, absolute or relative to the config file's directory ({os.path.abspath(base_dir)})")
        served = served or served_context(model.get("max_seq_len"))
        base = dataclasses.asdict(model_config_from_hf(where, **served))
        # the directory's own name too: a config cent wrote when a Hugging Face cache snapshot was named by
        # its commit (`hf_config.checkpoint_name` names it by its repository now) loads as it ran
        _check(name in (None, base["name"], Path(base["checkpoint"]).name), "model.name", name,
               f"a checkpoint's model is named after its directory ({base['name']!r}): drop model.name beside "
               f"model.checkpoint")
        return {**base, **model, "name": base["name"], "checkpoint": base["checkpoint"]}
    if name is None:
        return model
    if isinstance(name, str) and name in MODEL_PRESETS:
        return {**MODEL_PRESETS[name], **model}
    # a model of one's own (or a saved resolved config) names itself and gives its shape
    _check(isinstance(name, str) and bool(_SHAPE_FIELDS & model.keys()), "model.name", name,
           f"it is not a preset: use one of {', '.join(sorted(MODEL_PRESETS))}, `checkpoint: DIR` for a Hugging "
           f"Face checkpoint directory, or give your model's shape beside its name ({', '.join(sorted(_SHAPE_FIELDS))})")
    missing = sorted(_OWN_MODEL_FIELDS - model.keys())
    _check(not missing, "model.name", name,
           f"a model of one's own needs its whole shape, or the missing fields would silently take the `tiny` "
           f"preset's values: add {', '.join(f'model.{k}' for k in missing)} (or use `checkpoint: DIR` with its "
           f"config.json)")
    return model


_SHAPE_FIELDS = frozenset({"hidden_size", "intermediate_size", "num_layers", "num_heads"})
"""A YAML `model:` section with any of these beside a name that is no preset describes a model of its own."""
_OWN_MODEL_FIELDS = _SHAPE_FIELDS | {"num_kv_heads", "vocab_size"}
"""What a model of its own must give: without them the `tiny` preset's defaults (2 KV heads, a 259-token
vocabulary) would stand in for the user's model without a word."""
