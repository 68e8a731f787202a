"""The grid of `cent sweep` (the grammar is in `cent_serve.sweep`'s docstring): each `--vary` read into
its fields and values (`parse_vary_groups`), every field and value checked before any point runs
(`check_vary`, `check_not_set_and_varied`), the points (`vary_grid`: the groups crossed, fields in step
together) and each point's config (`point_config`: the base config with the point's values set).
"""
from __future__ import annotations

import argparse
import itertools
import os
from dataclasses import fields, replace

from cent_serve.config import MODEL_PRESETS, CentConfig, apply_overrides, check_override, resolve_model
from cent_serve.config.overrides import _served_context

SHORT = {"devices": "parallel.num_devices", "pp": "parallel.pp", "tp": "parallel.tp"}
"""Short names `--vary` takes besides config paths (and `model`: a preset or checkpoint)."""
SHORT_OF = {path: name for name, path in SHORT.items()}
FLAG_FIELDS = {"model": "model", **SHORT, "seed": "model.seed", "numerics": "numerics"}
"""The command line's flags that set a field `--vary` can vary."""


IN_STEP_EXAMPLE = "--vary devices,pp=32:80,64:160"
"""How fields varied in step are written (the errors' example)."""


def parse_vary(items: list[str]) -> list[tuple[str, list[str]]]:
    """[(field path or 'model', [values as given])], every field of every `--vary` (`parse_vary_groups`
    flattened: a point's values of fields in step sit at the same index)."""
    return [field for group in parse_vary_groups(items) for field in group]


def parse_vary_groups(items: list[str]) -> list[list[tuple[str, list[str]]]]:
    """Each `--vary` as [(field path or 'model', [values as given])]: one field (`FIELD=V1,V2,...`), or
    fields varied in step (`F1,F2=A1:B1,A2:B2,...`: a point takes each field's value at one index; the
    groups' points are then crossed). ValueError naming a malformed one and its fix, or a field given
    twice (also under its short name: `devices` is `parallel.num_devices`)."""
    out: list[list[tuple[str, list[str]]]] = []
    given: dict[str, str] = {}
    for item in items:
        name, sep, values = item.partition("=")
        names = [n.strip() for n in name.split(",")]
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not all(names) or not vals:
            raise ValueError(f"--vary {item!r} is invalid: write FIELD=V1,V2,... (e.g. --vary devices=16,32,64), or "
                             f"fields in step F1,F2=A1:B1,A2:B2,... (e.g. {IN_STEP_EXAMPLE})")
        if len(names) == 1 and names[0] != "model" and any(":" in v for v in vals):  # a path may hold a ':'
            joined = next(v for v in vals if ":" in v)
            raise ValueError(f"--vary {item!r}: {joined} joins the values of fields in step, but only {names[0]} is "
                             f"named: name each of them before the '=' (e.g. {IN_STEP_EXAMPLE}), or give "
                             f"{names[0]} one value a point ({names[0]}=V1,V2,...)")
        points = [_point_values(v, names) for v in vals]
        bad = next((v for v, p in zip(vals, points) if len(p) != len(names) or not all(x.strip() for x in p)), None)
        if bad is not None:
            raise ValueError(f"--vary {item!r}: the point {bad} does not give one value for each of the {len(names)} "
                             f"fields {','.join(names)}: join a point's values with ':' in that order (e.g. "
                             f"{IN_STEP_EXAMPLE}: devices 32 with pp 80, then 64 with 160)")
        group = []
        for i, name in enumerate(names):
            path = SHORT.get(name, name)
            if path in given:
                same = "" if given[path] == name else f" ({given[path]} and {name} are the same field)"
                raise ValueError(f"--vary {path} is given twice{same}: give all its values in one --vary "
                                 f"{name}=V1,V2,..." + ("" if len(names) == 1 else " (or once among fields in step)"))
            given[path] = name
            group.append((path, [p[i].strip() for p in points]))
        out.append(group)
    if not out:
        raise ValueError("give at least one --vary FIELD=V1,V2,... (e.g. --vary device.num_channels=16,32,64)")
    return out


def _point_values(value: str, names: list[str]) -> list[str]:
    """One point of `--vary F1,F2=...` split into a value a field: at each ':', except that a model among
    the fields (a checkpoint path or a name may hold ':', C:/ckpt, org/model:v2) takes the parts left over
    once every other field has one (`--vary model,devices=C:/ckpt:8` is C:/ckpt with 8), unambiguous as no
    other field's value holds a ':'. A count that still does not match is the caller's error."""
    if len(names) == 1:
        return [value]
    parts = value.split(":")
    extra = len(parts) - len(names)
    if extra <= 0 or "model" not in names:
        return parts
    i = names.index("model")
    return parts[:i] + [":".join(parts[i:i + extra + 1])] + parts[i + extra + 1:]


