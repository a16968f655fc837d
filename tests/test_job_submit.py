"""`ray job submit` of the smoke study to a local Ray head on 127.0.0.1; its runs land in MLflow."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_jobs_api(address: str, env: dict[str, str], head: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start --head exited with status {head.returncode}")
        probe = subprocess.run(
            [str(BIN / "ray"), "job", "list", "--address", address],
            env=env, capture_output=True, text=True, timeout=60,
        )
        if probe.returncode == 0:
            return
        time.sleep(2.0)
    raise TimeoutError(f"the Ray jobs API at {address} did not answer within {timeout_s} s")


def _submit_when_agent_ready(submit: list[str], env: dict[str, str], attempts: int = 10) -> subprocess.CompletedProcess[str]:
    """Run `ray job submit`, retrying while the head's job agent has not registered yet.

    The jobs API responds before the dashboard agent that runs jobs is up. Until then a
    submission fails at once with "No available agent to submit job".
    """
    for _ in range(attempts):
        result = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode == 0 or "No available agent" not in result.stdout + result.stderr:
            return result
        time.sleep(5.0)
    return result


def _stop_process_group(process: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """Start `ray start --head` on 127.0.0.1 with jobs tracked in a temporary MLflow store."""
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    dashboard_port = _free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_USAGE_STATS_ENABLED": "0",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "DSSL_STORAGE_PATH": str(tmp_path / "results"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("RAY_ADDRESS", None)
    start = [
        str(BIN / "ray"), "start", "--head",
        f"--port={_free_port()}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        "--num-cpus=2",
        "--disable-usage-stats",
    ]
    # The test session's own local Ray already uses Ray's default agent ports (52365 and
    # others), so a second cluster on the same ports gets no job agent.
    for flag in (
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
        "ray-client-server-port",
    ):
        start.append(f"--{flag}={_free_port()}")
    # `--block` keeps the head in this process group, so the test stops exactly this cluster.
    # `ray stop` would stop every Ray cluster on the machine, the test session's included.
    log = open(tmp_path / "ray-head.log", "w")
    head = subprocess.Popen([*start, "--block"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        _wait_for_jobs_api(address, env, head)
        yield address, env
    finally:
        _stop_process_group(head)
        log.close()


def test_submitted_smoke_study_tracked(ray_head: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    address, env = ray_head
    working_dir = tmp_path / "project"
    shutil.copytree(
        REPO_ROOT,
        working_dir,
        ignore=shutil.ignore_patterns(".git", ".venv", "mlflow.db", "mlartifacts", "dssl_results", "__pycache__"),
    )
    submit = [
        str(BIN / "ray"), "job", "submit",
        "--address", address,
        "--working-dir", str(working_dir),
        "--", "dssl", "run", "studies/smoke.yaml",
    ]
    result = _submit_when_agent_ready(submit, env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Study 'smoke' finished: 2 trials, 0 failed." in result.stdout

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("smoke")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    assert len(children) == 2
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert all("probe/shared/y_c" in r.data.metrics for r in children)
