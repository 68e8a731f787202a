"""Checks of the deploy/ manifests: each returns a list of errors (empty = fine), so tests can also
feed them broken snippets and see them fail.

Commands are checked with the real parsers: `cent ...` with `cent_serve.cli.build_parser()`,
`ray start ...` with Ray's own click command, cluster-launcher YAML with Ray's own schema.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import shlex
from fnmatch import fnmatch
from pathlib import Path

import click
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.scripts.scripts import cli as ray_cli

from cent_serve.cli import build_parser
from cent_serve.config import ServerConfig

try:
    import tomllib
except ImportError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DEVICE_RESOURCE = "cent_device"
"""The custom Ray resource a node advertises: one unit per emulated CENT device it may host."""
SHELL_OPERATORS = set("();<>|&")


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def ray_specifier(project: dict) -> SpecifierSet:
    """The version range of `ray` in pyproject's dependencies."""
    reqs = [Requirement(d) for d in project["project"]["dependencies"]]
    (ray_req,) = [r for r in reqs if r.name == "ray"]
    return ray_req.specifier


# --- shell commands -------------------------------------------------------------------------------

def shell_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line (split at ; && || | and redirections), env prefixes dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token and set(token) <= SHELL_OPERATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    for argv in commands:
        while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
            argv.pop(0)
    return [argv for argv in commands if argv]


def command_errors(argv: list[str]) -> list[str]:
    """Errors of one command: `cent` and `ray` commands must parse with their real CLIs; others pass."""
    program = Path(argv[0]).name
    if program == "cent":
        return _cent_errors(argv[1:])
    if program == "ray":
        return _ray_errors(argv[1:])
    return []


def _cent_errors(args: list[str]) -> list[str]:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(args)
    except SystemExit as exc:
        if exc.code:
            return [f"`cent {shlex.join(args)}`: {err.getvalue().strip().splitlines()[-1]}"]
    return []


def _ray_errors(args: list[str]) -> list[str]:
    """`ray SUB ...` parsed by Ray's own click commands; the command that `ray exec CONFIG 'CMD'`
    or `ray job submit ... -- CMD` runs is checked too."""
    label = f"`ray {shlex.join(args)}`"
    command, rest = ray_cli, list(args)
    while isinstance(command, click.Group):
        command = command.commands.get(rest[0]) if rest else None
        rest = rest[1:]
    if command is None:
        return [f"{label}: no such ray subcommand"]
    try:
        ctx = command.make_context(command.name, rest)
    except click.ClickException as exc:
        return [f"{label}: {exc.format_message()}"]
    inner = ctx.params.get("cmd") if command.name == "exec" else shlex.join(ctx.params.get("entrypoint") or ())
    return all_command_errors([inner]) if inner else []


def all_command_errors(lines: list[str]) -> list[str]:
    return [e for line in lines for argv in shell_commands(line) for e in command_errors(argv)]


def ray_start_devices(lines: list[str]) -> int | None:
    """`cent_device` of the last `ray start --resources=...` in these shell lines (None if none)."""
    found = None
    for line in lines:
        for argv in shell_commands(line):
            if Path(argv[0]).name == "ray" and argv[1:2] == ["start"] and not _ray_errors(argv[1:]):
                found = _start_devices(argv[2:])
    return found


def _start_devices(start_args: list[str]) -> int | None:
    """`cent_device` in the --resources of a valid `ray start` argument list."""
    raw = ray_cli.commands["start"].make_context("ray start", list(start_args)).params["resources"]
    return _devices_of_json(raw)


def _devices_of_json(raw: str | None) -> int | None:
    try:
        value = json.loads(raw or "{}")
    except json.JSONDecodeError:
        return None
    return value.get(DEVICE_RESOURCE) if isinstance(value, dict) else None


def cent_serve_args(line: str):
    """The parsed namespace of the `cent serve` command in a shell line (None if there is none)."""
    for argv in shell_commands(line):
        if Path(argv[0]).name == "cent" and argv[1:2] == ["serve"] and not _cent_errors(argv[1:]):
            return build_parser().parse_args(argv[1:])
    return None


# --- Ray cluster launcher -------------------------------------------------------------------------

LAUNCHER_COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands",
                         "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")


