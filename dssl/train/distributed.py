"""Data-parallel helpers: gather embeddings with gradients and average gradients.

The InfoNCE objectives use every worker's batch rows as negatives. Gathering with
``torch.distributed.all_gather`` alone cuts the autograd graph, so a worker would get no
gradient through the rows it sent to the others. :func:`gather_with_grad` keeps that path:
its backward sums the gradient of every worker's loss with respect to the gathered tensor and
hands each worker the slice for its own rows.

With per-worker loss ``L_w`` (the mean over its local queries) and gradients averaged across
the ``W`` workers after backward, every parameter receives the gradient of
``(1 / W) * sum_w L_w``, which equals the single-process loss over the global batch.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns this worker's slice of the summed gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world_size = dist.get_world_size()
        ctx.rank = dist.get_rank()
        ctx.rows = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows]


@dataclasses.dataclass(frozen=True)
class DataParallelContext:
    """Rank and world size of this training process.

    ``world_size == 1`` means a single process with no process group: gathering returns the
    input and gradient averaging does nothing, so the same training code runs in both cases.
    """

    rank: int = 0
    world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_process_group(cls) -> DataParallelContext:
        """Read rank and world size from an initialised ``torch.distributed`` group."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size())

    def gather(self, tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Gather ``tensor`` (B, ...) from every worker, keeping gradients.

        Returns:
            The gathered tensor (W * B, ...) and the row offset of this worker's rows in it.
            Every worker must pass the same B.
        """
        if not self.is_distributed:
            return tensor, 0
        return _GatherWithGrad.apply(tensor), self.rank * tensor.shape[0]

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Average the ``.grad`` of ``parameters`` across workers with one flat all-reduce."""
        if not self.is_distributed:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for grad in grads:
            count = grad.numel()
            grad.copy_(flat[offset : offset + count].view_as(grad))
            offset += count

    def mean_scalar(self, value: float) -> float:
        """Average a Python float across workers (used for logged loss terms)."""
        if not self.is_distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return float(tensor.item()) / self.world_size

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()
