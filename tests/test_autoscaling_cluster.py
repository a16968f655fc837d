"""A study on a fake autoscaling Ray cluster that starts with a head of 0 CPUs and no worker nodes.

Ray's ``fake_multinode`` node provider runs the autoscaler as on a cloud, but each worker node it
launches is another raylet on this machine. The study's trials ask for 1 CPU each, so they can
only run once the autoscaler has added worker nodes. The tests check that ``dssl run`` rejects
node-local paths on such a cluster, and that with ``--shared-storage`` (true here, because every
fake node shares this machine's disk) the study finishes.

The head is started here with ``ray start --head`` and stopped by killing its processes.
``ray.cluster_utils.AutoscalingCluster`` is not used because it runs ``ray stop --force``, which
stops every Ray cluster of this user on the machine, the test session's own included.
Each study runs in a ``dssl run`` subprocess because the pytest process may already be connected
to another Ray cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient
from ray_processes import MARKER_ENV, kill_cluster

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
WORKER_TYPE = "cpu_worker"

# A client script: it connects to RAY_ADDRESS and prints the cluster's nodes and what dssl's
# storage check reads from the cluster.
_PROBE = """
import json, os
import ray
from ray.experimental.internal_kv import _internal_kv_get
from dssl.study.storage import cluster_nodes

ray.init(address=os.environ["RAY_ADDRESS"], logging_level="error", log_to_driver=False)
alive, can_grow = cluster_nodes()
nodes = [
    {"id": node["NodeID"], "alive": bool(node["Alive"]), "cpus": node["Resources"].get("CPU", 0.0)}
    for node in ray.nodes()
]
status = _internal_kv_get("__autoscaling_status")
report = {"alive": alive, "can_grow": can_grow, "nodes": nodes, "autoscaler_status": bool(status)}
print("PROBE " + json.dumps(report))
"""


@dataclass(frozen=True)
class LocalHead:
    """A Ray head that a fixture of this module started with ``ray start --head`` on 127.0.0.1."""

    address: str
    temp_dir: Path
    marker: str

    def env(self, **extra: str) -> dict[str, str]:
        """Return the environment of a client process of this cluster."""
        env = _clean_env()
        env.update({"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token", **extra})
        return env

    def probe(self) -> dict[str, Any]:
        """Return the cluster's nodes and ``cluster_nodes()``, read by a short-lived client."""
        result = subprocess.run(
            [sys.executable, "-c", _PROBE], env=self.env(), capture_output=True, text=True, timeout=120
        )
        lines = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        assert lines, result.stdout[-2000:]
        return json.loads(lines[-1][len("PROBE ") :])

    def monitor_log(self) -> str:
        """Return the autoscaler's log of this cluster's session."""
        return (self.temp_dir / "session_latest" / "logs" / "monitor.log").read_text(errors="replace")


def _clean_env() -> dict[str, str]:
    """Return this process's environment without the variables that choose a cluster or store."""
    dropped = {
        "RAY_ADDRESS",
        "RAY_API_SERVER_ADDRESS",
        "MLFLOW_TRACKING_URI",
        "DSSL_STORAGE_PATH",
        "DSSL_SHARED_STORAGE",
    }
    env = {key: value for key, value in os.environ.items() if key not in dropped}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fake_cluster_config(gcs_port: int) -> dict[str, Any]:
    """Return an autoscaling config for Ray's fake_multinode provider: a 0-CPU head, up to 2 1-CPU nodes.

    Ray's own helper fills in this config from the provider's example.yaml, which the Ray 2.60
    wheel does not ship, so every field the v1 autoscaler reads is written out here.
    """
    return {
        "cluster_name": "fake",
        "max_workers": 2,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            # Without it the fake nodes look for the GCS on Ray's default port 6379.
            "gcs_address": f"127.0.0.1:{gcs_port}",
        },
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.2,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            WORKER_TYPE: {"resources": {"CPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2},
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
        },
    }


# --- starting and killing a head --------------------------------------------------------------


