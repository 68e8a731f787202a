"""deploy/: every manifest parses, every Ray node advertises `cent_device`, every command it runs is a
real `cent` / `ray` command with real flags, and the Python and Ray versions agree with pyproject.
Each checker also gets a broken copy, to show it can fail."""
from __future__ import annotations

import copy
import re

import pytest
import yaml

from tests.deploy import checks as C

LAUNCHER_FILES = sorted(C.DEPLOY.glob("ray-cluster*.yaml"))
KUBERAY_FILES = sorted((C.DEPLOY / "kuberay").glob("*.yaml"))
DOC_FILES = [C.REPO / "README.md", C.DEPLOY / "README.md"]
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")


def load_all(path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (C.DEPLOY / "Dockerfile").read_text()


@pytest.fixture(scope="module")
def ray_version(dockerfile) -> str:
    return C.ray_version_of_dockerfile(dockerfile)


@pytest.fixture(scope="module")
def kuberay() -> dict[str, list[dict]]:
    by_kind: dict[str, list[dict]] = {}
    for path in KUBERAY_FILES:
        for doc in load_all(path):
            by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def test_every_deploy_yaml_parses_and_is_checked():
    all_yaml = sorted(C.DEPLOY.rglob("*.yaml"))
    assert set(all_yaml) == set(LAUNCHER_FILES) | set(KUBERAY_FILES), "a manifest no test checks"
    assert any(c["provider"]["type"] == "local" for p in LAUNCHER_FILES for c in load_all(p))
    for path in all_yaml:
        docs = load_all(path)
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_shell_commands_split_like_a_shell():
    line = "ulimit -n 65536; RAY_AUTH_MODE=token ray start --resources='{\"cent_device\": 8}' && cent serve # x"
    assert C.shell_commands(line) == [["ulimit", "-n", "65536"],
                                      ["ray", "start", '--resources={"cent_device": 8}'], ["cent", "serve"]]


@pytest.mark.parametrize("line", [
    "cent serve --ray-adress auto",                     # misspelt flag
    "cent serv --ray-address auto",                     # no such subcommand
    "cent serve --clock fast",                          # bad choice
    "ray start --head --resource='{\"cent_device\": 8}'",
    "ray start --address",                              # flag without its value
    "ray strat --head",
    "ray exec cluster.yaml 'cent serve --port eighty'",  # the command `ray exec` runs
    "ray job submit --address http://h:8265 -- cent serve --tpp 2",
])
def test_command_checker_rejects_wrong_commands(line):
    assert C.all_command_errors([line])


def test_command_checker_accepts_real_commands():
    assert C.all_command_errors([
        "cent serve --ray-address auto --host 0.0.0.0 --devices 32 --pp 80 --tp 1 --numerics off "
        "--model llama2-70b --clock paced --port 8001 --api-key k --set server.pace_factor=2",
        "cent serve --local", "ray stop", "ray start --head --port=6379 --resources='{\"cent_device\": 8}'",
        "ray exec c.yaml 'cent serve --ray-address auto'"]) == []


# --- Dockerfile -----------------------------------------------------------------------------------

def test_dockerfile(dockerfile):
    assert C.dockerfile_errors(dockerfile, C.pyproject(), C.dockerignore_patterns()) == []


@pytest.mark.parametrize("old, new, expected", [
    ("ARG PYTHON_VERSION=3.11", "ARG PYTHON_VERSION=3.9", "requires-python"),
    ("ARG RAY_VERSION=2.60.0", "ARG RAY_VERSION=2.30.0", "RAY_VERSION"),
    ('"ray[default]==${RAY_VERSION}"', '"ray[default]"', "pinned Ray"),
    ("COPY fabric ./fabric\n", "", "fabric is not COPY'd"),
    ("USER ray", "USER root", "root"),
    ('"--host", "0.0.0.0"', '"--hots", "0.0.0.0"', "unrecognized arguments"),
    ('"--host", "0.0.0.0"', '"--port", "8000"', "non-loopback"),
    ("cent serve --help", "cent serve --hepl", "unrecognized arguments"),
    ("EXPOSE 8000", "EXPOSE 8080", "EXPOSE the port"),
])
def test_dockerfile_checker_catches(dockerfile, old, new, expected):
    assert old in dockerfile
    errors = C.dockerfile_errors(dockerfile.replace(old, new), C.pyproject(), C.dockerignore_patterns())
    assert any(expected in e for e in errors), errors


def test_dockerignore_must_not_drop_sources(dockerfile):
    errors = C.dockerfile_errors(dockerfile, C.pyproject(), C.dockerignore_patterns() + ["api"])
    assert errors == ["api is COPY'd but .dockerignore excludes it"]


# --- Ray cluster launcher -------------------------------------------------------------------------

@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_config(path, ray_version):
    (config,) = load_all(path)
    assert C.launcher_errors(config) == []
    assert PLACEHOLDER.search(path.read_text()), "placeholders must be marked <LIKE_THIS>"
    setup = " ".join(config["setup_commands"])
    assert f'"ray[default]=={ray_version}" ~/cent-serve' in setup  # pinned Ray + the project
    assert config["file_mounts"]["~/cent-serve"] == "."
    if config["provider"]["type"] == "local":
        assert config["min_workers"] == config["max_workers"] == len(config["provider"]["worker_ips"])


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_nodes_run_the_devices_as_a_local_ray_does(path):
    """`ray start` reads Ray's worker settings from its environment: the launcher's login shell (the
    ~/.bashrc line) sets what `cent serve` sets for the Ray it starts itself and deploy/README.md
    asks of every machine by hand; without them the devices ran at Ray's nice 15."""
    from cent_serve.executor.ray_cluster import STARTUP_CONCURRENCY, STARTUP_CONCURRENCY_ENV, WORKER_NICENESS_ENV

    (config,) = load_all(path)
    (line,) = [c for c in config["setup_commands"] if "~/.bashrc" in c]
    exported = re.findall(r"\b(RAY_\w+=\w+)", line)  # the echo's quoted export line, flattened by YAML's >-
    assert f"{WORKER_NICENESS_ENV}=0" in exported and f"{STARTUP_CONCURRENCY_ENV}={STARTUP_CONCURRENCY}" in exported, line


def test_the_image_runs_the_devices_as_a_local_ray_does(dockerfile):
    """KubeRay's head and workers run `ray start` in this image: its ENV carries the same settings."""
    from cent_serve.executor.ray_cluster import STARTUP_CONCURRENCY, STARTUP_CONCURRENCY_ENV, WORKER_NICENESS_ENV

    env = re.search(r"^ENV ((?:.*\\\n)*.*)$", dockerfile, re.M).group(1).replace("\\\n", " ").split()
    assert f"{WORKER_NICENESS_ENV}=0" in env and f"{STARTUP_CONCURRENCY_ENV}={STARTUP_CONCURRENCY}" in env, env


def _break_worker_start(config):
    config["worker_start_ray_commands"][-1] = "ray start --address=$RAY_HEAD_IP:6379"


def _misspell_resources(config):
    config["head_start_ray_commands"][-1] = config["head_start_ray_commands"][-1].replace(
        "--resources=", "--resource=")


@pytest.mark.parametrize("name, breaker, expected", [
    ("ray-cluster.yaml", _break_worker_start, "worker nodes of type local.cluster.node do not advertise"),
    ("ray-cluster.yaml", _misspell_resources, "No such option '--resource'"),
    ("ray-cluster.yaml", lambda c: c["setup_commands"].append("cent serve --ray-adress auto"),
     "unrecognized arguments"),
    ("ray-cluster.yaml", lambda c: c.update(nodes=3), "Ray rejects the config"),
    ("ray-cluster-aws.yaml", lambda c: c["available_node_types"]["ray.worker.cent"].update(resources={}),
     "worker nodes of type ray.worker.cent do not advertise"),
])
def test_launcher_checker_catches(name, breaker, expected):
    config = load_all(C.DEPLOY / name)[0]
    breaker(config)
    errors = C.launcher_errors(config)
    assert any(expected in e for e in errors), errors


# --- KubeRay --------------------------------------------------------------------------------------

def test_kuberay_raycluster(kuberay, ray_version):
    (cluster,) = kuberay["RayCluster"]
    errors, num_devices = C.raycluster_errors(cluster, ray_version)
    assert errors == []
    assert num_devices >= 1


def test_kuberay_serve_job_and_service(kuberay, ray_version):
    """The RayJob runs a real `cent serve` on the RayCluster, within its devices; the Service reaches it."""
    (cluster,), (job,), (service,) = kuberay["RayCluster"], kuberay["RayJob"], kuberay["Service"]
    assert C.meta_errors(job, "RayJob") == []
    name = cluster["metadata"]["name"]
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": name}
    assert job["spec"]["shutdownAfterJobFinishes"] is False  # the cluster is not the job's
    assert C.all_command_errors([job["spec"]["entrypoint"]]) == []
    args = C.cent_serve_args(job["spec"]["entrypoint"])
    assert args is not None and args.host == "0.0.0.0" and args.ray_address == "auto"
    _, num_devices = C.raycluster_errors(cluster, ray_version)
    assert 1 <= args.devices <= num_devices
    assert service["apiVersion"] == "v1"
    assert service["spec"]["selector"] == {"ray.io/cluster": name, "ray.io/node-type": "head"}
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == args.port
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert args.port in [p["containerPort"] for p in head["ports"]]


def _set_worker_params(cluster, **params):
    cluster["spec"]["workerGroupSpecs"][0]["rayStartParams"].update(params)


@pytest.mark.parametrize("breaker, expected", [
    # plain JSON: the shell KubeRay runs `ray start` in strips its quotes
    (lambda c: _set_worker_params(c, resources='{"cent_device": 8}'), "unexpected extra argument"),
    (lambda c: _set_worker_params(c, resources='"{\\"CPU\\": 8}"'), "does not advertise cent_device"),
    (lambda c: c["spec"]["headGroupSpec"]["rayStartParams"].update({"dashbord-host": "0.0.0.0"}),
     "No such option"),
    (lambda c: _set_worker_params(c, **{"num-cpus": 4}), "must be a string"),
    (lambda c: c["spec"]["workerGroupSpecs"][0].update(replicas=99), "minReplicas <= replicas"),
    (lambda c: c["spec"]["workerGroupSpecs"][0].pop("groupName"), "groupName missing"),
    (lambda c: c.update(apiVersion="ray.io/v1alpha1"), "apiVersion"),
    (lambda c: c["spec"].update(rayVersion="2.9.0"), "rayVersion"),
    (lambda c: c["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].pop("image"), "no image"),
])
def test_kuberay_checker_catches(kuberay, ray_version, breaker, expected):
    cluster = copy.deepcopy(kuberay["RayCluster"][0])
    breaker(cluster)
    errors, _ = C.raycluster_errors(cluster, ray_version)
    assert any(expected in e for e in errors), errors


# --- versions and docs ----------------------------------------------------------------------------

def test_every_ray_pin_agrees(ray_version, kuberay):
    """Image, launcher configs, KubeRay and the docs name one Ray, and pyproject allows it."""
    assert C.ray_specifier(C.pyproject()).contains(ray_version)
    texts = [p.read_text() for p in [*C.DEPLOY.rglob("*"), *DOC_FILES] if p.is_file()]
    pins = {v for t in texts for v in re.findall(r"ray\[default\]==([\w.]+)", t)}
    assert pins == {ray_version}
    assert {c["spec"]["rayVersion"] for c in kuberay["RayCluster"]} == {ray_version}


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.relative_to(C.REPO).as_posix())
def test_documented_commands_are_real(path):
    lines = C.markdown_shell_lines(path.read_text())
    assert C.all_command_errors(lines) == []
    starts = [ln for ln in lines if any(a[:2] == ["ray", "start"] for a in C.shell_commands(ln))]
    assert starts and all(C.ray_start_devices([ln]) for ln in starts), starts  # each advertises devices


def test_referenced_deploy_paths_exist():
    texts = [p.read_text() for p in [*C.DEPLOY.rglob("*"), *DOC_FILES] if p.is_file()]
    paths = {m.rstrip(".,") for t in texts for m in re.findall(r"(?<![\w/])deploy/[\w./-]+", t)}
    assert paths and all((C.REPO / p).exists() for p in paths), sorted(p for p in paths if not (C.REPO / p).exists())
