"""The training loop shared by every execution mode (in-process or one Ray Train worker).

The loop does not import Ray Tune or MLflow. After every epoch it calls ``on_epoch_end``
with the epoch's metrics and a :class:`TrainingState` that the caller may save as a checkpoint;
passing that state back as ``resume_from`` continues after the saved epoch.

Epoch numbering is global across the two steps: with 50 step-1 and 30 step-2 epochs, epochs
1-50 train step 1 and epochs 51-80 train step 2. Each epoch reseeds the random state from
(seed, epoch, rank), so a resumed run draws the same batches and samples as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dssl.methods.disentangled_ssl import SharedModel, SpecificModel
from dssl.train.distributed import DataParallelContext

if TYPE_CHECKING:
    from dssl.data.dataset import PairedDataset
    from dssl.study.schema import MethodSpec

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss becomes NaN or infinite."""


@dataclasses.dataclass
class TrainingState:
    """Everything needed to continue training after a completed epoch.

    ``shared`` and ``specific`` are state dicts; ``optimizer`` and ``scheduler`` belong to the
    step that was running. All values are tensors, numbers, strings or nested dicts of those, so
    the state loads with ``torch.load(weights_only=True)``.
    """

    epoch: int
    step: int
    shared: dict[str, Any]
    specific: dict[str, Any] | None
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> TrainingState:
        return cls(**payload)


@dataclasses.dataclass
class TrainedModels:
    shared: SharedModel
    specific: SpecificModel | None


EpochCallback = Callable[[int, dict[str, float], TrainingState], None]


def total_epochs(method: MethodSpec) -> int:
    """Return the number of epochs of a trial over both steps."""
    return method.step1.epochs + (method.step2.epochs if method.step2.enabled else 0)


def _seed_epoch(seed: int, epoch: int, rank: int) -> np.random.Generator:
    torch.manual_seed((seed * 1_000_003 + epoch * 1_009 + rank) % (2**63))
    return np.random.default_rng([seed, epoch, rank])