@contextlib.contextmanager
def _started_head(
    log_path: Path, gcs_port: int, extra_args: list[str], extra_env: dict[str, str]
) -> Iterator[LocalHead]:
    """Start a Ray head on 127.0.0.1 with its own ports and temporary folder; kill it afterwards."""
    # Unix socket paths are limited to 107 bytes, so the session folder gets a short path.
    temp_dir = Path(tempfile.mkdtemp(prefix="dssl-ray-", dir="/tmp"))
    marker = uuid.uuid4().hex
    env = _clean_env()
    env.update({"RAY_AUTH_MODE": "token", **extra_env})
    # Ray's renamed processes keep the end of their environment readable, so the marker goes last.
    env[MARKER_ENV] = marker

    command = [
        str(BIN / "ray"), "start", "--head",
        f"--port={gcs_port}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--dashboard-port=0",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        *extra_args,
    ]
    # The test session's own local Ray may hold Ray's default agent ports.
    for flag in (
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
        "ray-client-server-port",
    ):
        command.append(f"--{flag}={_free_port()}")

    try:
        with open(log_path, "w") as log:
            started = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=180)
        assert started.returncode == 0, log_path.read_text()[-4000:]
        yield LocalHead(address=f"127.0.0.1:{gcs_port}", temp_dir=temp_dir, marker=marker)
    finally:
        kill_cluster(marker, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_probe(
    head: LocalHead, accept: Callable[[dict[str, Any]], bool], timeout_s: float, what: str
) -> dict[str, Any]:
    """Probe the cluster every few seconds until ``accept`` holds; raise after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        probe = head.probe()
        if accept(probe):
            return probe
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s; last probe: {probe}")
        time.sleep(2.0)


@pytest.fixture(scope="module")
def fake_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHead]:
    """A fake autoscaling cluster, after its autoscaler has published its first status."""
    folder = tmp_path_factory.mktemp("fake-cluster")
    gcs_port = _free_port()
    config_path = folder / "autoscaling.json"
    config_path.write_text(json.dumps(_fake_cluster_config(gcs_port)))
    args = [f"--autoscaling-config={config_path}", "--num-cpus=0"]
    env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}

    with _started_head(folder / "ray-head.log", gcs_port, args, env) as head:
        # Until the autoscaler's first update, which comes within seconds of the head's start, the
        # GCS contains no autoscaler status, so dssl would take the cluster for one that cannot grow.
        _wait_for_probe(head, lambda probe: probe["autoscaler_status"], 120.0, "the first autoscaler status")
        yield head


@pytest.fixture()
def plain_head(tmp_path: Path) -> Iterator[LocalHead]:
    """A head started without an autoscaling config, as ``make cluster-up`` starts it."""
    with _started_head(tmp_path / "ray-head.log", _free_port(), ["--num-cpus=1"], {}) as head:
        _wait_for_probe(head, lambda probe: probe["autoscaler_status"], 120.0, "the first autoscaler status")
        yield head


def _tiny_study(path: Path) -> Path:
    """Write a study of 2 single-worker trials of 1 CPU each on the digits, both at once."""
    study = {
        "name": "autoscale",
        "data": {"kind": "digits"},
        "method": {
            "hidden_dim": 32,
            "embed_dim": 8,
            "batch_size": 64,
            "step1": {"beta": 0.1, "epochs": 2, "lr": 1.0e-3},
            "step2": {"enabled": True, "lambda": 1.0, "epochs": 1, "lr": 1.0e-3},
        },
        "search": {
            "algorithm": "tpe",
            "metric": "probe/shared/digit",
            "num_trials": 2,
            "max_concurrent": 2,
            "space": {"step1.beta": {"type": "loguniform", "low": 1.0e-3, "high": 10.0}},
        },
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "eval": {"probe_max_train_samples": 800, "diagnostics_samples": 128},
    }
    path.write_text(yaml.safe_dump(study))
    return path


def _run_study(head: LocalHead, folder: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Run ``dssl run`` on the tiny study against ``head``, with a SQLite store in ``folder``."""
    study_file = _tiny_study(folder / "autoscale.yaml")
    command = [
        str(BIN / "dssl"), "run", str(study_file),
        "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--storage-path", str(folder / "results"),
        *flags,
    ]
    # The study took 27 to 39 s on a shared 2-core machine, most of it waiting for worker nodes,
    # so the limit leaves room for a much busier machine.
    return subprocess.run(command, cwd=folder, env=head.env(), capture_output=True, text=True, timeout=900)


def _worker_nodes(probe: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the nodes that have CPUs: on the fake cluster, only the autoscaler's worker nodes."""
    return [node for node in probe["nodes"] if node["cpus"] > 0]


# --- tests ----------------------------------------------------------------------------------------


def test_plain_head_cannot_grow(plain_head: LocalHead) -> None:
    probe = plain_head.probe()
    assert probe["alive"] == 1
    assert probe["can_grow"] is False


def test_fake_head_alone_can_grow(fake_cluster: LocalHead) -> None:
    probe = fake_cluster.probe()
    assert probe["alive"] == 1
    assert [node["alive"] for node in probe["nodes"]] == [True]
    assert _worker_nodes(probe) == []
    assert probe["can_grow"] is True


def test_local_paths_rejected_before_trials(fake_cluster: LocalHead, tmp_path: Path) -> None:
    result = _run_study(fake_cluster, tmp_path)

    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "autoscaler can add worker nodes" in result.stderr
    assert f"the storage path {tmp_path / 'results'} is on this node's own disk" in result.stderr
    assert "MLflow store sqlite:///" in result.stderr
    assert "--shared-storage" in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing started: no MLflow database, no results folder, and no node was requested.
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "results").exists()
    assert "Adding" not in fake_cluster.monitor_log()


def test_study_scales_up_and_finishes(fake_cluster: LocalHead, tmp_path: Path) -> None:
    result = _run_study(fake_cluster, tmp_path, "--shared-storage")

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "Study 'autoscale' finished: 2 trials, 0 failed." in result.stdout

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("autoscale")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(parents) == 1
    assert parents[0].info.status == "FINISHED"
    assert len(children) == 2
    assert [run.info.status for run in children] == ["FINISHED", "FINISHED"]
    for run in children:
        assert 0.0 <= run.data.metrics["probe/shared/digit"] <= 1.0

    # The head has no CPU, so the trials ran on worker nodes that the autoscaler added. The GCS
    # keeps the nodes that have since been removed as idle, with Alive false.
    probe = fake_cluster.probe()
    workers = _worker_nodes(probe)
    assert len(workers) >= 1, probe
    assert all(node["cpus"] == 1.0 for node in workers)
    assert f"of type {WORKER_TYPE}" in fake_cluster.monitor_log()
    assert "Adding" in fake_cluster.monitor_log()
