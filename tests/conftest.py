"""Shared fixtures: one local Ray cluster on 127.0.0.1 for the tests that need it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Cache built-in datasets in a session folder instead of the user's ~/.cache."""
    from dssl.data.builtin import CACHE_ENV

    folder = tmp_path_factory.mktemp("data-cache")
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """Start a fresh two-CPU local Ray with its dashboard, and stop it after the session.

    The dashboard must run: without it, Ray Train leaks the placement group of a stopped trial.
    """
    import ray

    from dssl.study.runner import ensure_ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        ensure_ray(num_cpus=2)
    yield
    ray.shutdown()


DIGITS_MANIFEST = REPO_ROOT / "data" / "digits-two-view" / "dataset.yaml"


@pytest.fixture(scope="session")
def digits_manifest() -> Path:
    """Write the two-view digits once, where studies/digits-two-view.yaml reads them (``make data``)."""
    if not DIGITS_MANIFEST.is_file():
        from dssl.cli import main

        assert main(["data", "digits", "--out", str(DIGITS_MANIFEST.parent), "--overwrite"]) == 0
    return DIGITS_MANIFEST


@pytest.fixture()
def in_repo_root(digits_manifest: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from the repository root, the folder that shipped studies resolve data paths against."""
    monkeypatch.chdir(REPO_ROOT)
    return REPO_ROOT
