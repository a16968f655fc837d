"""Study storage paths: resolving them, redacting them, and the check that every node can reach them.

No test here starts Ray. ``check_reachable_from_all_nodes`` receives the node count and whether
the autoscaler can add nodes through ``nodes``, and the ``dssl run`` case fails before Ray starts.
``tests/test_autoscaling_cluster.py`` runs the same check against a real autoscaling cluster.

Remote storage is only resolved, never written, because no object store or HDFS runs on the test
machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dssl.study.storage import (
    NETWORK_FILE_SYSTEMS,
    SHARED_STORAGE_ENV,
    STORAGE_ENV,
    StorageError,
    StudyStorage,
    check_reachable_from_all_nodes,
    file_system_type,
    redact_uri,
    resolve_storage,
    shared_storage_declared,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SMOKE = REPO_ROOT / "studies" / "smoke.yaml"

# The region is given, so pyarrow need not look it up, and the endpoint is a closed port on this
# machine, so no request can leave it.
S3_URI = "s3://bucket/dssl?region=us-east-1&endpoint_override=127.0.0.1:9&scheme=http"
TRACKING_SERVER = "http://127.0.0.1:5000"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove the storage variables that a developer's shell or a cluster head may export."""
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    monkeypatch.delenv(SHARED_STORAGE_ENV, raising=False)


@pytest.fixture()
def local_disk_folder(tmp_path: Path) -> Path:
    """Return a folder on this machine's own disk; skip where the temporary folder is on NFS."""
    fs_type = file_system_type(tmp_path)
    if fs_type in NETWORK_FILE_SYSTEMS:
        pytest.skip(f"the temporary folder {tmp_path} is on the network file system {fs_type}")
    return tmp_path


# --- resolve_storage ------------------------------------------------------------------------


def test_default_storage_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = resolve_storage()
    assert storage.is_local
    assert Path(storage.uri).is_absolute()
    assert storage.uri == str(tmp_path.resolve() / "dssl_results")


def test_storage_env_used_without_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STORAGE_ENV, str(tmp_path / "from-env"))
    assert resolve_storage() == StudyStorage(str(tmp_path.resolve() / "from-env"), is_local=True)
    assert resolve_storage(None).uri == str(tmp_path.resolve() / "from-env")


def test_value_overrides_storage_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STORAGE_ENV, str(tmp_path / "from-env"))
    storage = resolve_storage(tmp_path / "given")
    assert storage.uri == str(tmp_path.resolve() / "given")


def test_relative_path_resolved_against_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = resolve_storage("runs/../results")
    assert storage.uri == str(tmp_path.resolve() / "results")


def test_home_folder_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    storage = resolve_storage("~/results")
    assert storage.is_local
    assert storage.uri == str(tmp_path.resolve() / "results")
    assert "~" not in storage.uri


def test_file_uri_is_local_folder(tmp_path: Path) -> None:
    storage = resolve_storage((tmp_path / "x").as_uri())
    assert storage == StudyStorage(str(tmp_path.resolve() / "x"), is_local=True)

    # The three-slash form with an absolute path, as users type it.
    assert resolve_storage("file:///tmp/x") == StudyStorage("/tmp/x", is_local=True)


def test_file_uri_scheme_case_ignored() -> None:
    assert resolve_storage("FILE:///tmp/x") == StudyStorage("/tmp/x", is_local=True)


def test_unknown_scheme_raises_storage_error() -> None:
    with pytest.raises(StorageError) as caught:
        resolve_storage("nosuchscheme://bucket/x")
    message = str(caught.value)
    assert "'nosuchscheme://bucket/x'" in message
    assert "s3://" in message
    assert "gs://" in message
    assert "--storage-path" in message
    assert STORAGE_ENV in message


def test_storage_error_is_value_error() -> None:
    # The CLI turns ValueError subclasses from the runner into exit status 2.
    assert issubclass(StorageError, ValueError)


def test_storage_error_hides_credentials() -> None:
    with pytest.raises(StorageError) as caught:
        resolve_storage("nosuchscheme://KEYID:s3cr3t@bucket/x?token=t0ken")
    message = str(caught.value)
    assert "nosuchscheme://bucket/x" in message
    assert "s3cr3t" not in message
    assert "KEYID" not in message
    assert "t0ken" not in message


def test_invalid_s3_option_raises_storage_error() -> None:
    with pytest.raises(StorageError) as caught:
        resolve_storage("s3://bucket/dssl?region=us-east-1&scheme=http&no_such_option=1")
    assert "'s3://bucket/dssl'" in str(caught.value)
    assert "no_such_option" in str(caught.value)