def _batches(
    x1: torch.Tensor, x2: torch.Tensor, batch_size: int, rng: np.random.Generator
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffle the rows once and slice them into full batches (the remainder is dropped)."""
    order = torch.from_numpy(rng.permutation(x1.shape[0]))
    x1_shuffled = x1.index_select(0, order)
    x2_shuffled = x2.index_select(0, order)
    count = x1.shape[0] // batch_size
    return [
        (x1_shuffled[i * batch_size : (i + 1) * batch_size], x2_shuffled[i * batch_size : (i + 1) * batch_size])
        for i in range(count)
    ]


def _held_out_diagnostics(
    model: SharedModel | SpecificModel,
    x1: torch.Tensor,
    x2: torch.Tensor,
    batch_size: int,
) -> dict[str, float]:
    """Average a model's held-out diagnostics over full batches of the global batch size.

    The InfoNCE lower bound log(B) - L depends on B, so the diagnostics use the global batch
    size of training whatever the worker count.
    """
    model.eval()
    count = max(1, x1.shape[0] // batch_size)
    sums: dict[str, float] = {}
    for i in range(count):
        part = slice(i * batch_size, (i + 1) * batch_size)
        for key, value in model.diagnostics(x1[part], x2[part]).items():
            sums[key] = sums.get(key, 0.0) + value
    model.train()
    return {key: value / count for key, value in sums.items()}


def _check_finite(terms: dict[str, float], step: int, epoch: int) -> None:
    for name, value in terms.items():
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"step {step} epoch {epoch}: training term {name!r} is {value}; "
                "lower the learning rate or the penalty weight"
            )


def _run_epoch(
    model: SharedModel | SpecificModel,
    parameters: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    parallel: DataParallelContext,
) -> dict[str, float]:
    """Train one epoch and return the mean of each loss term over this worker's batches."""
    model.train()
    sums: dict[str, torch.Tensor] = {}
    for x1, x2 in batches:
        terms = model.loss_terms(x1, x2, parallel)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        parallel.average_gradients(parameters)
        optimizer.step()
        for name, value in terms.items():
            detached = value.detach()
            sums[name] = sums[name] + detached if name in sums else detached
    count = max(1, len(batches))
    return {name: float(value) / count for name, value in sums.items()}


def _mean_across_workers(terms: dict[str, float], parallel: DataParallelContext) -> dict[str, float]:
    if not parallel.is_distributed:
        return terms
    names = sorted(terms)
    vector = torch.tensor([terms[name] for name in names], dtype=torch.float64)
    torch.distributed.all_reduce(vector)
    vector /= parallel.world_size
    return dict(zip(names, vector.tolist(), strict=True))


def train_trial(
    dataset: PairedDataset,
    method: MethodSpec,
    seed: int,
    *,
    on_epoch_end: EpochCallback | None = None,
    parallel: DataParallelContext | None = None,
    device: torch.device | str = "cpu",
    diagnostics_samples: int = 4096,
    shard_indices: np.ndarray | None = None,
    resume_from: TrainingState | None = None,
) -> TrainedModels:
    """Train step 1 and, when enabled, step 2 of DisentangledSSL on one data-parallel worker.

    Args:
        dataset: The paired dataset; training uses its train split (or ``shard_indices``).
        method: The resolved method settings for this trial.
        seed: The training seed (model initialisation, batches, sampling).
        on_epoch_end: Called on every worker as ``on_epoch_end(epoch, metrics, state)`` after each
            epoch. Held-out diagnostics are computed on rank 0 only and present there alone.
        parallel: Rank and world size; a single process when omitted.
        device: Torch device to train on.
        diagnostics_samples: Held-out rows used for the per-epoch diagnostics.
        shard_indices: Dataset rows this worker trains on; defaults to the whole train split.
        resume_from: A state passed to ``on_epoch_end`` earlier; training continues after it.

    Returns:
        The trained step-1 model and the step-2 model (``None`` when step 2 is disabled).
    """
    parallel = parallel or DataParallelContext()
    device = torch.device(device)
    if method.batch_size % parallel.world_size != 0:
        raise ValueError(
            f"batch_size {method.batch_size} is not divisible by {parallel.world_size} workers; "
            "choose a batch size that is a multiple of the worker count"
        )
    local_batch = method.batch_size // parallel.world_size

    rows = dataset.train_index if shard_indices is None else shard_indices
    x1 = torch.as_tensor(dataset.x1[rows], device=device)
    x2 = torch.as_tensor(dataset.x2[rows], device=device)
    if x1.shape[0] < local_batch:
        raise ValueError(
            f"this worker has {x1.shape[0]} training rows, fewer than one batch of {local_batch}; "
            "use more samples, fewer workers or a smaller batch_size"
        )
    held_out = dataset.test_index[:diagnostics_samples]
    x1_held_out = torch.as_tensor(dataset.x1[held_out], device=device)
    x2_held_out = torch.as_tensor(dataset.x2[held_out], device=device)
    diagnostics_batch = min(method.batch_size, x1_held_out.shape[0])

    torch.manual_seed(seed)
    shared = SharedModel(dataset.x1.shape[1], dataset.x2.shape[1], method).to(device)
    specific: SpecificModel | None = None
    first_epoch = 1
    if resume_from is not None:
        shared.load_state_dict(resume_from.shared)
        first_epoch = resume_from.epoch + 1

    step1_epochs = method.step1.epochs
    last_epoch = total_epochs(method)
    optimizer, scheduler, parameters = None, None, []

    for epoch in range(first_epoch, last_epoch + 1):
        step = 1 if epoch <= step1_epochs else 2
        if optimizer is None or (step == 2 and specific is None):
            specific, optimizer, scheduler, parameters = _start_step(
                step, shared, specific, dataset, method, device, seed, resume_from, epoch
            )
        model = shared if step == 1 else specific
        assert model is not None

        rng = _seed_epoch(seed, epoch, parallel.rank)
        started = time.perf_counter()
        terms = _run_epoch(model, parameters, optimizer, _batches(x1, x2, local_batch, rng), parallel)
        terms = _mean_across_workers(terms, parallel)
        _check_finite(terms, step, epoch)
        elapsed = time.perf_counter() - started
        learning_rate = optimizer.param_groups[0]["lr"]
        scheduler.step()

        metrics = {f"step{step}/train/{name}": value for name, value in terms.items()}
        metrics.update(
            {
                "epoch": float(epoch),
                "step": float(step),
                f"step{step}/lr": learning_rate,
                f"step{step}/samples_per_second": local_batch * parallel.world_size
                * (x1.shape[0] // local_batch) / max(elapsed, 1e-9),
            }
        )
        if parallel.is_main and x1_held_out.shape[0] > 0:
            diagnostics = _held_out_diagnostics(model, x1_held_out, x2_held_out, diagnostics_batch)
            for name, value in diagnostics.items():
                key = name if name.startswith("mi/") else f"step{step}/val/{name}"
                metrics[key] = value

        if on_epoch_end is not None:
            state = TrainingState(
                epoch=epoch,
                step=step,
                shared=shared.state_dict(),
                specific=None if specific is None else _specific_only(specific),
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
            )
            on_epoch_end(epoch, metrics, state)

    if method.step2.enabled and specific is None:
        # Resuming after the last epoch of step 2 leaves nothing to train, but the caller
        # still needs the step-2 model.
        specific, _, _, _ = _start_step(2, shared, None, dataset, method, device, seed, resume_from, last_epoch)
    return TrainedModels(shared=shared, specific=specific)


def _specific_only(specific: SpecificModel) -> dict[str, Any]:
    """Return the step-2 state without the frozen shared encoders (saved separately)."""
    return {k: v for k, v in specific.state_dict().items() if not k.startswith("shared.")}


# Devices with a fused (single-kernel) Adam in torch 2.13. The default CPU implementation loops
# over the parameter tensors with about ten small operations each. At the reference sizes the
# fused update takes less than half its time (benchmarks/run.py), and the results differ only
# in float rounding.
_FUSED_ADAM_DEVICES = ("cpu", "cuda")


def _make_adam(parameters: list[torch.nn.Parameter], lr: float, device: torch.device) -> torch.optim.Adam:
    """Build Adam over ``parameters``, fused into one kernel per step where the device allows.

    Args:
        parameters: The parameters to train, all on ``device``.
        lr: Initial learning rate.
        device: The device the parameters live on.

    Returns:
        The optimiser.
    """
    if device.type in _FUSED_ADAM_DEVICES and all(p.is_floating_point() for p in parameters):
        return torch.optim.Adam(parameters, lr=lr, fused=True)
    return torch.optim.Adam(parameters, lr=lr)


def _start_step(
    step: int,
    shared: SharedModel,
    specific: SpecificModel | None,
    dataset: PairedDataset,
    method: MethodSpec,
    device: torch.device,
    seed: int,
    resume_from: TrainingState | None,
    epoch: int,
) -> tuple[SpecificModel | None, torch.optim.Optimizer, Any, list[torch.nn.Parameter]]:
    """Build the model part, optimiser and cosine schedule of ``step``, restoring a resumed state."""
    if step == 1:
        parameters = list(shared.parameters())
        settings = method.step1
    else:
        # Step 2 trains on the step-1 model of this trial: same data, same seed.
        torch.manual_seed(seed + 1)
        specific = SpecificModel(shared, dataset.x1.shape[1], dataset.x2.shape[1], method).to(device)
        parameters = specific.trainable_parameters()
        settings = method.step2

    optimizer = _make_adam(parameters, settings.lr, device)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs, eta_min=0.0)

    if resume_from is not None and resume_from.step == step:
        if step == 2 and resume_from.specific is not None:
            assert specific is not None
            specific.load_state_dict(resume_from.specific, strict=False)
        fused = optimizer.param_groups[0].get("fused")
        optimizer.load_state_dict(resume_from.optimizer)
        # load_state_dict restores the saved "fused" flag too; keep the one this device supports.
        for group in optimizer.param_groups:
            group["fused"] = fused
        scheduler.load_state_dict(resume_from.scheduler)
        logger.info("resumed step %d after epoch %d", step, resume_from.epoch)
    return specific, optimizer, scheduler, parameters


def restore_models(state: TrainingState, x1_dim: int, x2_dim: int, method: MethodSpec) -> TrainedModels:
    """Rebuild the trained models from a saved :class:`TrainingState`."""
    shared = SharedModel(x1_dim, x2_dim, method)
    shared.load_state_dict(state.shared)
    specific = None
    if state.specific is not None:
        specific = SpecificModel(shared, x1_dim, x2_dim, method)
        specific.load_state_dict(state.specific, strict=False)
    return TrainedModels(shared=shared, specific=specific)
