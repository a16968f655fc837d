"""Safe defaults: YAML and checkpoint loading run no code, local services bind 127.0.0.1, no secret is logged.

The source checks parse every module of ``dssl/`` with :mod:`ast`, and each checker is first run
on a bad example so that a checker that finds nothing cannot pass by accident.
"""

from __future__ import annotations

import ast
import os
import pickle
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from dssl.study.schema import StudyValidationError, load_study
from dssl.study.storage import redact_uri
from dssl.train.checkpoint import STATE_FILE, load_state

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = REPO_ROOT / "dssl"
BIN = Path(sys.executable).parent

SAFE_LOADERS = frozenset({"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"})
UNSAFE_YAML_FUNCTIONS = frozenset({"unsafe_load", "unsafe_load_all", "full_load", "full_load_all"})
UNSAFE_YAML_NAMES = UNSAFE_YAML_FUNCTIONS | {
    "Loader", "CLoader", "FullLoader", "CFullLoader", "UnsafeLoader", "CUnsafeLoader"
}


def _module_aliases(tree: ast.Module, module: str) -> set[str]:
    """Return the names under which ``tree`` imports ``module`` (``import yaml as y`` gives ``y``)."""
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update(alias.asname or alias.name for alias in node.names if alias.name == module)
    return aliases


def _attribute_of(node: ast.expr, aliases: set[str]) -> str | None:
    """Return ``attr`` when ``node`` is ``<alias>.attr`` for one of ``aliases``, else ``None``."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
        return node.attr
    return None


def _safe_loader_classes(tree: ast.Module, aliases: set[str]) -> set[str]:
    """Return the classes of ``tree`` that derive, directly or through each other, from a safe loader."""
    safe: set[str] = set()
    classes = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    changed = True
    while changed:
        changed = False
        for node in classes:
            if node.name in safe:
                continue
            for base in node.bases:
                name = _attribute_of(base, aliases) or (base.id if isinstance(base, ast.Name) else None)
                if name in SAFE_LOADERS or name in safe:
                    safe.add(node.name)
                    changed = True
                    break
    return safe


def _loader_argument(call: ast.Call) -> ast.expr | None:
    for keyword in call.keywords:
        if keyword.arg == "Loader":
            return keyword.value
    return call.args[1] if len(call.args) > 1 else None


def unsafe_yaml_uses(source: str, filename: str) -> tuple[list[str], int]:
    """Return the unsafe YAML uses in ``source`` (``file:line: text``) and the count of YAML loads."""
    tree = ast.parse(source, filename)
    aliases = _module_aliases(tree, "yaml")
    safe_classes = _safe_loader_classes(tree, aliases)
    problems, loads = [], 0
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and node.module == "yaml":
            for alias in node.names:
                if alias.name in UNSAFE_YAML_NAMES or alias.name in {"load", "load_all"}:
                    problems.append(f"{where}: from yaml import {alias.name}")
        if isinstance(node, ast.Attribute) and _attribute_of(node, aliases) in UNSAFE_YAML_NAMES:
            problems.append(f"{where}: yaml.{node.attr}")
        if not isinstance(node, ast.Call):
            continue
        function = _attribute_of(node.func, aliases)
        if function in {"safe_load", "safe_load_all"}:
            loads += 1
        elif function in {"load", "load_all"}:
            loads += 1
            loader = _loader_argument(node)
            name = None
            if loader is not None:
                name = _attribute_of(loader, aliases) or (loader.id if isinstance(loader, ast.Name) else None)
            if name not in SAFE_LOADERS and name not in safe_classes:
                problems.append(f"{where}: yaml.{function} with Loader {ast.unparse(loader) if loader else 'missing'}")
    return problems, loads


def torch_loads_without_weights_only(source: str, filename: str) -> tuple[list[str], int]:
    """Return the ``torch.load`` calls in ``source`` without ``weights_only=True``, and the count of calls."""
    tree = ast.parse(source, filename)
    aliases = _module_aliases(tree, "torch")
    problems, loads = [], 0
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names):
            problems.append(f"{filename}:{node.lineno}: from torch import load")
        if not (isinstance(node, ast.Call) and _attribute_of(node.func, aliases) == "load"):
            continue
        loads += 1
        weights_only = next((k.value for k in node.keywords if k.arg == "weights_only"), None)
        if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
            problems.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return problems, loads


def _package_sources() -> list[tuple[str, str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    assert paths, f"no Python files under {PACKAGE}"
    return [(str(path.relative_to(REPO_ROOT)), path.read_text(encoding="utf-8")) for path in paths]


def test_yaml_checker_flags_unsafe_loads() -> None:
    bad = (
        "import yaml as y\n"
        "from yaml import FullLoader\n"
        "class Mine(y.Loader):\n    pass\n"
        "y.load(text, Loader=y.FullLoader)\n"
        "y.load(text, Mine)\n"
        "y.load(text)\n"
        "y.unsafe_load(text)\n"
        "y.full_load(text)\n"
    )
    problems, loads = unsafe_yaml_uses(bad, "bad.py")

    assert loads == 3
    assert any("from yaml import FullLoader" in problem for problem in problems)
    assert any("Loader y.FullLoader" in problem for problem in problems)
    assert any("Loader Mine" in problem for problem in problems)
    assert any("Loader missing" in problem for problem in problems)
    assert any("yaml.unsafe_load" in problem for problem in problems)
    assert any("yaml.full_load" in problem for problem in problems)
    good = (
        "import yaml\n"
        "class A(yaml.SafeLoader):\n    pass\n"
        "class B(A):\n    pass\n"
        "yaml.load(t, Loader=B)\n"
        "yaml.safe_load(t)\n"
    )
    assert unsafe_yaml_uses(good, "good.py") == ([], 2)


def test_package_yaml_loads_are_safe() -> None:
    problems, loads = [], 0
    for filename, source in _package_sources():
        found, count = unsafe_yaml_uses(source, filename)
        problems += found
        loads += count

    assert problems == []
    # The study loader, the dataset manifest and the report each read YAML.
    assert loads >= 3


def test_study_loader_rejects_python_tag(tmp_path: Path) -> None:
    created = tmp_path / "created-by-yaml"
    study = tmp_path / "tagged.yaml"
    study.write_text(
        f"name: !!python/object/apply:os.mkdir [{str(created)!r}]\n"
        "search: {algorithm: tpe, metric: probe/shared/digit, num_trials: 1}\n"
    )

    with pytest.raises(StudyValidationError) as raised:
        load_study(study)

    message = str(raised.value)
    assert str(study) in message
    assert "line 1" in message
    assert "invalid YAML" in message
    assert "python/object/apply:os.mkdir" in message
    assert not created.exists()


def test_torch_load_checker_flags_unsafe_calls() -> None:
    bad = (
        "import torch as t\n"
        "from torch import load\n"
        "t.load(path)\n"
        "t.load(path, weights_only=False)\n"
        "t.load(path, weights_only=flag)\n"
        "t.load(path, map_location='cpu', weights_only=True)\n"
    )
    problems, loads = torch_loads_without_weights_only(bad, "bad.py")

    assert loads == 4
    assert len(problems) == 4
    assert problems[0] == "bad.py:2: from torch import load"


def test_package_torch_loads_use_weights_only() -> None:
    problems, loads = [], 0
    for filename, source in _package_sources():
        found, count = torch_loads_without_weights_only(source, filename)
        problems += found
        loads += count

    assert problems == []
    # Trial checkpoints (dssl/train/checkpoint.py) and reused step-1 models (dssl/study/step1_cache.py).
    assert loads >= 2


class _MkdirOnUnpickle:
    """Pickles as a call of ``os.mkdir``, which an unrestricted unpickler would run on load."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.path),)


