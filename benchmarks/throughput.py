"""Training-step throughput, per-call costs and the matrix-multiply ceiling of this machine.

Every measurement runs in the calling process; the caller sets the thread count first
(``torch.set_num_threads(1)`` for the reference numbers). The training steps go through the
exact code of an epoch: :func:`dssl.train.loop._batches` cuts the batches, the method's phases
(:func:`dssl.methods.registry.build_phases`) build the models, :func:`_make_adam` builds the
optimiser and :func:`_run_epoch` runs ``loss_terms``, backward and the Adam update over them.

Timings are reported as the median over repeats, with the smallest and largest repeat as the
spread. Each repeat records wall time (``time.perf_counter``) and the CPU time of this process
(``time.process_time``). On a machine shared with other jobs the CPU-time figure moves less.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dssl.data.augment import augment
from dssl.data.dataset import PairedDataset
from dssl.data.synthetic import make_synthetic
from dssl.methods.base import PhaseModel
from dssl.methods.disentangled_ssl import SharedModel, SpecificModel
from dssl.methods.registry import build_phases
from dssl.nn.precision import encoder_autocast
from dssl.objectives.conditional_mi import conditional_mi_penalty
from dssl.objectives.infonce import symmetric_infonce
from dssl.objectives.overlap import orthogonality_penalty
from dssl.study.schema import MethodSpec
from dssl.train.distributed import DataParallelContext
from dssl.train.loop import _batches, _build_phase_model, _make_adam, _run_epoch

logger = logging.getLogger(__name__)

SEED = 0


def paper_method(step1_epochs: int = 50, step2_epochs: int = 30) -> MethodSpec:
    """Return the reference (paper) configuration: batch 256, MLP 512, 100-d, vMF kappa 1000.

    Args:
        step1_epochs: Epochs of step 1.
        step2_epochs: Epochs of step 2.

    Returns:
        The method settings with beta 0.1 on the cosine scale and lambda 1.
    """
    return MethodSpec.model_validate(
        {
            "hidden_dim": 512,
            "num_hidden_layers": 1,
            "embed_dim": 100,
            "batch_size": 256,
            "temperature": 0.07,
            "init_std": 0.01,
            "step1": {"beta": 0.1, "penalty": "cosine", "head": "vmf", "kappa": 1000.0, "epochs": step1_epochs},
            "step2": {"lambda": 1.0, "penalty": "orthogonality", "epochs": step2_epochs},
        }
    )


@dataclasses.dataclass(frozen=True)
class Timing:
    """Repeated timings of one piece of work.

    Attributes:
        wall: Wall seconds of each repeat.
        cpu: CPU seconds of this process in each repeat.
    """

    wall: tuple[float, ...]
    cpu: tuple[float, ...]

    @property
    def wall_median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


def time_repeats(work: Callable[[], Any], repeats: int, warmup: int = 1) -> Timing:
    """Run ``work`` ``warmup`` times untimed, then ``repeats`` times timed.

    Args:
        work: The piece of work; its result is discarded.
        repeats: Number of timed runs, at least 1.
        warmup: Number of untimed runs first, at least 0.

    Returns:
        The wall and CPU seconds of every timed run.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be at least 0, got {warmup}")
    for _ in range(warmup):
        work()
    wall, cpu = [], []
    for _ in range(repeats):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        work()
        cpu.append(time.process_time() - cpu_start)
        wall.append(time.perf_counter() - wall_start)
    return Timing(tuple(wall), tuple(cpu))


# ---------------------------------------------------------------------------------------------
# Training-step throughput
# ---------------------------------------------------------------------------------------------


def _throughput_dataset(batch_size: int, batches_per_block: int) -> PairedDataset:
    """Build a synthetic dataset whose train split contains at least one block of batches."""
    train_rows = batch_size * batches_per_block
    # The test split takes 20%, so n rows give 0.8 n train rows. Eight spare rows absorb rounding.
    n_samples = int(np.ceil(train_rows / 0.8)) + 8
    return make_synthetic(n_samples=n_samples, seed=SEED)