def launcher_errors(config: dict) -> list[str]:
    """A `ray up` config: Ray's schema, real commands, and `cent_device` on every node type."""
    try:
        prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
    except Exception as exc:  # Ray raises jsonschema, ValueError or click errors here
        return [f"Ray rejects the config: {str(exc).splitlines()[0]}"]
    errors = []
    for key in LAUNCHER_COMMAND_KEYS:
        errors += all_command_errors(prepared.get(key, []))
    for name, node_type in prepared["available_node_types"].items():
        # The local provider has one node type for the head and the workers alike.
        roles = (["head"] if name == prepared["head_node_type"] else []) + (
            ["worker"] if node_type.get("max_workers", 0) > 0 else [])
        for role in roles:
            start = prepared[f"{role}_start_ray_commands"]
            devices = node_type.get("resources", {}).get(DEVICE_RESOURCE) or ray_start_devices(start)
            if not isinstance(devices, int) or devices < 1:
                errors.append(f"{role} nodes of type {name} do not advertise {DEVICE_RESOURCE} >= 1 "
                              f"(got {devices!r})")
    return errors


# --- KubeRay --------------------------------------------------------------------------------------

def kuberay_start_argv(params: dict, is_head: bool) -> list[str]:
    """The `ray start` that KubeRay builds from rayStartParams: `--key=value` through a shell."""
    argv = ["ray", "start"] + (["--head"] if is_head else [])
    for key, value in params.items():
        argv += [f"--{key}"] if value == "true" else shlex.split(f"--{key}={value}")
    return argv


def _group_errors(label: str, group: dict, is_head: bool) -> tuple[list[str], int]:
    """Errors of a head or worker group and the `cent_device` each of its pods advertises."""
    params = group.get("rayStartParams")
    if not isinstance(params, dict):
        return [f"{label}: rayStartParams missing"], 0
    errors = [f"{label}: rayStartParams.{k} must be a string (got {v!r})"
              for k, v in params.items() if not isinstance(v, str)]
    if errors:
        return errors, 0
    argv = kuberay_start_argv(params, is_head)
    errors += [f"{label}: {e}" for e in command_errors(argv)]
    devices = None if errors else _start_devices(argv[2:])
    if not isinstance(devices, int) or devices < 1:
        errors.append(f"{label}: does not advertise {DEVICE_RESOURCE} >= 1 through rayStartParams.resources "
                      f"(KubeRay wants a quoted JSON string like '\"{{\\\"{DEVICE_RESOURCE}\\\": 8}}\"')")
        devices = 0
    containers = group.get("template", {}).get("spec", {}).get("containers") or [{}]
    for c in containers:
        if not c.get("image"):
            errors.append(f"{label}: container {c.get('name')!r} has no image")
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(res.get(kind, {})):
                errors.append(f"{label}: container {c.get('name')!r} lacks cpu/memory {kind}")
    return errors, devices


def raycluster_errors(doc: dict, ray_version: str) -> tuple[list[str], int]:
    """Errors of a RayCluster and its total `cent_device` (head + replicas x per-pod)."""
    errors = meta_errors(doc, "RayCluster")
    spec = doc.get("spec", {})
    if spec.get("rayVersion") != ray_version:
        errors.append(f"rayVersion {spec.get('rayVersion')!r} != the image's Ray {ray_version}")
    head_errors, total = _group_errors("headGroupSpec", spec.get("headGroupSpec", {}), is_head=True)
    errors += head_errors
    groups = spec.get("workerGroupSpecs") or []
    if not groups:
        errors.append("no workerGroupSpecs")
    for g in groups:
        label = f"workerGroupSpecs[{g.get('groupName')}]"
        if not g.get("groupName"):
            errors.append(f"{label}: groupName missing")
        lo, n, hi = (g.get(k) for k in ("minReplicas", "replicas", "maxReplicas"))
        if not all(isinstance(x, int) for x in (lo, n, hi)) or not lo <= n <= hi:
            errors.append(f"{label}: need minReplicas <= replicas <= maxReplicas (got {lo}, {n}, {hi})")
            n = 0
        group_errors, devices = _group_errors(label, g, is_head=False)
        errors += group_errors
        total += n * devices
    return errors, total


