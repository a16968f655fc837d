"""The training loop shared by every execution mode (in-process or one Ray Train worker).

The loop does not import Ray Tune or MLflow. After every epoch it calls ``on_epoch_end``
with the epoch's metrics and a :class:`TrainingState` that the caller may save as a checkpoint;
passing that state back as ``resume_from`` continues after the saved epoch.

A method is a list of phases (:mod:`dssl.methods.base`). Epoch numbering is global across the
phases: with 50 step-1 and 30 step-2 epochs, epochs 1-50 train step 1 and epochs 51-80 train
step 2. Each epoch reseeds the random state from (seed, epoch, rank), so a resumed run draws the
same batches and samples as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dssl.eval.mi_diagnostics import (
    DiagnosticRows,
    MIDiagnosticsSettings,
    epoch_mi_diagnostics,
    select_diagnostic_rows,
)
from dssl.methods.base import Phase, PhaseModel
from dssl.methods.registry import build_phases, describe_phases
from dssl.train.distributed import DataParallelContext

if TYPE_CHECKING:
    from dssl.data.dataset import PairedDataset
    from dssl.study.schema import MethodSpec

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss becomes NaN or infinite."""


NON_FINITE_LOSS_KEY = "non_finite_loss"
"""The key by which a Ray Train worker returns a :class:`NonFiniteLossError` to the trial driver."""

CHECKPOINT_SCORE = "checkpoint_score"
"""The report key by which Tune and Ray Train rank a trial's checkpoints (the search metric, or NaN)."""


@dataclasses.dataclass
class TrainingState:
    """Everything needed to continue training after a completed epoch.

    ``models`` maps each phase started so far to its :meth:`PhaseModel.checkpoint_state`;
    ``optimizer`` and ``scheduler`` belong to ``phase``, the phase that was running. All values
    are tensors, numbers, strings or nested dicts of those, so the state loads with
    ``torch.load(weights_only=True)``.
    """

    epoch: int
    phase: str
    models: dict[str, dict[str, Any]]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> TrainingState:
        return cls(**payload)


@dataclasses.dataclass
class TrainedModels:
    """The trained model of every phase, in training order."""

    phases: dict[str, PhaseModel]

    def representations(self, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return every phase's evaluation embeddings of clean inputs (see :mod:`dssl.methods.base`)."""
        merged: dict[str, torch.Tensor] = {}
        for model in self.phases.values():
            model.eval()
            merged.update(model.representations(x1, x2))
        return merged

    @property
    def device(self) -> torch.device:
        first = next(iter(self.phases.values()))
        return next(first.parameters()).device


EpochCallback = Callable[[int, dict[str, float], TrainingState], None]
BatchSource = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]
"""Returns the ``(x1, x2)`` batches of one epoch, given the epoch number (see ``train_trial``)."""


def total_epochs(method: MethodSpec) -> int:
    """Return the number of epochs of a trial over all phases of its method."""
    return sum(phase.epochs for phase in describe_phases(method))


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
    model: PhaseModel,
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


def _check_finite(terms: dict[str, float], phase: str, epoch: int) -> None:
    for name, value in terms.items():
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"{phase} epoch {epoch}: training term {name!r} is {value}; "
                "lower the learning rate or the penalty weight"
            )