def vary_grid(groups: list[list[tuple[str, list[str]]]]) -> list[dict[str, str]]:
    """The points: {field: value} for every combination of the groups' points (a group of fields in step
    gives its i-th values together), in the order --vary gives them, the last changing fastest."""
    per_group = [[dict(zip([n for n, _ in g], combo)) for combo in zip(*[v for _, v in g])] for g in groups]
    return [{k: v for part in combo for k, v in part.items()} for combo in itertools.product(*per_group)]


def in_step_of(groups: list[list[tuple[str, list[str]]]]) -> list[tuple[str, ...]]:
    """The fields varied in step, a tuple a group of two or more (the plots draw them as one axis)."""
    return [tuple(n for n, _ in g) for g in groups if len(g) > 1]


def check_not_set_and_varied(args: argparse.Namespace, vary: list[tuple[str, list[str]]]) -> None:
    """ValueError naming a flag or `--set` that sets a field `--vary` varies: every point would
    overwrite it without a word."""
    varied = {name for name, _ in vary}
    given = [(f"--{flag} {value}", flag, FLAG_FIELDS[flag]) for flag in FLAG_FIELDS
             if (value := getattr(args, flag, None)) is not None]
    given += [(f"--set {item.strip()}", name, name) for item in args.set if (name := item.split("=", 1)[0].strip())]
    for flag, name, path in given:
        if path in varied:
            shown = name if SHORT.get(name, name) == path else path  # the flag's short name, or the config path
            raise ValueError(f"{flag} sets {name}, which --vary varies: every point would replace it; give all its "
                             f"values in --vary {shown}=V1,V2,... and drop {flag.split()[0]}")


def check_vary(base: CentConfig, vary: list[tuple[str, list[str]]], in_step: list[tuple[str, ...]] = ()) -> None:
    """ValueError naming the first `--vary` field or value that no point could take: an unknown
    field, a value of the wrong type or against the config's rule for numbers, a model that is
    neither a preset nor a checkpoint, a value given twice (of fields in step, `in_step`: a point
    given twice). Checked on its own, before any point runs (what clashes with another field's value
    is a point's error: its row says why)."""
    paired = {path for group in in_step for path in group}
    typed_of: dict[str, list] = {}
    for path, values in vary:
        name = SHORT_OF.get(path, path)  # as most users write it: `devices`, not `parallel.num_devices`
        if name != "model":
            _refuse_section(base, path, values)
        seen: dict = {}
        for value in values:
            try:
                if name == "model":  # a preset by its name, a checkpoint by its directory (two may share a basename)
                    resolve_model(value)
                    typed = value if value in MODEL_PRESETS else os.path.realpath(value)
                else:
                    typed = check_override(base, f"{path}={value}")
            except ValueError as exc:
                # a model in step took the ':'s the other fields left (`_point_values`): say so, a wrong order shows
                joined = (f" (in step with other fields, a model takes every ':' beyond one a field: {value} here; "
                          "give each point's values in the order the fields are named)"
                          if name == "model" and path in paired and ":" in value else "")
                raise ValueError(f"--vary {name}: {exc}{joined}") from None
            typed_of.setdefault(path, []).append(typed)
            if typed in seen and path not in paired:  # two identical points (8 and 08, 1e9 and 1000000000 alike)
                same = "" if seen[typed] == value else f" ({seen[typed]} and {value} are the same)"
                raise ValueError(f"--vary {name}: the value {value} is given twice{same}: give each value once")
            seen[typed] = value
    for group in in_step:  # a value may recur in its field (devices 32 with pp 80, then with 40), a point may not
        names = ",".join(SHORT_OF.get(p, p) for p in group)
        seen_points: set = set()
        for k, point in enumerate(zip(*[typed_of[p] for p in group])):
            if point in seen_points:
                shown = ":".join(dict(vary)[p][k] for p in group)
                raise ValueError(f"--vary {names}: the point {shown} is given twice: give each point once")
            seen_points.add(point)