class PlainObject:
    """A class instance with no tensor in it."""

    def __init__(self) -> None:
        self.note = "not a tensor"


@pytest.mark.parametrize("payload", ["code", "instance"])
def test_checkpoint_rejects_pickled_objects(tmp_path: Path, payload: str) -> None:
    created = tmp_path / "created-by-pickle"
    extra = _MkdirOnUnpickle(created) if payload == "code" else PlainObject()
    state = {
        "epoch": 1,
        "phase": "step1",
        "models": {"step1": {"weight": torch.zeros(2), "extra": extra}},
        "optimizer": {},
        "scheduler": {},
    }
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    torch.save(state, folder / STATE_FILE)

    with pytest.raises(pickle.UnpicklingError) as raised:
        load_state(folder)

    assert "Weights only load failed" in str(raised.value)
    assert str(folder / STATE_FILE) in str(raised.value)
    expected_global = "posix.mkdir" if payload == "code" else "PlainObject"
    assert expected_global in str(raised.value)
    assert not created.exists()


def test_checkpoint_loads_plain_state(tmp_path: Path) -> None:
    state = {
        "epoch": 2,
        "phase": "step2",
        "models": {"step1": {"weight": torch.ones(3)}, "step2": {"weight": torch.zeros(1)}},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.001, "params": [0]}]},
        "scheduler": {"last_epoch": 2},
    }
    torch.save(state, tmp_path / STATE_FILE)

    loaded = load_state(tmp_path)

    assert loaded.epoch == 2
    assert loaded.phase == "step2"
    assert torch.equal(loaded.models["step1"]["weight"], torch.ones(3))
    assert loaded.optimizer["param_groups"][0]["lr"] == 0.001


