"""Offline checks of the cluster configurations in cluster/ against Ray's own schema and dssl's needs.

The cluster-launcher files go through the code that `ray up` runs first (Ray's default filling
and its JSON schema) and through the autoscaler's node-type choice. The KubeRay manifests are
checked field by field, because the KubeRay CRD schemas do not ship with Ray. Nothing here
starts Ray or reaches a cloud.
"""

from __future__ import annotations

import copy
import functools
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.command_runner import SSHCommandRunner
from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
from ray.autoscaler._private.resource_demand_scheduler import (
    _default_utilization_scorer,
    get_nodes_for,
)
from ray.autoscaler._private.util import prepare_config, validate_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_DIR = REPO_ROOT / "cluster"
KUBERAY_DIR = CLUSTER_DIR / "kuberay"
LAUNCHER_CONFIGS = {"aws": CLUSTER_DIR / "aws.yaml", "gcp": CLUSTER_DIR / "gcp.yaml"}
STORAGE_SCHEMES = {"aws": "s3://", "gcp": "gs://"}
RAYCLUSTER = KUBERAY_DIR / "raycluster.yaml"
RAYJOB = KUBERAY_DIR / "rayjob.yaml"
DOCKERFILE = CLUSTER_DIR / "Dockerfile"
README = CLUSTER_DIR / "README.md"

RAY_VERSION = "2.60.0"
TORCH_PIN = "torch==2.13.0"
DSSL_ENV = ("MLFLOW_TRACKING_URI", "DSSL_STORAGE_PATH", "RAY_TRAIN_V2_ENABLED")
PLACEHOLDER = re.compile(r"YOUR-[A-Z0-9]+(?:-[A-Z0-9]+)*")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# The resources that a trial with one Ray Train worker and gpus_per_worker: 1 requests.
GPU_TRIAL = {"CPU": 1, "GPU": 1}


def load_yaml(path: Path) -> dict[str, Any]:
    """Parse one YAML document with yaml.safe_load, as `ray up` does."""
    with path.open() as stream:
        return yaml.safe_load(stream)


def prepared_config(provider: str) -> dict[str, Any]:
    """Return a launcher configuration after Ray's default filling, as `ray up` builds it."""
    return prepare_config(copy.deepcopy(load_yaml(LAUNCHER_CONFIGS[provider])))


def gpu_node_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return the worker node types of a launcher configuration, keyed by name."""
    return {
        name: node_type
        for name, node_type in config["available_node_types"].items()
        if name != config["head_node_type"]
    }


def ray_start_command(commands: list[str]) -> str:
    """Return the one command of a start-command list that runs `ray start`."""
    starts = [command for command in commands if "ray start" in command]
    assert len(starts) == 1, f"expected one `ray start` command, got {commands}"
    return starts[0]


def exported_env(command: str) -> dict[str, str]:
    """Return the NAME=VALUE pairs of the `export ...;` statement in a shell command."""
    match = re.search(r"\bexport\s+([^;]+);", command)
    assert match is not None, f"no `export ...;` in {command!r}"
    pairs = [item.split("=", 1) for item in shlex.split(match.group(1))]
    return {name: value for name, value in pairs}


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """Return a Kubernetes container's literal environment variables."""
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def cluster_specs() -> dict[str, dict[str, Any]]:
    """Return the RayCluster spec of the RayCluster manifest and of the RayJob manifest."""
    return {
        "raycluster": load_yaml(RAYCLUSTER)["spec"],
        "rayjob": load_yaml(RAYJOB)["spec"]["rayClusterSpec"],
    }