def _step_block(
    dataset: PairedDataset, method: MethodSpec, step: int, batches_per_block: int
) -> tuple[Callable[[], dict[str, float]], int]:
    """Prepare one block of training batches of ``step`` and return its runner and row count.

    The models come from the method's phases and the optimiser from
    :func:`dssl.train.loop._make_adam`, as in training. Step 2 runs on an untrained step-1 model,
    because its cost does not depend on the shared weights.
    """
    device = torch.device("cpu")
    x1 = torch.as_tensor(dataset.x1[dataset.train_index])
    x2 = torch.as_tensor(dataset.x2[dataset.train_index])
    rng = np.random.default_rng(SEED)
    batches = _batches(x1, x2, method.batch_size, rng)[:batches_per_block]
    if len(batches) < batches_per_block:
        raise ValueError(f"the dataset gives {len(batches)} batches, fewer than {batches_per_block}")

    phases = build_phases(method, dataset.x1.shape[1], dataset.x2.shape[1])
    earlier: dict[str, PhaseModel] = {}
    for index, phase in enumerate(phases[:step]):
        earlier[phase.name] = _build_phase_model(phase, index, earlier, SEED, device)
    model = earlier[phases[step - 1].name]
    parameters = model.trainable_parameters()
    optimizer = _make_adam(parameters, phases[step - 1].lr, device)
    parallel = DataParallelContext()

    def run_block() -> dict[str, float]:
        terms, _ = _run_epoch(model, parameters, optimizer, batches, parallel)
        return terms

    return run_block, method.batch_size * len(batches)


def measure_step_throughput(
    method: MethodSpec, step: int, repeats: int, batches_per_block: int
) -> dict[str, Any]:
    """Measure training throughput of ``step`` in samples per second.

    One untimed block warms up the allocator and the optimiser state; then ``repeats`` blocks
    of ``batches_per_block`` batches are timed.

    Args:
        method: The method settings (batch size, model sizes, head, penalties).
        step: 1 (shared encoders) or 2 (specific encoders).
        repeats: Timed blocks.
        batches_per_block: Batches per block.

    Returns:
        ``samples_per_s`` (median over blocks, from wall time), ``samples_per_s_min`` and
        ``_max``, ``samples_per_s_cpu`` (median, from CPU time), ``ms_per_batch`` (median wall),
        the block sizes and the last block's loss terms.
    """
    if step not in (1, 2):
        raise ValueError(f"step must be 1 or 2, got {step}")
    dataset = _throughput_dataset(method.batch_size, batches_per_block)
    run_block, rows = _step_block(dataset, method, step, batches_per_block)

    terms: dict[str, float] = {}

    def work() -> None:
        terms.update(run_block())

    timing = time_repeats(work, repeats, warmup=1)
    rates = sorted(rows / seconds for seconds in timing.wall)
    result = {
        "samples_per_s": statistics.median(rates),
        "samples_per_s_min": rates[0],
        "samples_per_s_max": rates[-1],
        "samples_per_s_cpu": rows / timing.cpu_median,
        "ms_per_batch": 1000.0 * timing.wall_median / batches_per_block,
        "repeats": repeats,
        "batches_per_block": batches_per_block,
        "batch_size": method.batch_size,
        "block_wall_s": list(timing.wall),
        "block_cpu_s": list(timing.cpu),
        "loss_terms": terms,
    }
    logger.info("step %d: %.0f samples/s (median of %d blocks)", step, result["samples_per_s"], repeats)
    return result


# ---------------------------------------------------------------------------------------------
# Matrix-multiply ceiling
# ---------------------------------------------------------------------------------------------


def _mlp_widths(in_dim: int, method: MethodSpec) -> list[int]:
    return [in_dim, *([method.hidden_dim] * method.num_hidden_layers), method.embed_dim]


