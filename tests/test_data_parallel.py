"""Data-parallel training equals single-process training.

One process at global batch B and two Ray Train workers (gloo) at B/2 each must give the same
loss and the same averaged gradients, because InfoNCE negatives are gathered across workers with
gradients. The step-1 model uses the deterministic head here, since a vMF head draws different
random samples in one process than in two.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from ray import cloudpickle

from dssl.study.schema import MethodSpec
from dssl.train.distributed import DataParallelContext

pytestmark = pytest.mark.slow

GLOBAL_BATCH = 32
DIM = 12


def _method() -> MethodSpec:
    return MethodSpec.model_validate(
        {
            "hidden_dim": 24,
            "embed_dim": 8,
            "batch_size": GLOBAL_BATCH,
            "init_std": 0.3,
            "step1": {"beta": 0.5, "penalty": "cosine", "head": "deterministic", "augment": False},
        }
    )


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    x1 = torch.randn(GLOBAL_BATCH, DIM, generator=generator)
    x2 = x1 @ torch.randn(DIM, DIM, generator=generator) + 0.3 * torch.randn(GLOBAL_BATCH, DIM, generator=generator)
    return x1, x2


def _loss_and_gradients(rank: int, world_size: int, parallel: DataParallelContext) -> dict[str, object]:
    """Compute the step-1 loss on this rank's rows and the averaged gradients."""
    from dssl.methods.disentangled_ssl import SharedModel

    torch.manual_seed(0)
    model = SharedModel(DIM, DIM, _method())
    x1, x2 = _global_batch()
    rows = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)

    terms = model.loss_terms(x1[rows], x2[rows], parallel)
    terms["loss"].backward()
    parameters = list(model.parameters())
    parallel.average_gradients(parameters)
    gradients = torch.cat([p.grad.reshape(-1) for p in parameters])
    overlap, overlap_gradients = _overlap_and_gradients(rank, world_size, parallel)
    return {
        "loss": parallel.mean_scalar(float(terms["loss"])),
        "infonce": parallel.mean_scalar(float(terms["infonce"])),
        "gradients": gradients.tolist(),
        "overlap": parallel.mean_scalar(overlap),
        "overlap_gradients": overlap_gradients.tolist(),
    }


def _overlap_and_gradients(rank: int, world_size: int, parallel: DataParallelContext) -> tuple[float, torch.Tensor]:
    """Compute the step-2 overlap penalty of linear codes on this rank's rows of both views."""
    from dssl.methods.disentangled_ssl import _overlap_penalty

    torch.manual_seed(1)
    specific = torch.nn.Linear(DIM, 6)
    shared = torch.nn.Linear(DIM, 5)
    x1, x2 = _global_batch()
    local = GLOBAL_BATCH // world_size
    rows = slice(rank * local, (rank + 1) * local)
    views = torch.cat([x1[rows], x2[rows]])  # rows [:local] play view x', rows [local:] view v

    codes = [specific(views), shared(views), specific(views.flip(1)), shared(views.flip(1))]
    penalty = _overlap_penalty(*codes, local, parallel)
    penalty.backward()
    parameters = [*specific.parameters(), *shared.parameters()]
    parallel.average_gradients(parameters)
    return float(penalty), torch.cat([p.grad.reshape(-1) for p in parameters])


def _worker(config: dict) -> None:
    import tempfile

    import ray.train

    context = ray.train.get_context()
    parallel = DataParallelContext.from_process_group()
    assert parallel.world_size == context.get_world_size() == 2
    metrics = _loss_and_gradients(parallel.rank, parallel.world_size, parallel)
    # Train V2 returns the metrics of the last checkpoint in Result.metrics, so rank 0 attaches
    # an empty one.
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = ray.train.Checkpoint.from_directory(folder) if parallel.is_main else None
        ray.train.report(metrics, checkpoint=checkpoint)


def test_two_workers_match_one_process(local_ray: None, tmp_path) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # Ray workers cannot import this test module by name, so Ray's cloudpickle ships it by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    single = _loss_and_gradients(0, 1, DataParallelContext())

    trainer = TorchTrainer(
        _worker,
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="equivalence", storage_path=str(tmp_path)),
    )
    result = trainer.fit()
    distributed = result.metrics

    assert distributed["loss"] == pytest.approx(single["loss"], rel=1e-6, abs=1e-6)
    assert distributed["infonce"] == pytest.approx(single["infonce"], rel=1e-6, abs=1e-6)
    single_gradients = np.asarray(single["gradients"])
    distributed_gradients = np.asarray(distributed["gradients"])
    assert np.abs(single_gradients).max() > 1e-4  # the comparison is not between zeros
    np.testing.assert_allclose(distributed_gradients, single_gradients, rtol=1e-5, atol=1e-7)

    # The step-2 overlap penalty is a norm over the whole batch, so it is gathered too.
    assert distributed["overlap"] == pytest.approx(single["overlap"], rel=1e-6)
    np.testing.assert_allclose(
        np.asarray(distributed["overlap_gradients"]), np.asarray(single["overlap_gradients"]), rtol=1e-5, atol=1e-7
    )


def test_local_only_negatives_differ() -> None:
    """Without gathering, two half batches give a different loss: the test above can fail."""
    from dssl.methods.disentangled_ssl import SharedModel

    torch.manual_seed(0)
    model = SharedModel(DIM, DIM, _method())
    x1, x2 = _global_batch()
    half = GLOBAL_BATCH // 2
    full = float(model.loss_terms(x1, x2)["infonce"])
    halves = [float(model.loss_terms(x1[i : i + half], x2[i : i + half])["infonce"]) for i in (0, half)]
    assert abs(np.mean(halves) - full) > 1e-3