def test_s3_uri_kept_as_uri() -> None:
    storage = resolve_storage(S3_URI)
    assert storage == StudyStorage(S3_URI, is_local=False)
    assert storage.describe() == "s3://bucket/dssl"


def test_trailing_slash_removed_from_uri() -> None:
    # pyarrow's in-memory file system opens without credentials or a network.
    storage = resolve_storage("mock:///dssl/")
    assert storage == StudyStorage("mock:///dssl", is_local=False)
    assert storage.join("study") == "mock:///dssl/study"


def test_uri_join_keeps_query_last() -> None:
    storage = resolve_storage(S3_URI)
    joined = storage.join("study-1", "trial")
    assert joined == "s3://bucket/dssl/study-1/trial?region=us-east-1&endpoint_override=127.0.0.1:9&scheme=http"

    # The joined URI must open as the same file system, at the joined path.
    filesystem, path = StudyStorage(joined, is_local=False).filesystem()
    assert type(filesystem).__name__ == "S3FileSystem"
    assert path == "bucket/dssl/study-1/trial"


def test_local_join_and_filesystem(tmp_path: Path) -> None:
    storage = resolve_storage(tmp_path)
    assert storage.join("a", "b") == str(tmp_path.resolve() / "a" / "b")
    filesystem, path = storage.filesystem()
    assert type(filesystem).__name__ == "LocalFileSystem"
    assert path == str(tmp_path.resolve())


# --- redact_uri -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("http://user:password@mlflow.example:5000/api?token=abc", "http://mlflow.example:5000/api"),
        ("https://user@mlflow.example/", "https://mlflow.example/"),
        ("s3://AKIDEXAMPLE:secret@bucket/dssl?session_token=xyz", "s3://bucket/dssl"),
        ("http://u:p@[::1]:5000/", "http://[::1]:5000/"),
        ("gs://Bucket-Name/dssl", "gs://Bucket-Name/dssl"),
        # Four slashes: an absolute SQLite path, which must stay absolute.
        ("sqlite:////data/mlflow.db", "sqlite:////data/mlflow.db"),
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
        ("file:///tmp/x", "file:///tmp/x"),
        ("/plain/local/folder", "/plain/local/folder"),
    ],
)
def test_redact_uri(uri: str, expected: str) -> None:
    assert redact_uri(uri) == expected


def test_redact_uri_removes_password_and_query() -> None:
    redacted = redact_uri("http://alice:hunter2@127.0.0.1:5000/path?api_key=k3y#frag")
    assert "alice" not in redacted
    assert "hunter2" not in redacted
    assert "k3y" not in redacted
    assert redacted == "http://127.0.0.1:5000/path"


# --- file_system_type and shared_storage_declared -------------------------------------------


def test_file_system_type_of_proc() -> None:
    assert file_system_type("/proc/self") == "proc"


def test_file_system_type_of_missing_path(tmp_path: Path) -> None:
    # A path that does not exist yet belongs to the mount that would hold it.
    assert file_system_type(tmp_path / "not" / "created") == file_system_type(tmp_path)
    assert file_system_type(tmp_path) is not None


@pytest.mark.parametrize(
    ("value", "declared"),
    [("1", True), ("true", True), ("YES", True), (" 1 ", True), ("0", False), ("", False), ("no", False)],
)
def test_shared_storage_env_values(value: str, declared: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SHARED_STORAGE_ENV, value)
    assert shared_storage_declared() is declared
    assert shared_storage_declared(True) is True


# --- check_reachable_from_all_nodes ---------------------------------------------------------


def test_single_node_accepts_local_paths(local_disk_folder: Path) -> None:
    storage = resolve_storage(local_disk_folder / "results")
    sqlite = f"sqlite:///{local_disk_folder / 'mlflow.db'}"
    check_reachable_from_all_nodes(storage, sqlite, nodes=(1, False))


def test_zero_nodes_accept_local_paths(local_disk_folder: Path) -> None:
    storage = resolve_storage(local_disk_folder / "results")
    check_reachable_from_all_nodes(storage, f"sqlite:///{local_disk_folder / 'mlflow.db'}", nodes=(0, False))


