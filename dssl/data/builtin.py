"""Built-in datasets written once to a cache in the Parquet format, so every study reads Parquet.

A study of ``data.kind: synthetic`` or ``digits`` builds its dataset from the ``data`` settings.
:func:`materialize` writes that dataset to ``$DSSL_DATA_CACHE`` (default
``~/.cache/dssl/datasets``) under a name derived from the settings, and returns its manifest.
The runner then reads it like any ``kind: parquet`` dataset, so Train workers read their own
shards from disk for built-in and user data alike.

Example:
    >>> manifest = materialize("synthetic", {"n_samples": 2000, "seed": 0})  # doctest: +SKIP
    >>> manifest.name
    'dataset.yaml'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dssl.data.dataset import load_dataset
from dssl.data.parquet import write_paired_dataset

logger = logging.getLogger(__name__)

CACHE_ENV = "DSSL_DATA_CACHE"
"""Environment variable naming the cache folder of built-in datasets."""

_FORMAT_VERSION = 1
_MODALITY_NAMES = {"synthetic": ("x1", "x2"), "digits": ("left", "right")}


def cache_root() -> Path:
    """Return the cache folder: ``$DSSL_DATA_CACHE``, else ``~/.cache/dssl/datasets``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "dssl" / "datasets"


def materialize(kind: str, options: Mapping[str, Any]) -> Path:
    """Write a built-in dataset to the cache unless it is there, and return its manifest path.

    Args:
        kind: ``"synthetic"`` or ``"digits"``.
        options: The builder's keyword arguments, as in a study's ``data`` section without ``kind``.

    Returns:
        The path of the cached ``dataset.yaml``.

    Raises:
        ValueError: If ``kind`` is not a built-in dataset.
    """
    if kind not in _MODALITY_NAMES:
        raise ValueError(f"unknown built-in dataset {kind!r}; expected one of {sorted(_MODALITY_NAMES)}")
    payload = json.dumps({"version": _FORMAT_VERSION, "kind": kind, "options": dict(options)}, sort_keys=True)
    folder = cache_root() / f"{kind}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"
    manifest = folder / "dataset.yaml"
    if manifest.is_file():
        logger.info("%s dataset read from the cache %s", kind, folder)
        return manifest

    # Written beside the final folder and renamed, so a concurrent study never reads half a dataset.
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        dataset = load_dataset(kind, **options)
        write_paired_dataset(dataset, staging, modality_names=_MODALITY_NAMES[kind])
        (staging / "settings.json").write_text(payload + "\n")
        try:
            os.replace(staging, folder)
        except OSError:
            if not manifest.is_file():
                raise
            logger.info("%s dataset was cached by another process at %s", kind, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("%s dataset written to the cache %s", kind, folder)
    return manifest