def _run_epoch(
    model: PhaseModel,
    parameters: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    parallel: DataParallelContext,
) -> tuple[dict[str, float], int]:
    """Train one epoch; return the mean of each loss term over this worker's batches and their count."""
    model.train()
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for x1, x2 in batches:
        terms = model.loss_terms(x1, x2, parallel)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        parallel.average_gradients(parameters)
        optimizer.step()
        for name, value in terms.items():
            detached = value.detach()
            sums[name] = sums[name] + detached if name in sums else detached
        count += 1
    return {name: float(value) / max(1, count) for name, value in sums.items()}, count


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
    pretrained: dict[str, dict[str, Any]] | None = None,
    mi_diagnostics: MIDiagnosticsSettings | None = None,
    train_batches: BatchSource | None = None,
) -> TrainedModels:
    """Train every phase of the trial's method on one data-parallel worker.

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
        pretrained: Checkpoint states of leading phases trained before, keyed by phase name
            (for example ``{"step1": ...}``). Those phases are loaded instead of trained, and
            their epochs produce no metrics.
        mi_diagnostics: When and on which rows rank 0 fits the MI estimators and regresses the
            true latents after an epoch (:mod:`dssl.eval.mi_diagnostics`); ``None`` skips them.
        train_batches: Where an epoch's batches come from when the training rows do not fit in
            memory: called as ``train_batches(epoch)``, it returns this worker's ``(x1, x2)``
            batches of ``batch_size / world_size`` rows on ``device``. Every worker must yield
            the same number of batches. The rows of ``dataset``'s train split (or
            ``shard_indices``) then only feed the MI diagnostics' training sample.

    Returns:
        The trained model of every phase.

    Raises:
        ValueError: If the batch does not split over the workers, a worker has less than one
            batch of rows, or ``pretrained`` names a phase that does not lead the method.
        NonFiniteLossError: If a training term becomes NaN or infinite.
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

    phases = build_phases(method, dataset.x1.shape[1], dataset.x2.shape[1])
    pretrained = dict(pretrained or {})
    _check_pretrained(phases, pretrained)
    first_epoch = 1 if resume_from is None else resume_from.epoch + 1
    mi_rows = _mi_diagnostic_rows(dataset, x1, x2, mi_diagnostics, seed, parallel)
    models: dict[str, PhaseModel] = {}
    offset = 0

    for index, phase in enumerate(phases):
        phase_epochs = range(max(first_epoch, offset + 1), offset + phase.epochs + 1)
        offset += phase.epochs
        model = _build_phase_model(phase, index, models, seed, device)

        # A pretrained phase is complete, so it wins over a checkpoint taken while that phase was
        # still training. A trial restarted after it published its own step-1 model finds that
        # model, while its last checkpoint may predate the end of step 1.
        saved = pretrained.get(phase.name)
        if saved is None and resume_from is not None and phase.name in resume_from.models:
            saved = resume_from.models[phase.name]
        if saved is not None:
            model.load_checkpoint_state(saved)
        if phase.name in pretrained or len(phase_epochs) == 0:
            models[phase.name] = model
            continue

        parameters = model.trainable_parameters()
        optimizer = _make_adam(parameters, phase.lr, device)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=phase.epochs, eta_min=0.0)
        if resume_from is not None and resume_from.phase == phase.name:
            _restore_optimizer(optimizer, scheduler, resume_from)

        for epoch in phase_epochs:
            started = time.perf_counter()
            if train_batches is None:
                batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = _batches(
                    x1, x2, local_batch, _seed_epoch(seed, epoch, parallel.rank)
                )
            else:
                batches = train_batches(epoch)
            terms, batch_count = _run_epoch(model, parameters, optimizer, batches, parallel)
            terms = _mean_across_workers(terms, parallel)
            _check_finite(terms, phase.name, epoch)
            elapsed = time.perf_counter() - started
            learning_rate = optimizer.param_groups[0]["lr"]
            scheduler.step()

            metrics = {f"{phase.name}/train/{name}": value for name, value in terms.items()}
            metrics.update(
                {
                    "epoch": float(epoch),
                    "step": float(index + 1),
                    f"{phase.name}/lr": learning_rate,
                    f"{phase.name}/samples_per_second": local_batch * parallel.world_size
                    * batch_count / max(elapsed, 1e-9),
                }
            )
            if parallel.is_main and x1_held_out.shape[0] > 0:
                diagnostics = _held_out_diagnostics(model, x1_held_out, x2_held_out, diagnostics_batch)
                metrics.update({phase.metric_key(name): value for name, value in diagnostics.items()})
            if mi_rows is not None and mi_diagnostics is not None and mi_diagnostics.selects(epoch, offset):
                trained_so_far = [*models.values(), model]
                metrics.update(epoch_mi_diagnostics(trained_so_far, mi_rows, mi_diagnostics, seed=seed, epoch=epoch))

            if on_epoch_end is not None:
                states = {name: trained.checkpoint_state() for name, trained in models.items()}
                states[phase.name] = model.checkpoint_state()
                state = TrainingState(
                    epoch=epoch,
                    phase=phase.name,
                    models=states,
                    optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(),
                )
                on_epoch_end(epoch, metrics, state)
        models[phase.name] = model

    return TrainedModels(phases=models)


def _mi_diagnostic_rows(
    dataset: PairedDataset,
    x1: torch.Tensor,
    x2: torch.Tensor,
    settings: MIDiagnosticsSettings | None,
    seed: int,
    parallel: DataParallelContext,
) -> DiagnosticRows | None:
    """Pick the rows of the per-epoch MI and R² diagnostics, on rank 0 and only when they are on."""
    if settings is None or not settings.enabled or not parallel.is_main:
        return None
    return select_diagnostic_rows(dataset, x1, x2, settings, seed)


def _check_pretrained(phases: list[Phase], pretrained: dict[str, dict[str, Any]]) -> None:
    """Reject pretrained states that do not belong to a leading run of this method's phases."""
    names = [phase.name for phase in phases]
    leading = names[: len(pretrained)]
    if set(pretrained) != set(leading):
        raise ValueError(
            f"pretrained states must cover the first phases of the method in order; got "
            f"{sorted(pretrained)} for phases {names}"
        )


def _build_phase_model(
    phase: Phase, index: int, earlier: dict[str, PhaseModel], seed: int, device: torch.device
) -> PhaseModel:
    """Build a phase's model from a seed that depends on the phase, so resuming rebuilds it equally."""
    torch.manual_seed(seed + index)
    return phase.build(list(earlier.values())).to(device)


def _restore_optimizer(optimizer: torch.optim.Optimizer, scheduler: Any, state: TrainingState) -> None:
    fused = optimizer.param_groups[0].get("fused")
    optimizer.load_state_dict(state.optimizer)
    # load_state_dict restores the saved "fused" flag too; keep the one this device supports.
    for group in optimizer.param_groups:
        group["fused"] = fused
    scheduler.load_state_dict(state.scheduler)
    logger.info("resumed %s after epoch %d", state.phase, state.epoch)


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


def restore_models(state: TrainingState, x1_dim: int, x2_dim: int, method: MethodSpec) -> TrainedModels:
    """Rebuild the trained models of every phase in a saved :class:`TrainingState`."""
    models: dict[str, PhaseModel] = {}
    for phase in build_phases(method, x1_dim, x2_dim):
        if phase.name not in state.models:
            break
        model = phase.build(list(models.values()))
        model.load_checkpoint_state(state.models[phase.name])
        models[phase.name] = model
    return TrainedModels(phases=models)