def matmul_flops_per_batch(method: MethodSpec, x1_dim: int, x2_dim: int) -> dict[str, float]:
    """Count the matrix-multiply FLOPs (2 per multiply-add) of one training batch of each step.

    Step 1 runs both shared encoders forward. Their backward computes the weight gradients of
    every layer and the input gradients of every layer but the first, because the data needs
    none. InfoNCE forms two (B, B) logit matrices of d = embed_dim and back-propagates into both
    operands of each.

    Step 2 runs the frozen shared encoders forward on both views (2B rows), and the specific
    encoders (input x_dim + embed_dim) forward and backward on 2B rows. It adds two InfoNCE
    terms of d = 2 * embed_dim and four (k, B) x (B, k) cross-correlations whose gradient flows
    into one operand.

    Args:
        method: The method settings.
        x1_dim: Feature dimension of modality 1.
        x2_dim: Feature dimension of modality 2.

    Returns:
        ``{"step1": flops, "step2": flops}``.
    """
    batch, embed = method.batch_size, method.embed_dim

    def encoder(rows: int, in_dim: int, trained: bool) -> int:
        widths = _mlp_widths(in_dim, method)
        forward = sum(rows * a * b for a, b in zip(widths[:-1], widths[1:]))
        if not trained:
            return forward
        first_layer = rows * widths[0] * widths[1]
        # Weight gradients of every layer plus input gradients of all layers after the first.
        return forward + forward + (forward - first_layer)

    def infonce(d: int) -> int:
        logits = batch * batch * d
        return 2 * logits + 4 * logits

    step1 = encoder(batch, x1_dim, True) + encoder(batch, x2_dim, True) + infonce(embed)
    views = 2 * batch
    step2 = (
        encoder(views, x1_dim, False)
        + encoder(views, x2_dim, False)
        + encoder(views, x1_dim + embed, True)
        + encoder(views, x2_dim + embed, True)
        + 2 * infonce(2 * embed)
        + 4 * 2 * (embed * batch * embed)
    )
    return {"step1": 2.0 * step1, "step2": 2.0 * step2}