@pytest.mark.slow
def test_ray_dashboard_binds_loopback(local_ray: None) -> None:
    import psutil
    import ray

    url = ray._private.worker.get_dashboard_url()
    host, _, port = url.rpartition(":")
    assert host == "127.0.0.1", url

    listening = [
        connection.laddr
        for connection in psutil.net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == int(port)
    ]
    assert listening, f"nothing listens on the dashboard port {port}"
    assert {address.ip for address in listening} == {"127.0.0.1"}


def _make_recipe(target: str) -> str:
    """Return the recipe of ``target`` in the Makefile, continuation lines joined."""
    lines = (REPO_ROOT / "Makefile").read_text().splitlines()
    start = next(index for index, line in enumerate(lines) if re.match(rf"{re.escape(target)}\s*:", line))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t") and not (recipe and recipe[-1].endswith("\\")):
            break
        recipe.append(line.strip())
    return " ".join(line.rstrip("\\") for line in recipe)


def test_makefile_services_bind_loopback() -> None:
    ui = _make_recipe("ui")
    cluster = _make_recipe("cluster-up")

    assert "mlflow ui" in ui
    assert "--host 127.0.0.1" in ui
    assert "ray start --head" in cluster
    assert "--dashboard-host=127.0.0.1" in cluster
    assert "--node-ip-address=127.0.0.1" in cluster
    assert "0.0.0.0" not in (REPO_ROOT / "Makefile").read_text()


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://key:secret@bucket/path", "s3://bucket/path"),
        ("http://u:p@127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("https://user@tracking.example/mlflow?token=abc", "https://tracking.example/mlflow"),
        ("/local/folder", "/local/folder"),
    ],
)
def test_redact_uri_removes_credentials(uri: str, expected: str) -> None:
    assert redact_uri(uri) == expected


def _files_containing(folder: Path, needles: list[str]) -> list[str]:
    """Return ``path: needle`` for each file under ``folder`` whose bytes contain one of ``needles``."""
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        found += [f"{path}: {needle}" for needle in needles if needle.encode() in data]
    return found


@pytest.mark.slow
def test_secrets_never_logged(tmp_path: Path) -> None:
    """Run a study whose environment contains credentials, and look for them in everything it stored.

    The study runs as a ``dssl run`` subprocess, so its own local Ray starts inside that
    environment and the trial processes see the variables too.
    """
    tokens = {
        "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
        "MLFLOW_TRACKING_PASSWORD": secrets.token_hex(16),
        "MLFLOW_TRACKING_USERNAME": "user-" + secrets.token_hex(8),
    }
    study = {
        "name": "secret-check",
        "data": {"kind": "digits"},
        "method": {"hidden_dim": 32, "embed_dim": 8, "batch_size": 64, "step1": {"epochs": 2}, "step2": {"epochs": 1}},
        "search": {"algorithm": "tpe", "metric": "probe/shared/digit", "num_trials": 1},
        "eval": {"diagnostics_samples": 128, "mi_every_n_epochs": None},
    }
    study_path = tmp_path / "secret-check.yaml"
    study_path.write_text(yaml.safe_dump(study))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "results"
    env = {**os.environ, **tokens, "RAY_USAGE_STATS_ENABLED": "0"}
    for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "DSSL_STORAGE_PATH"):
        env.pop(name, None)

    result = subprocess.run(
        [str(BIN / "dssl"), "run", str(study_path), "--tracking-uri", uri, "--storage-path", str(storage)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert result.returncode == 0, result.stderr[-4000:]
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("secret-check")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    values = list(tokens.values())
    for run in runs:
        for key, value in {**run.data.params, **run.data.tags}.items():
            assert not [token for token in values if token in value], (run.info.run_id, key)
        downloaded = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts" / run.info.run_id)))
        assert _files_containing(downloaded, values) == []
    parent = next(run for run in runs if "mlflow.parentRunId" not in run.data.tags)
    assert (tmp_path / "artifacts" / parent.info.run_id / "study.yaml").is_file()
    # Neither the MLflow store nor the study folder (Tune's state, the Optuna database, the report) contains a token.
    assert [needle for needle in values if needle.encode() in (tmp_path / "mlflow.db").read_bytes()] == []
    assert _files_containing(tmp_path / "mlartifacts", values) == []
    assert _files_containing(storage, values) == []
