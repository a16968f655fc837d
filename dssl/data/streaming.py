"""Streaming the training rows of a Parquet dataset through Ray Data, for data larger than memory.

With ``data.streaming: true`` a trial does not read its training rows into memory. The trial
driver builds a Ray Data dataset over the manifest's files (:func:`training_rows`), the Ray Train
trainer splits it into equal shards, one per worker, and each worker draws its batches from its
shard every epoch (:func:`shard_batches`). Evaluation and the per-epoch diagnostics still read
their rows with :func:`dssl.data.parquet.read_view`.

Example:
    >>> rows = training_rows("data/big/dataset.yaml")  # doctest: +SKIP
    >>> trainer = TorchTrainer(train_worker, datasets={TRAIN_DATASET: rows}, ...)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dssl.data.manifest import DatasetManifest, ModalityColumns, load_manifest

if TYPE_CHECKING:
    import ray.data
    import torch

    from dssl.train.loop import BatchSource

logger = logging.getLogger(__name__)

TRAIN_DATASET = "train"
"""Name of the training dataset passed to the Ray Train trainer and read back with ``get_dataset_shard``."""

SHUFFLE_BUFFER_ROWS = 16384
"""Rows each worker mixes in a buffer before it cuts a batch from them."""


def training_rows(manifest: str | DatasetManifest) -> ray.data.Dataset:
    """Build a lazy Ray Data dataset of the training rows, with columns ``x1`` and ``x2``.

    The files are read in blocks by Ray Data tasks. Each block keeps the rows whose split value is
    listed under ``split.train`` and turns each modality into one float32 ``(n, d)`` column.

    Args:
        manifest: Manifest path or a loaded :class:`DatasetManifest`. It must name a split
            column, because a random split needs every row number, which a stream does not have.

    Returns:
        A Ray Data dataset; nothing is read until a trainer or an iterator consumes it.

    Raises:
        ValueError: If the manifest names no split column.
    """
    import ray.data

    if not isinstance(manifest, DatasetManifest):
        manifest = load_manifest(manifest)
    if manifest.split is None:
        raise ValueError(
            f"the manifest {manifest.source} names no split column, which streaming needs; add a "
            "split column with train and test values, or set data.streaming: false"
        )

    columns = [*_columns(manifest.x1), *_columns(manifest.x2), manifest.split.column]
    train_values = pa.array([str(value) for value in manifest.split.train], type=pa.string())
    paths = [str(path) for path in manifest.file_paths()]

    def select_training_rows(batch: pa.Table) -> dict[str, np.ndarray]:
        split = pc.cast(batch.column(manifest.split.column), pa.string())
        keep = pc.fill_null(pc.is_in(split, value_set=train_values), False)
        kept = batch.filter(keep)
        return {"x1": _features(kept, manifest.x1), "x2": _features(kept, manifest.x2)}

    # Ray 2.60's default Parquet reader lists files in a task that needs one CPU. When the
    # trial's Train workers hold every CPU, that task never starts and training waits forever,
    # so the dataset is built with the previous reader, whose tasks here request no CPU.
    context = ray.data.DataContext.get_current()
    previous = context.use_datasource_v2
    context.use_datasource_v2 = False
    try:
        dataset = ray.data.read_parquet(paths, columns=columns, num_cpus=0)
    finally:
        context.use_datasource_v2 = previous
    return dataset.map_batches(select_training_rows, batch_format="pyarrow", num_cpus=0)


def shard_batches(
    shard: Any, batch_size: int, seed: int, rank: int, device: torch.device
) -> BatchSource:
    """Return the batch source of one worker's Ray Data shard, for ``train_trial``.

    Args:
        shard: The worker's ``ray.data.DataIterator`` (``ray.train.get_dataset_shard``).
        batch_size: Rows per batch on this worker (the global batch size / workers).
        seed: The trial seed. Each epoch and rank mixes rows with its own seed.
        rank: This worker's rank.
        device: Where the batches are placed.

    Returns:
        A callable that takes the epoch number and yields ``(x1, x2)`` float32 batches of exactly
        ``batch_size`` rows. The trainer splits the dataset into equal shards, so every worker
        yields the same number of batches.
    """

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in shard.iter_torch_batches(
            batch_size=batch_size,
            drop_last=True,
            local_shuffle_buffer_size=SHUFFLE_BUFFER_ROWS,
            local_shuffle_seed=int(np.random.default_rng([seed, epoch, rank]).integers(2**31)),
            device=device,
        ):
            yield batch["x1"], batch["x2"]

    return batches


def _columns(spec: ModalityColumns) -> list[str]:
    return list(spec.column_names())


def _features(table: pa.Table, spec: ModalityColumns) -> np.ndarray:
    """Return one modality of a block as a float32 ``(n, d)`` array."""
    if spec.column is not None:
        values = table.column(spec.column).combine_chunks()
        flat = values.flatten().to_numpy(zero_copy_only=False)
        return flat.astype(np.float32, copy=False).reshape(len(values), spec.dim)
    columns = [table.column(name).to_numpy() for name in spec.column_names()]
    return np.stack(columns, axis=1).astype(np.float32, copy=False)