def test_three_nodes_reject_local_folder(local_disk_folder: Path) -> None:
    storage = resolve_storage(local_disk_folder / "results")
    with pytest.raises(StorageError) as caught:
        check_reachable_from_all_nodes(storage, TRACKING_SERVER, nodes=(3, False))
    message = str(caught.value)
    assert storage.uri in message
    assert "3 nodes" in message
    assert "--shared-storage" in message
    assert SHARED_STORAGE_ENV in message
    assert f"file system {file_system_type(storage.uri)}" in message
    assert "--storage-path s3://" in message
    # The tracking server is fine, so the message must not blame MLflow.
    assert "MLflow" not in message
    assert "autoscaler" not in message


def test_autoscaler_rejects_local_folder(local_disk_folder: Path) -> None:
    storage = resolve_storage(local_disk_folder / "results")
    with pytest.raises(StorageError) as caught:
        check_reachable_from_all_nodes(storage, TRACKING_SERVER, nodes=(1, True))
    message = str(caught.value)
    assert storage.uri in message
    assert "1 node " in message
    assert "autoscaler can add worker nodes" in message
    assert "--shared-storage" in message


def test_several_nodes_reject_sqlite() -> None:
    storage = resolve_storage(S3_URI)
    sqlite = "sqlite:////data/mlflow.db"
    for nodes in ((3, False), (1, True)):
        with pytest.raises(StorageError) as caught:
            check_reachable_from_all_nodes(storage, sqlite, nodes=nodes)
        message = str(caught.value)
        assert sqlite in message
        assert "tracking server" in message
        assert "--tracking-uri" in message
        # The storage path is a URI, so only the SQLite store is named as a problem.
        assert "storage path" not in message


def test_both_problems_in_one_message(local_disk_folder: Path) -> None:
    storage = resolve_storage(local_disk_folder / "results")
    sqlite = f"sqlite:///{local_disk_folder / 'mlflow.db'}"
    with pytest.raises(StorageError) as caught:
        check_reachable_from_all_nodes(storage, sqlite, nodes=(2, True))
    message = str(caught.value)
    assert "2 nodes and its autoscaler can add worker nodes" in message
    assert storage.uri in message
    assert sqlite in message
    assert message.count("--shared-storage") == 1


def test_shared_storage_flag_accepts_local_paths(local_disk_folder: Path) -> None:
    storage = resolve_storage(local_disk_folder / "results")
    sqlite = f"sqlite:///{local_disk_folder / 'mlflow.db'}"
    check_reachable_from_all_nodes(storage, sqlite, shared_storage=True, nodes=(3, True))


def test_shared_storage_env_accepts_local_paths(local_disk_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = resolve_storage(local_disk_folder / "results")
    sqlite = f"sqlite:///{local_disk_folder / 'mlflow.db'}"
    monkeypatch.setenv(SHARED_STORAGE_ENV, "1")
    check_reachable_from_all_nodes(storage, sqlite, nodes=(3, True))

    monkeypatch.setenv(SHARED_STORAGE_ENV, "0")
    with pytest.raises(StorageError):
        check_reachable_from_all_nodes(storage, sqlite, nodes=(3, True))


def test_uri_storage_and_server_accepted() -> None:
    storage = resolve_storage(S3_URI)
    for nodes in ((3, False), (1, True), (8, True)):
        check_reachable_from_all_nodes(storage, TRACKING_SERVER, nodes=nodes)
        check_reachable_from_all_nodes(storage, "https://mlflow.example", nodes=nodes)


# --- dssl run with an unusable storage URI --------------------------------------------------


def test_run_with_unknown_scheme_exits_2(tmp_path: Path) -> None:
    study = yaml.safe_load(SMOKE.read_text())
    study_file = tmp_path / "smoke.yaml"
    study_file.write_text(yaml.safe_dump(study))
    database = tmp_path / "mlflow.db"
    env = {key: value for key, value in os.environ.items() if key not in {STORAGE_ENV, "RAY_ADDRESS"}}
    env["MLFLOW_TRACKING_URI"] = ""

    result = subprocess.run(
        [
            sys.executable, "-m", "dssl.cli", "run", str(study_file),
            "--tracking-uri", f"sqlite:///{database}",
            "--storage-path", "nosuchscheme://x",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 2, result.stderr[-3000:]
    assert "'nosuchscheme://x'" in result.stderr
    assert "s3://" in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing started: no MLflow database, no local results folder and no Ray.
    assert not database.exists()
    assert not (tmp_path / "dssl_results").exists()
    assert not (tmp_path / "mlartifacts").exists()
    assert "Started a local Ray instance" not in result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smoke.yaml"]
