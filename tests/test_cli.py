"""The ``dssl`` command line: exit statuses and messages for valid and invalid study files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
SMOKE = REPO_ROOT / "studies" / "smoke.yaml"


def _dssl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    return subprocess.run(
        [sys.executable, "-m", "dssl.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _broken_smoke(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load(SMOKE.read_text())
    mutate(data)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_validate_shipped_study(tmp_path: Path) -> None:
    result = _dssl("validate", str(SMOKE), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "valid study 'smoke'" in result.stdout
    assert "2 trials" in result.stdout


def test_validate_misspelt_field_exits_2(tmp_path: Path) -> None:
    path = _broken_smoke(tmp_path, lambda d: d["method"]["step1"].update(betta=d["method"]["step1"].pop("beta")))
    result = _dssl("validate", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "method.step1.betta" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_bad_value_names_allowed(tmp_path: Path) -> None:
    path = _broken_smoke(tmp_path, lambda d: d["search"].update(algorithm="bayes"))
    result = _dssl("validate", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "search.algorithm" in result.stderr
    assert "'bayes'" in result.stderr
    assert "tpe" in result.stderr


def test_run_invalid_study_starts_nothing(tmp_path: Path) -> None:
    path = _broken_smoke(tmp_path, lambda d: d["method"]["step1"].update(beta=-1.0))
    result = _dssl("run", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "method.step1.beta" in result.stderr
    assert "-1.0" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "dssl_results").exists()


def test_missing_study_file_exits_2(tmp_path: Path) -> None:
    result = _dssl("run", str(tmp_path / "absent.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "absent.yaml" in result.stderr


def test_unreachable_tracking_server_exits_2(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _dssl("run", str(SMOKE), "--tracking-uri", f"http://127.0.0.1:{port}", cwd=tmp_path)
    assert result.returncode == 2
    assert f"http://127.0.0.1:{port}" in result.stderr
    assert "refused the connection" in result.stderr
    assert f"--port {port}" in result.stderr
    assert not (tmp_path / "dssl_results").exists()


def test_missing_database_folder_exits_2(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'absent' / 'mlflow.db'}"
    result = _dssl("run", str(SMOKE), "--tracking-uri", uri, cwd=tmp_path)
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert str(tmp_path / "absent") in result.stderr


def test_unwritable_storage_path_exits_2(tmp_path: Path) -> None:
    blocker = tmp_path / "occupied"
    blocker.write_text("a file, not a folder")
    result = _dssl("run", str(SMOKE), "--storage-path", str(blocker), cwd=tmp_path)
    assert result.returncode == 2
    assert str(blocker) in result.stderr
    assert "--storage-path" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()