def dockerfile_instructions() -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) for each instruction of cluster/Dockerfile."""
    instructions = []
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, arguments = stripped.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


# --------------------------------------------------------------------------------------------
# Cluster-launcher configurations
# --------------------------------------------------------------------------------------------


def test_installed_ray_is_pinned_version() -> None:
    # The schema and defaults below are those of the installed Ray, which must be the one the
    # configurations name.
    assert ray.__version__ == RAY_VERSION


@pytest.mark.parametrize("provider", sorted(LAUNCHER_CONFIGS))
def test_launcher_config_passes_ray_schema(provider: str) -> None:
    config = prepared_config(provider)

    validate_config(config)

    assert config["provider"]["type"] == provider
    assert config["cluster_name"] == "dssl"
    assert config["head_node_type"] in config["available_node_types"]


@pytest.mark.parametrize("provider", sorted(LAUNCHER_CONFIGS))
def test_launcher_workers_scale_from_zero(provider: str) -> None:
    config = prepared_config(provider)
    workers = gpu_node_types(config)

    assert set(workers) == {"gpu_ondemand", "gpu_spot"}
    for name, node_type in workers.items():
        assert node_type["min_workers"] == 0, name
        assert node_type["max_workers"] > 0, name
        assert node_type["max_workers"] <= config["max_workers"], name
        assert node_type["resources"]["GPU"] >= 1, name
        assert node_type["resources"]["CPU"] >= 1, name
    assert config["idle_timeout_minutes"] > 0

    head = config["available_node_types"][config["head_node_type"]]
    assert "head" in config["head_node_type"]
    assert head["max_workers"] == 0
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"]["CPU"] >= 1


def test_aws_spot_type_uses_market_options() -> None:
    workers = gpu_node_types(prepared_config("aws"))

    spot = workers["gpu_spot"]["node_config"]
    on_demand = workers["gpu_ondemand"]["node_config"]
    assert spot["InstanceMarketOptions"] == {"MarketType": "spot"}
    assert "InstanceMarketOptions" not in on_demand
    assert spot["InstanceType"] == on_demand["InstanceType"]
    # Only the head gets an instance profile from `ray up`, so workers need one to write to S3.
    assert spot["IamInstanceProfile"] == on_demand["IamInstanceProfile"]
    assert "instance-profile/" in spot["IamInstanceProfile"]["Arn"]


def test_gcp_preemptible_type_uses_scheduling() -> None:
    workers = gpu_node_types(prepared_config("gcp"))

    spot = workers["gpu_spot"]["node_config"]
    on_demand = workers["gpu_ondemand"]["node_config"]
    assert spot["scheduling"]["preemptible"] is True
    assert spot["scheduling"]["automaticRestart"] is False
    assert "preemptible" not in on_demand["scheduling"]
    # GPU instances cannot live-migrate, so Compute Engine requires TERMINATE for them.
    assert spot["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert on_demand["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert spot["machineType"] == on_demand["machineType"]
    scopes = spot["serviceAccounts"][0]["scopes"]
    assert "https://www.googleapis.com/auth/cloud-platform" in scopes


@pytest.mark.parametrize("provider", sorted(LAUNCHER_CONFIGS))
def test_autoscaler_starts_spot_before_on_demand(provider: str) -> None:
    config = prepared_config(provider)
    workers = gpu_node_types(config)
    spot_max = workers["gpu_spot"]["max_workers"]
    on_demand_max = workers["gpu_ondemand"]["max_workers"]
    scorer = functools.partial(
        _default_utilization_scorer,
        node_availability_summary=NodeAvailabilitySummary(node_availabilities={}),
    )
    head = config["head_node_type"]

    few, few_left = get_nodes_for(
        config["available_node_types"], {head: 1}, head, config["max_workers"], [GPU_TRIAL] * 3, scorer
    )
    many, many_left = get_nodes_for(
        config["available_node_types"],
        {head: 1},
        head,
        config["max_workers"],
        [GPU_TRIAL] * (spot_max + on_demand_max + 1),
        scorer,
    )

    assert dict(few) == {"gpu_spot": 3}
    assert few_left == []
    assert dict(many) == {"gpu_spot": spot_max, "gpu_ondemand": on_demand_max}
    assert many_left == [GPU_TRIAL]


@pytest.mark.parametrize("provider", sorted(LAUNCHER_CONFIGS))
def test_launcher_images_pin_ray_and_python(provider: str) -> None:
    docker = prepared_config(provider)["docker"]

    assert docker["head_image"] == f"rayproject/ray:{RAY_VERSION}-py311-cpu"
    assert docker["worker_image"] == f"rayproject/ray:{RAY_VERSION}-py311-gpu"
    assert "--env RAY_AUTH_MODE=token" in docker["run_options"]


@pytest.mark.parametrize("provider", sorted(LAUNCHER_CONFIGS))
def test_launcher_setup_installs_pinned_dssl(provider: str) -> None:
    config = prepared_config(provider)
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())

    assert TORCH_PIN in pyproject["project"]["dependencies"]
    assert config["file_mounts"]["~/dssl"] == "."
    for role in ("head_setup_commands", "worker_setup_commands"):
        commands = config[role]
        torch_steps = [i for i, command in enumerate(commands) if TORCH_PIN in command]
        dssl_steps = [i for i, command in enumerate(commands) if "-e ~/dssl" in command]
        assert len(torch_steps) == 1, (role, commands)
        assert len(dssl_steps) == 1, (role, commands)
        assert torch_steps[0] < dssl_steps[0], (role, commands)
        assert "-c ~/dssl/constraints.txt" in commands[dssl_steps[0]], (role, commands)


@pytest.mark.parametrize("provider", sorted(LAUNCHER_CONFIGS))
def test_start_commands_export_dssl_env(provider: str) -> None:
    config = prepared_config(provider)
    head_command = ray_start_command(config["head_start_ray_commands"])
    worker_command = ray_start_command(config["worker_start_ray_commands"])

    head_env = exported_env(head_command)
    worker_env = exported_env(worker_command)

    assert set(DSSL_ENV) <= set(head_env), head_env
    assert head_env["MLFLOW_TRACKING_URI"].startswith("http://"), head_env
    assert head_env["DSSL_STORAGE_PATH"].startswith(STORAGE_SCHEMES[provider]), head_env
    assert head_env["RAY_TRAIN_V2_ENABLED"] == "1"
    assert head_env["RAY_AUTH_MODE"] == "token"
    assert worker_env == head_env
    # `export` must come before `ray start`, so that Ray's processes inherit the variables.
    assert head_command.index("export") < head_command.index("ray start")
    assert worker_command.index("export") < worker_command.index("ray start")
    assert "--head" in head_command
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_command
    assert "--dashboard-host=127.0.0.1" in head_command
    assert "--address=$RAY_HEAD_IP:6379" in worker_command


@pytest.mark.parametrize("provider", sorted(LAUNCHER_CONFIGS))
def test_launcher_never_binds_all_interfaces(provider: str) -> None:
    assert "0.0.0.0" not in LAUNCHER_CONFIGS[provider].read_text()


@pytest.mark.parametrize("provider", sorted(LAUNCHER_CONFIGS))
def test_launcher_mounts_ray_token(provider: str) -> None:
    config = prepared_config(provider)

    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


@pytest.mark.parametrize(
    ("change", "path_in_error"),
    [
        pytest.param(lambda c: c.update(dssl_storage="s3://bucket"), [], id="unknown-top-level-key"),
        pytest.param(lambda c: c.update(max_workers="12"), ["max_workers"], id="max-workers-string"),
        pytest.param(
            lambda c: c["available_node_types"]["gpu_spot"]["resources"].update(GPU=0.5),
            ["available_node_types", "gpu_spot", "resources", "GPU"],
            id="fractional-gpu-resource",
        ),
        pytest.param(
            lambda c: c["available_node_types"]["gpu_spot"].update(min_worker=0),
            ["available_node_types", "gpu_spot"],
            id="misspelled-node-type-field",
        ),
        pytest.param(
            lambda c: c["docker"].update(gpu_image="rayproject/ray"), ["docker"], id="unknown-docker-field"
        ),
    ],
)
def test_ray_schema_rejects_invalid_config(change: Any, path_in_error: list[str]) -> None:
    config = prepared_config("aws")
    change(config)

    with pytest.raises(jsonschema.ValidationError) as raised:
        validate_config(config)

    assert list(raised.value.absolute_path) == path_in_error


def test_rsync_excludes_local_state(tmp_path: Path) -> None:
    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed, and `ray up` copies file_mounts with it")
    source = tmp_path / "repo"
    copied = [
        "pyproject.toml",
        "constraints.txt",
        "dssl/__init__.py",
        "dssl/build/kept.py",
        "studies/demo.yaml",
        "data/digits-two-view/dataset.yaml",
    ]
    excluded = [
        ".venv/bin/python",
        ".git/HEAD",
        "dssl/__pycache__/cli.cpython-311.pyc",
        "dssl.egg-info/PKG-INFO",
        "mlflow.db",
        "mlartifacts/1/a.txt",
        "dssl_results/demo-20261204-213000/optuna.db",
        "reports/demo/results.csv",
        "build/lib/dssl/__init__.py",
    ]
    for relative in copied + excluded:
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_text("x")
    target = tmp_path / "node"
    config = prepared_config("aws")
    # The same --exclude arguments that `ray up` passes to rsync for file_mounts.
    filter_args = SSHCommandRunner._create_rsync_filter_args(
        None, {"rsync_exclude": config["rsync_exclude"], "rsync_filter": config["rsync_filter"]}
    )

    subprocess.run(
        ["rsync", "-a", *filter_args, f"{source}/", f"{target}/"], check=True, capture_output=True, timeout=60
    )

    for relative in copied:
        assert (target / relative).is_file(), relative
    for relative in excluded:
        assert not (target / relative).exists(), relative
    assert prepared_config("gcp")["rsync_exclude"] == config["rsync_exclude"]


# --------------------------------------------------------------------------------------------
# KubeRay manifests and the image they run
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind"), [(RAYCLUSTER, "RayCluster"), (RAYJOB, "RayJob")], ids=["raycluster", "rayjob"]
)
def test_kuberay_manifest_header(path: Path, kind: str) -> None:
    documents = list(yaml.safe_load_all(path.read_text()))

    assert len(documents) == 1
    manifest = documents[0]
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == kind
    assert DNS_LABEL.match(manifest["metadata"]["name"]), manifest["metadata"]["name"]


@pytest.mark.parametrize("manifest", ["raycluster", "rayjob"])
def test_kuberay_cluster_spec(manifest: str) -> None:
    spec = cluster_specs()[manifest]

    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["authOptions"]["mode"] == "token"
    head_container = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert RAY_VERSION in head_container["image"]
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    head_env = container_env(head_container)
    assert set(DSSL_ENV) <= set(head_env), head_env
    assert head_env["MLFLOW_TRACKING_URI"].startswith("http://")
    assert head_env["DSSL_STORAGE_PATH"].startswith(("s3://", "gs://"))
    assert head_env["RAY_TRAIN_V2_ENABLED"] == "1"


@pytest.mark.parametrize("manifest", ["raycluster", "rayjob"])
def test_kuberay_gpu_group_scales_from_zero(manifest: str) -> None:
    spec = cluster_specs()[manifest]
    head_container = spec["headGroupSpec"]["template"]["spec"]["containers"][0]

    groups = spec["workerGroupSpecs"]
    assert len(groups) >= 1
    for group in groups:
        name = group["groupName"]
        assert group["minReplicas"] == 0, name
        assert group["maxReplicas"] > 0, name
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], name
        container = group["template"]["spec"]["containers"][0]
        gpus = container["resources"]["limits"]["nvidia.com/gpu"]
        assert gpus >= 1, name
        assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus, name
        assert int(group["rayStartParams"]["num-gpus"]) == gpus, name
        assert container["image"] == head_container["image"], name
        assert container_env(container) == container_env(head_container), name


def test_rayjob_cluster_matches_raycluster() -> None:
    specs = cluster_specs()

    assert specs["rayjob"] == specs["raycluster"]


def test_rayjob_runs_shipped_study() -> None:
    spec = load_yaml(RAYJOB)["spec"]

    match = re.fullmatch(r"dssl run (studies/[\w.-]+\.yaml)", spec["entrypoint"])
    assert match is not None, spec["entrypoint"]
    study = REPO_ROOT / match.group(1)
    assert study.is_file(), study
    assert load_yaml(study)["name"]
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env == {"working_dir": "/home/ray/dssl"}


def test_dockerfile_builds_manifest_image() -> None:
    instructions = dockerfile_instructions()
    image = load_yaml(RAYCLUSTER)["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    base = f"rayproject/ray:{RAY_VERSION}-py311-gpu"

    assert instructions[0] == ("FROM", base)
    # The manifests' tag names the base it was built from.
    assert image.endswith(f"ray{RAY_VERSION}-py311-gpu"), image
    workdirs = [arguments for keyword, arguments in instructions if keyword == "WORKDIR"]
    assert workdirs == [yaml.safe_load(load_yaml(RAYJOB)["spec"]["runtimeEnvYAML"])["working_dir"]]
    runs = [arguments for keyword, arguments in instructions if keyword == "RUN"]
    torch_steps = [i for i, command in enumerate(runs) if TORCH_PIN in command]
    dssl_steps = [i for i, command in enumerate(runs) if "-c constraints.txt ." in command]
    assert len(torch_steps) == 1, runs
    assert len(dssl_steps) == 1, runs
    assert torch_steps[0] < dssl_steps[0], runs
    for keyword, arguments in instructions:
        if keyword == "COPY":
            sources = [word for word in arguments.split()[:-1] if not word.startswith("--")]
            for source in sources:
                assert (REPO_ROOT / source).exists(), f"COPY source {source} is not in the repository"


def test_kubectl_expands_manifests(tmp_path: Path) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    for path in (RAYCLUSTER, RAYJOB):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "kustomization.yaml").write_text(f"resources:\n- {RAYCLUSTER.name}\n- {RAYJOB.name}\n")

    # kustomize builds locally with Kubernetes' own YAML decoder and contacts no API server.
    output = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path)], check=True, capture_output=True, text=True, timeout=60
    ).stdout

    rendered = {document["kind"]: document for document in yaml.safe_load_all(output)}
    assert rendered["RayCluster"]["spec"] == load_yaml(RAYCLUSTER)["spec"]
    assert rendered["RayJob"]["spec"] == load_yaml(RAYJOB)["spec"]


# --------------------------------------------------------------------------------------------
# Documentation
# --------------------------------------------------------------------------------------------


def test_readme_lists_every_placeholder() -> None:
    readme = README.read_text()
    files = [*LAUNCHER_CONFIGS.values(), RAYCLUSTER, RAYJOB, DOCKERFILE]

    placeholders = {token for path in files for token in PLACEHOLDER.findall(path.read_text())}

    assert {"YOUR-BUCKET", "YOUR-MLFLOW-HOST", "YOUR-REGISTRY"} <= placeholders
    missing = sorted(token for token in placeholders if f"`{token}`" not in readme)
    assert missing == [], f"cluster/README.md does not list these placeholders: {missing}"


def test_readme_keeps_local_head_section() -> None:
    readme = README.read_text()

    assert "## A local Ray head (one machine)" in readme
    assert "make cluster-up" in readme
