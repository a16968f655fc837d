"""Shared fixtures: one local Ray cluster on 127.0.0.1 for the tests that need it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


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
