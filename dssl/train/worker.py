"""The Ray Train worker function of multi-worker trials.

Each worker reads its own shard of the training split, trains with gradients averaged across
workers (gloo on CPU, nccl on GPU) and reports every epoch through ``ray.train.report``. Rank 0
attaches the checkpoint and is the only rank whose metrics include held-out diagnostics.
"""

from __future__ import annotations

import logging
import math
import tempfile
from typing import Any

import ray
import ray.train
import torch
from ray.train.torch import get_device

from dssl.data.dataset import PairedDataset, shard_rows
from dssl.data.parquet import read_split, read_view
from dssl.data.streaming import TRAIN_DATASET, shard_batches
from dssl.eval.mi_diagnostics import MIDiagnosticsSettings
from dssl.study.schema import MethodSpec
from dssl.train.checkpoint import load_state, save_state
from dssl.train.distributed import DataParallelContext
from dssl.train.loop import CHECKPOINT_SCORE, NON_FINITE_LOSS_KEY, NonFiniteLossError, TrainingState, train_trial

logger = logging.getLogger(__name__)


def _read_worker_view(view: dict[str, Any], parallel: DataParallelContext, seed: int) -> PairedDataset:
    """Read this worker's shard of a Parquet dataset and the first held-out rows, nothing else.

    The shard is the one :meth:`PairedDataset.shard_indices` gives for the whole dataset, so
    training is the same as when every worker gets the whole dataset from the object store.
    """
    train_index, test_index = read_split(view["manifest"], test_fraction=view["test_fraction"], seed=view["seed"])
    shard = shard_rows(train_index, parallel.rank, parallel.world_size, seed)
    if view.get("streaming"):
        # The training rows come from Ray Data; only the MI diagnostics' sample is read here.
        shard = shard[: int(view["sample_rows"])]
    held_out = test_index[: int(view["held_out_rows"])]
    dataset = read_view(view["manifest"], shard, held_out)
    logger.info(
        "worker %d read %d training and %d held-out rows of %s",
        parallel.rank,
        shard.size,
        held_out.size,
        view["manifest"],
    )
    return dataset


def train_worker(config: dict[str, Any]) -> dict[str, str] | None:
    """Train one trial on this Ray Train worker.

    ``config`` keys: ``dataset_ref`` (an ObjectRef of a PairedDataset) or ``data_view`` (a
    Parquet manifest and split settings, from which the worker reads only its rows), ``method`` (a dict of
    :class:`MethodSpec`), ``seed``, ``diagnostics_samples``, ``threads`` and ``pretrained_ref``
    (an ObjectRef of step-1 states to load instead of training step 1, or None),
    ``mi_diagnostics`` (the fields of :class:`MIDiagnosticsSettings`, or None) and
    ``search_metric`` (the metric that ranks checkpoints).

    Returns:
        ``{"non_finite_loss": message}`` when a training term became NaN or infinite, else None.
    """
    context = ray.train.get_context()
    parallel = DataParallelContext(rank=context.get_world_rank(), world_size=context.get_world_size())
    torch.set_num_threads(max(1, int(config["threads"])))
    device = get_device() if torch.cuda.is_available() else torch.device("cpu")

    method = MethodSpec.model_validate(config["method"])
    seed = int(config["seed"])
    train_batches = None
    if "data_view" in config:
        dataset = _read_worker_view(config["data_view"], parallel, seed)
        shard = dataset.train_index
        if config["data_view"].get("streaming"):
            train_batches = shard_batches(
                ray.train.get_dataset_shard(TRAIN_DATASET),
                method.batch_size // parallel.world_size,
                seed,
                parallel.rank,
                device,
            )
    else:
        dataset = ray.get(config["dataset_ref"])
        shard = dataset.shard_indices(parallel.rank, parallel.world_size, seed)

    resume_from = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume_from = load_state(folder)
        logger.info("worker %d resumes after epoch %d", parallel.rank, resume_from.epoch)

    search_metric = config.get("search_metric")

    def report(epoch: int, metrics: dict[str, float], state: TrainingState) -> None:
        # Ray Train ranks the checkpoints by this key (dssl.study.trial.checkpoint_score); NaN
        # ranks last, and the latest checkpoint is kept whatever its score.
        score = metrics.get(search_metric, math.nan) if search_metric else math.nan
        scored = {**metrics, CHECKPOINT_SCORE: float(score)}
        if not parallel.is_main:
            ray.train.report(scored, checkpoint=None)
            return
        with tempfile.TemporaryDirectory(prefix="dssl-ckpt-") as folder:
            save_state(state, folder)
            ray.train.report(scored, checkpoint=ray.train.Checkpoint.from_directory(folder))

    pretrained = None if config.get("pretrained_ref") is None else ray.get(config["pretrained_ref"])
    mi_settings = config.get("mi_diagnostics")
    try:
        train_trial(
            dataset,
            method,
            seed,
            on_epoch_end=report,
            parallel=parallel,
            device=device,
            diagnostics_samples=int(config["diagnostics_samples"]),
            shard_indices=shard,
            resume_from=resume_from,
            pretrained=pretrained,
            mi_diagnostics=None if mi_settings is None else MIDiagnosticsSettings(**mi_settings),
            train_batches=train_batches,
        )
    except NonFiniteLossError as error:
        # The epoch's loss terms are averaged over the workers before the check, so every rank
        # raises at the same epoch. Returning the error ends the group without a Ray Train
        # restart, which would diverge the same way; the trial driver raises it again from
        # rank 0's return value (the trainer's result contains the last checkpoint's metrics only).
        logger.warning("worker %d: %s", parallel.rank, error)
        return {NON_FINITE_LOSS_KEY: str(error)}
    return None