def meta_errors(doc: dict, kind: str) -> list[str]:
    """apiVersion ray.io/v1, the expected kind, a metadata.name."""
    errors = []
    if doc.get("apiVersion") != "ray.io/v1":
        errors.append(f"{kind}: apiVersion {doc.get('apiVersion')!r} != 'ray.io/v1'")
    if doc.get("kind") != kind:
        errors.append(f"kind {doc.get('kind')!r} != {kind!r}")
    if not doc.get("metadata", {}).get("name"):
        errors.append(f"{kind}: metadata.name missing")
    return errors


# --- Dockerfile -----------------------------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    pairs = [ln.strip().partition(" ") for ln in joined.splitlines() if ln.strip()]
    return [(kind.upper(), rest.strip()) for kind, _, rest in pairs]


def dockerfile_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    return dict(a.split("=", 1) for kind, a in instructions if kind == "ARG" and "=" in a)


def substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


def dockerignored(path: str, patterns: list[str]) -> bool:
    return any(fnmatch(path, p) or fnmatch(path, p.removeprefix("**/")) for p in patterns)


def dockerfile_errors(text: str, project: dict, ignore_patterns: list[str]) -> list[str]:
    """Base image vs requires-python, Ray pin vs pyproject, sources copied, non-root, a real CMD."""
    ins = dockerfile_instructions(text)
    args = dockerfile_args(ins)
    errors = []
    froms = [substitute(a, args) for kind, a in ins if kind == "FROM"]
    m = re.fullmatch(r"python:(\d+\.\d+)-slim", froms[-1] if froms else "")
    if not m:
        errors.append(f"base image {froms} is not python:X.Y-slim")
    elif not SpecifierSet(project["project"]["requires-python"]).contains(m[1]):
        errors.append(f"base Python {m[1]} does not satisfy requires-python "
                      f"{project['project']['requires-python']}")
    ray_version = args.get("RAY_VERSION", "")
    if not ray_specifier(project).contains(ray_version):
        errors.append(f"RAY_VERSION {ray_version!r} does not satisfy pyproject's ray{ray_specifier(project)}")
    runs = [substitute(a, args) for kind, a in ins if kind == "RUN"]
    if not any(f'"ray[default]=={ray_version}"' in r and re.search(r"pip install .* \.( |$)", r) for r in runs):
        errors.append(f'no RUN pip install "ray[default]=={ray_version}" . (the pinned Ray and the project)')
    errors += all_command_errors(runs)
    copied = {src for kind, a in ins if kind == "COPY" for src in a.split()[:-1]}
    needed = {project["project"]["readme"], "pyproject.toml"}
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        needed |= {p.name for p in REPO.iterdir() if fnmatch(p.name, pattern) and (p / "__init__.py").exists()}
    errors += [f"{n} is not COPY'd into the image" for n in sorted(needed - copied)]
    errors += [f"{src} is COPY'd but .dockerignore excludes it" for src in sorted(copied)
               if dockerignored(src, ignore_patterns)]
    users = [a for kind, a in ins if kind == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        errors.append(f"the image runs as root (USER {users[-1] if users else 'unset'})")
    cmds = [a for kind, a in ins if kind == "CMD"]
    if not cmds:
        errors.append("no CMD")
    else:
        argv = json.loads(cmds[-1])
        errors += command_errors(argv)
        serve = cent_serve_args(shlex.join(argv))
        if serve is None or serve.host in (None, "127.0.0.1", "localhost"):
            errors.append(f"CMD {argv} is not `cent serve` bound to a non-loopback --host")
        else:
            port = str(serve.port or ServerConfig().port)
            exposed = [p.split("/")[0] for kind, a in ins if kind == "EXPOSE" for p in a.split()]
            if port not in exposed:
                errors.append(f"the image does not EXPOSE the port `cent serve` listens on ({port})")
    return errors


def dockerignore_patterns() -> list[str]:
    path = REPO / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith(("#", "!"))]


def ray_version_of_dockerfile(text: str) -> str:
    return dockerfile_args(dockerfile_instructions(text))["RAY_VERSION"]



def markdown_shell_lines(text: str) -> list[str]:
    """The lines of a Markdown file's ```bash blocks, continuations joined (`shell_commands` drops
    the `# ...` comments)."""
    blocks = re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, flags=re.S)
    return [ln for block in blocks for ln in re.sub(r"\\\n\s*", " ", block).splitlines() if ln.strip()]