def _refuse_section(base: CentConfig, path: str, values: list[str]) -> None:
    """ValueError when `path` names a section of the config (`--vary device=1,2`), not a field: the fields
    it holds, and one that takes every value given (its first such, in the section's order) as the example, or
    `FIELD` when none does (`--set`'s own wording suggests `--set device.FIELD=VALUE`, not a field to vary)."""
    from cent_serve.config.fields import _sections

    cls: type = CentConfig
    for key in path.split("."):
        cls = _sections(cls).get(key)
        if cls is None:
            return  # a field, or no such name: check_override says which
    subs = _sections(cls)
    own = [f.name for f in fields(cls) if f.name not in subs]

    def takes_all(field: str) -> bool:
        try:
            for v in values:
                check_override(base, f"{path}.{field}={v}")
        except ValueError:
            return False
        return True

    def numeric(text: str) -> bool:
        try:
            float(text)
        except ValueError:
            return False
        return True

    section = base
    for key in path.split("."):
        section = getattr(section, key)
    number = [f for f in own if isinstance(getattr(section, f), (int, float)) and not isinstance(getattr(section, f), bool)]
    # numbers name a numeric field first (server.port for --vary server=1,2, not server.host)
    order = number + [f for f in own if f not in number] if all(numeric(v) for v in values) else own
    example = next((f for f in order if takes_all(f)), "FIELD")  # none takes them: no field to name
    more = "".join(f", and the section {path}.{sub}'s: {path}.{sub}.FIELD" for sub in subs)
    raise ValueError(f"--vary {path}: {path} is a section of fields, not a value: vary one of its fields, e.g. --vary "
                     f"{path}.{example}={','.join(values)} ({path}'s fields: {', '.join(own)}{more}; cent info "
                     "--describe says what each is)")


def model_overrides(args: argparse.Namespace) -> list[str]:
    """The command line's model settings (`--seed`, then every `--set model.*`): a varied model keeps
    them, as `--model NAME` does (the model chosen whole, then the flags and every --set apply)."""
    out = [f"model.seed={args.seed}"] if getattr(args, "seed", None) is not None else []
    return out + [s for s in (getattr(args, "set", None) or []) if s.split("=", 1)[0].strip().startswith("model.")]


def point_config(base: CentConfig, point: dict[str, str], model_sets: list[str] | tuple = (),
                 hybrid_pp: bool = False) -> CentConfig:
    """`base` with the point's values set (a model first, with `model_sets` (`model_overrides`) on
    it: the other fields apply to it); `hybrid_pp` (`follows_tp`): a point of tp > 1 takes
    devices // tp stages, CENT's hybrid mapping, as the pp it needs (at most the model's blocks:
    the devices left over hold replicas, as a tp 1 point's do)."""
    cfg = CentConfig(**{f: getattr(base, f) for f in base.__dataclass_fields__})
    sets = [f"{k}={v}" for k, v in point.items() if k != "model"]
    if "model" in point:  # a checkpoint read within the context the point serves, as build_config reads one
        sets = [*model_sets, *sets]
        cfg.model = resolve_model(point["model"], **_served_context(sets))
    elif base.model.checkpoint and "model.max_seq_len" in point:  # its window read within the point's context
        sets = [*model_sets, *sets]  # then the command line's model settings, as over a varied model
        cfg.model = _read_within(base.model, _served_context(sets))
    if hybrid_pp and int(point.get("parallel.tp", base.parallel.tp)) > 1:  # checked as integers (`check_vary`)
        one = apply_overrides(cfg, [*sets, "parallel.pp=1"])  # the point's devices, tp and model (its blocks)
        p = one.parallel
        sets.append(f"parallel.pp={min(max(1, p.num_devices // p.tp), one.model.num_layers)}")
    return apply_overrides(cfg, sets)


def _read_within(model, served: dict[str, int]):
    """`model`, a checkpoint's, with the fields its config.json gives otherwise within the context `served`
    (its window: one at least the context hides no key) than within the model's own context; every other
    field as it was."""
    if not served:
        return model
    now = resolve_model(model.checkpoint, max_seq_len=model.max_seq_len)
    then = resolve_model(model.checkpoint, **served)
    moved = {f.name: getattr(then, f.name) for f in fields(then)
             if f.name != "max_seq_len" and getattr(then, f.name) != getattr(now, f.name)}
    return replace(model, **moved)


def follows_tp(base: CentConfig, vary: list[tuple[str, list[str]]]) -> bool:
    """Whether the points' pp follows their tp (`point_config`'s `hybrid_pp`): tp is varied and pp
    is neither varied nor set (a flag, --set or the config file), so a tp > 1 point would have no
    pp (0, one stage a block, is pure pipeline's)."""
    varied = {name for name, _ in vary}
    return "parallel.tp" in varied and "parallel.pp" not in varied and base.parallel.pp == 0