def measure_sgemm(
    method: MethodSpec, x_dim: int, repeats: int, dtype: torch.dtype = torch.float32
) -> dict[str, float]:
    """Measure matrix-multiply speed in GFLOP/s at the model's shapes.

    Args:
        method: The method settings (batch size and layer widths).
        x_dim: Input feature dimension.
        repeats: Timed calls per shape (the median is kept).
        dtype: Element type of both factors: float32 (sgemm) or bfloat16 (the products that
            ``precision: bf16-mixed`` runs).

    Returns:
        GFLOP/s per shape, keyed ``"MxKxN"`` for an (M, K) x (K, N) product, plus ``"1024^3"``.
    """
    generator = torch.Generator().manual_seed(SEED)
    shapes = [
        (method.batch_size, x_dim, method.hidden_dim),
        (method.batch_size, method.hidden_dim, method.embed_dim),
        (2 * method.batch_size, x_dim + method.embed_dim, method.hidden_dim),
        (1024, 1024, 1024),
    ]
    result: dict[str, float] = {}
    for m, k, n in shapes:
        a = torch.randn(m, k, generator=generator).to(dtype)
        b = torch.randn(k, n, generator=generator).to(dtype)
        calls = max(5, repeats if m < 1024 else repeats // 10)
        timing = time_repeats(lambda: torch.mm(a, b), calls, warmup=5)
        key = "1024^3" if m == k == n == 1024 else f"{m}x{k}x{n}"
        result[key] = 2.0 * m * k * n / timing.wall_median / 1e9
    return result


# ---------------------------------------------------------------------------------------------
# Per-call costs
# ---------------------------------------------------------------------------------------------


def measure_components(method: MethodSpec, repeats: int) -> dict[str, dict[str, float]]:
    """Time each call a training batch makes, at the shapes of ``method``.

    ``fwd+bwd`` entries run the call and back-propagate a sum of its output. Entries whose name
    starts with ``step1`` or ``step2`` are calls a training batch makes. ``compare`` entries set
    a code path of the current version beside the one it replaced, and ``what-if`` entries time
    alternatives that dssl does not use, to size a possible change.

    Args:
        method: The method settings.
        repeats: Timed calls per entry (the median is kept).

    Returns:
        Per entry: ``us`` (median wall microseconds per call), ``us_cpu`` (median CPU
        microseconds) and ``calls_per_batch`` (how often one training batch makes the call;
        0 for what-if entries).
    """
    generator = torch.Generator().manual_seed(SEED)
    batch, embed = method.batch_size, method.embed_dim
    data = make_synthetic(n_samples=max(2000, 4 * batch), seed=SEED)
    x_dim = data.x1.shape[1]
    x1 = torch.as_tensor(data.x1[:batch])
    x2 = torch.as_tensor(data.x2[:batch])
    torch.manual_seed(SEED)
    shared = SharedModel(x_dim, x_dim, method)
    specific = SpecificModel(SharedModel(x_dim, x_dim, method), x_dim, x_dim, method)
    temperature = method.temperature

    def unit(rows: int, dim: int, grad: bool) -> torch.Tensor:
        value = F.normalize(torch.randn(rows, dim, generator=generator), dim=1)
        return value.requires_grad_(grad)

    e_both = (0.1 * torch.randn(2 * batch, embed, generator=generator)).requires_grad_(True)
    mu1, mu2 = unit(batch, embed, True), unit(batch, embed, True)
    z1, z2 = unit(batch, embed, True), unit(batch, embed, True)
    h1, h2 = unit(batch, 2 * embed, True), unit(batch, 2 * embed, True)
    s, c = torch.randn(batch, embed, generator=generator, requires_grad=True), unit(batch, embed, False)
    s_stacked = torch.randn(4, batch, embed, generator=generator, requires_grad=True)
    c_stacked = torch.randn(4, batch, embed, generator=generator)
    views1 = torch.cat([x1, x1])
    views2 = torch.cat([x2, x2])

    def backward(value: torch.Tensor) -> None:
        value.sum().backward()

    def shared_encoders() -> None:
        e1, e2 = shared.embed(x1, x2)
        backward(e1 + e2)

    with torch.no_grad():
        c1, c2 = specific.shared.embed(views1, views2)

    def specific_encoders() -> None:
        s1 = specific.specific1(torch.cat([views1, c1], dim=1))
        s2 = specific.specific2(torch.cat([views2, c2], dim=1))
        backward(s1 + s2)

    def shared_encoders_bf16() -> None:
        with encoder_autocast("bf16-mixed", x1.device):
            e1, e2 = shared.embed(x1, x2)
        backward(e1.float() + e2.float())

    def both_views_one_pass_bf16() -> None:
        with encoder_autocast("bf16-mixed", x1.device):
            s1, s2, _, _ = specific._specific_and_shared(views1, views2)
        backward(s1.float() + s2.float())

    def frozen_shared() -> None:
        with torch.no_grad():
            specific.shared.embed(views1, views2)

    def both_views_one_pass() -> None:
        s1, s2, _, _ = specific._specific_and_shared(views1, views2)
        backward(s1 + s2)

    def views_in_two_passes() -> None:
        s1_a, s2_a, _, _ = specific._specific_and_shared(x1, x2)
        s1_b, s2_b, _, _ = specific._specific_and_shared(x1, x2)
        backward(s1_a + s2_a + s1_b + s2_b)

    def head_twice() -> None:
        _, z1_sample = shared.head.sample(e_both[:batch])
        _, z2_sample = shared.head.sample(e_both[batch:])
        backward(z1_sample + z2_sample)

    step1_parameters = list(shared.parameters())
    for parameter in step1_parameters:
        parameter.grad = torch.zeros_like(parameter)
    adam_fused = torch.optim.Adam(step1_parameters, lr=1e-4, fused=True)
    adam_loop = torch.optim.Adam(step1_parameters, lr=1e-4, foreach=False)

    def augment_step1() -> None:
        augment(x1, method.step1.noise_std, method.step1.drop_fraction)

    def augment_step2() -> None:
        augment(x1, method.step2.noise_std, method.step2.drop_fraction)

    step1_augments = 2 if method.step1.augment else 0
    entries: dict[str, tuple[Callable[[], Any], int]] = {
        f"step1: augment (B rows, d={x_dim})": (augment_step1, step1_augments),
        "step1: shared encoders fwd+bwd (2 modalities, B rows)": (shared_encoders, 1),
        "step1: vMF head.sample fwd+bwd (2B rows, dssl.nn.vmf)": (lambda: backward(shared.head.sample(e_both)[1]), 1),
        "step1: symmetric_infonce fwd+bwd (d=100, one logit matrix)": (
            lambda: symmetric_infonce(z1, z2, temperature).backward(),
            1,
        ),
        "step1: conditional_mi_penalty cosine fwd+bwd (unit rows)": (
            lambda: conditional_mi_penalty(mu1, mu2, scale="cosine", kappa=1000.0, head="vmf", unit_rows=True).backward(),
            1,
        ),
        "step1: Adam step, fused (used)": (adam_fused.step, 1),
        f"step2: augment (B rows, d={x_dim})": (augment_step2, 4),
        "step2: frozen shared encoders fwd (2B rows)": (frozen_shared, 1),
        "step2: specific encoders fwd+bwd (2B rows)": (specific_encoders, 1),
        "step2: symmetric_infonce fwd+bwd (d=200, one logit matrix)": (
            lambda: symmetric_infonce(h1, h2, temperature).backward(),
            2,
        ),
        "step2: 4 orthogonality penalties in one batched call fwd+bwd": (
            lambda: orthogonality_penalty(s_stacked, c_stacked).sum().backward(),
            1,
        ),
        "compare: shared encoders fwd+bwd, bf16-mixed (step 1)": (shared_encoders_bf16, 0),
        "compare: frozen + specific encoders fwd+bwd, bf16-mixed (step 2)": (both_views_one_pass_bf16, 0),
        "compare: Adam step, per-parameter loop (torch default on CPU, previous code)": (adam_loop.step, 0),
        "compare: step-2 frozen + specific encoders, both views in one 2B-row pass (used)": (both_views_one_pass, 0),
        "compare: step-2 frozen + specific encoders, one B-row pass per view (previous code)": (views_in_two_passes, 0),
        "compare: vMF head.sample fwd+bwd, one call per modality on B rows (previous code)": (head_twice, 0),
        "compare: InfoNCE from two logit matrices fwd+bwd (d=100, previous code)": (
            lambda: symmetric_infonce(z1, z2, temperature, z1_all=z1, z2_all=z2).backward(),
            0,
        ),
        "compare: InfoNCE from two logit matrices fwd+bwd (d=200, previous code)": (
            lambda: symmetric_infonce(h1, h2, temperature, z1_all=h1, z2_all=h2).backward(),
            0,
        ),
        "compare: cosine penalty with F.cosine_similarity fwd+bwd (previous code)": (
            lambda: conditional_mi_penalty(mu1, mu2, scale="cosine", kappa=1000.0, head="vmf").backward(),
            0,
        ),
        "compare: orthogonality penalty, one call per pair fwd+bwd (previous code, x4)": (
            lambda: orthogonality_penalty(s, c).backward(),
            0,
        ),
    }
    result: dict[str, dict[str, float]] = {}
    for name, (work, calls) in entries.items():
        timing = time_repeats(work, repeats, warmup=max(3, repeats // 10))
        result[name] = {
            "us": 1e6 * timing.wall_median,
            "us_cpu": 1e6 * timing.cpu_median,
            "calls_per_batch": float(calls),
        }
    return result
