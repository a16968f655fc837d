"""Per-epoch MI and latent-R² diagnostics of a trial's representations on held-out rows.

After selected epochs the training loop embeds a fixed subsample of its training rows and a
fixed set of held-out rows with every phase trained so far, and :func:`compute_mi_diagnostics`
turns those embeddings into metrics:

- ``mi/specific{m}_shared{m}_club``: CLUB estimate of I(Zs_m; Zc_m) in nats, an upper bound in
  expectation when its Gaussian q(zc | zs) fits well. It is not clipped: ``..._club_below_zero``
  is 1.0 when it is negative (q is badly fitted), and a warning names the trial, epoch and value.
- ``mi/specific{m}_shared{m}_infonce``: the separable InfoNCE critic's lower bound on the same
  MI in nats. It cannot exceed log(N), N = min(1024, held-out rows).
- ``mi/specific{m}_shared{m}_club_train_loss`` and ``..._infonce_train_loss``: each estimator's
  training loss over its last tenth of steps (see :class:`dssl.objectives.mi_estimators.MIEstimate`).
- ``r2/{representation}/{latent}``: held-out ridge R² of each true latent, as in the final
  evaluation (:func:`dssl.eval.latent_r2.latent_r2`), on the held-out subsample only.

Zs_m is ``specific{m}`` and Zc_m is ``shared{m}``. A pair is estimated only when both
representations exist, so DisentangledSSL's step 1 logs R² of ``shared`` and no pair.

The estimators are fitted on the training subsample and evaluated on the held-out rows, both
standardised per coordinate with the training subsample's mean and standard deviation (an
invertible affine map of each code, which leaves the MI unchanged).

Example:
    >>> generator = torch.Generator().manual_seed(0)
    >>> zs = torch.randn(600, 3, generator=generator)
    >>> zc = 0.8 * zs + 0.6 * torch.randn(600, 3, generator=generator)
    >>> train = {"specific1": zs[:400], "shared1": zc[:400]}
    >>> held_out = {"specific1": zs[400:], "shared1": zc[400:]}
    >>> settings = MIDiagnosticsSettings(train_samples=400, eval_samples=200, estimator_steps=100)
    >>> metrics = compute_mi_diagnostics(train, held_out, {}, settings)
    >>> sorted(metrics)[:2]
    ['mi/specific1_shared1_club', 'mi/specific1_shared1_club_below_zero']
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from dssl.eval.latent_r2 import latent_r2
from dssl.objectives.mi_estimators import fit_club, fit_infonce_critic

if TYPE_CHECKING:
    from dssl.data.dataset import PairedDataset
    from dssl.methods.base import PhaseModel

logger = logging.getLogger(__name__)

MIN_DIAGNOSTIC_ROWS = 16
"""Minimum number of training-subsample and held-out rows. ``dssl.study.schema`` enforces the
same bound on ``eval.mi_train_samples`` and ``eval.mi_eval_samples``."""

CLUB_HIDDEN_DIM = 128
"""Hidden width of CLUB's q network. With 64 units, q's mean is a rank-64 map that underfits
100-d codes, and CLUB then fell below the true MI in a Gaussian check (``docs/method.md``)."""

CRITIC_HIDDEN_DIM = 64
"""Hidden width of both InfoNCE critic networks."""
# NOTE: with 100-d codes and 2,000 training rows the critic overfits, so its held-out estimate
# is loose: -3.6 nats on independent Gaussian codes at 300 steps (docs/method.md). It stays a
# valid lower bound, and more training rows tighten it.

CRITIC_EMBEDDING_DIM = 32
"""Output dimension of the InfoNCE critic's two networks."""

ESTIMATOR_BATCH_SIZE = 256
"""Rows per estimator training step, capped at the training subsample's size."""

ESTIMATOR_LR = 1e-3
"""Adam learning rate of both estimators."""

CRITIC_EVAL_ROWS = 1024
"""Rows per InfoNCE evaluation chunk, capped at the held-out rows; the bound's ceiling is log of it."""

REGRESSED_REPRESENTATIONS = ("shared", "specific1", "specific2")
"""Representations regressed on the true latents, named as in :mod:`dssl.eval.evaluate`."""

_STANDARDISE_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class MIDiagnosticsSettings:
    """When and on how many rows the per-epoch diagnostics run.

    Attributes:
        every_n_epochs: Run after every epoch whose global number is a multiple of this, and
            after the last epoch of each phase. ``None`` turns the diagnostics off.
        train_samples: Training rows the estimators are fitted on, >= ``MIN_DIAGNOSTIC_ROWS``.
        eval_samples: Held-out rows (the first rows of the test split) the estimates and R²
            are computed on, >= ``MIN_DIAGNOSTIC_ROWS``.
        estimator_steps: Adam steps of each fitted estimator, >= 1.
        trial: Name of the trial in log messages, for example the Tune trial id.

    Raises:
        ValueError: If a value is outside the range above.
    """

    every_n_epochs: int | None = 3
    train_samples: int = 2000
    eval_samples: int = 1024
    estimator_steps: int = 300
    trial: str = ""

    def __post_init__(self) -> None:
        if self.every_n_epochs is not None:
            _check_int_at_least("every_n_epochs", self.every_n_epochs, 1, "or None to turn the diagnostics off")
        _check_int_at_least("train_samples", self.train_samples, MIN_DIAGNOSTIC_ROWS)
        _check_int_at_least("eval_samples", self.eval_samples, MIN_DIAGNOSTIC_ROWS)
        _check_int_at_least("estimator_steps", self.estimator_steps, 1)

    @property
    def enabled(self) -> bool:
        """Whether the diagnostics run at all."""
        return self.every_n_epochs is not None

    def selects(self, epoch: int, phase_last_epoch: int) -> bool:
        """Return whether the diagnostics run after global ``epoch`` of a phase ending at ``phase_last_epoch``."""
        if self.every_n_epochs is None:
            return False
        return epoch % self.every_n_epochs == 0 or epoch == phase_last_epoch


def _check_int_at_least(name: str, value: object, minimum: int, alternative: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        suffix = f" {alternative}" if alternative else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{suffix}, got {value!r}.")


# --------------------------------------------------------------------------------------------
# Metric names
# --------------------------------------------------------------------------------------------


def pair_metric_names(modality: int) -> tuple[str, ...]:
    """Return the names logged for the pair (Zs_m, Zc_m) of ``modality`` 1 or 2.

    Raises:
        ValueError: If ``modality`` is not 1 or 2.
    """
    if modality not in (1, 2):
        raise ValueError(f"modality must be 1 or 2, got {modality!r}.")
    prefix = _pair_prefix(modality)
    return (
        f"{prefix}_club",
        f"{prefix}_club_train_loss",
        f"{prefix}_club_below_zero",
        f"{prefix}_infonce",
        f"{prefix}_infonce_train_loss",
    )


def estimated_pairs(representations: Collection[str]) -> tuple[int, ...]:
    """Return the modalities m whose ``specific{m}`` and ``shared{m}`` are both in ``representations``."""
    return tuple(m for m in (1, 2) if {f"specific{m}", f"shared{m}"} <= set(representations))


def regressed_representations(representations: Collection[str]) -> tuple[str, ...]:
    """Return the names of :data:`REGRESSED_REPRESENTATIONS` that per-modality ``representations`` give.

    ``shared`` needs ``shared1`` and ``shared2``; ``specific1`` and ``specific2`` need both
    specific codes, as in the final evaluation.
    """
    available = set(representations)
    names: list[str] = []
    if {"shared1", "shared2"} <= available:
        names.append("shared")
    if {"specific1", "specific2"} <= available:
        names += ["specific1", "specific2"]
    return tuple(names)


def _pair_prefix(modality: int) -> str:
    return f"mi/specific{modality}_shared{modality}"


# --------------------------------------------------------------------------------------------
# The metrics of one set of embeddings
# --------------------------------------------------------------------------------------------


def compute_mi_diagnostics(
    train: Mapping[str, Tensor | np.ndarray],
    held_out: Mapping[str, Tensor | np.ndarray],
    held_out_latents: Mapping[str, np.ndarray],
    settings: MIDiagnosticsSettings,
    *,
    seed: int = 0,
    epoch: int | None = None,
) -> dict[str, float]:
    """Fit the MI estimators of every (Zs_m, Zc_m) pair and regress the latents on held-out rows.

    Args:
        train: Embeddings of the training subsample keyed by ``shared1``, ``shared2``,
            ``specific1``, ``specific2``, each (n_train, k). Only the pairs' codes are read.
        held_out: Embeddings of the held-out rows under the same names, each (n_eval, k).
        held_out_latents: True latents of the held-out rows, name to (n_eval, m); empty for
            data without latents.
        settings: Row counts and estimator steps. With ``settings.enabled`` false only the
            R² metrics are computed.
        seed: Seed of the estimators' initial weights and batch order and of the R² split.
        epoch: Global epoch, named in the below-zero warning.

    Returns:
        The metrics named in the module docstring. ``..._below_zero`` values are 1.0 or 0.0.

    Raises:
        ValueError: If a pair has fewer than ``MIN_DIAGNOSTIC_ROWS`` training or held-out rows,
            a latent's row count differs from the held-out embeddings', or an embedding is not
            finite.
    """
    metrics: dict[str, float] = {}
    if settings.enabled:
        for modality in estimated_pairs(held_out):
            metrics.update(_pair_metrics(modality, train, held_out, settings, seed, epoch))
    metrics.update(_latent_r2_metrics(held_out, held_out_latents, seed))
    return metrics


def _pair_metrics(
    modality: int,
    train: Mapping[str, Tensor | np.ndarray],
    held_out: Mapping[str, Tensor | np.ndarray],
    settings: MIDiagnosticsSettings,
    seed: int,
    epoch: int | None,
) -> dict[str, float]:
    """Fit CLUB and the InfoNCE critic on (specific_m, shared_m) and evaluate them on held-out rows."""
    specific, shared = f"specific{modality}", f"shared{modality}"
    train_rows = train[specific].shape[0] if specific in train else 0
    held_out_rows = held_out[specific].shape[0]
    if min(train_rows, held_out_rows) < MIN_DIAGNOSTIC_ROWS:
        raise ValueError(
            f"The MI estimators of {specific} and {shared} need at least {MIN_DIAGNOSTIC_ROWS} training and "
            f"held-out rows, got {train_rows} training and {held_out_rows} held-out rows."
        )

    x_train, x_eval = _standardise(train[specific], held_out[specific])
    y_train, y_eval = _standardise(train[shared], held_out[shared])
    common = dict(
        steps=settings.estimator_steps,
        batch_size=min(ESTIMATOR_BATCH_SIZE, x_train.shape[0]),
        lr=ESTIMATOR_LR,
        seed=seed,
    )
    club = fit_club(x_train, y_train, x_eval, y_eval, hidden_dim=CLUB_HIDDEN_DIM, **common)
    critic = fit_infonce_critic(
        x_train,
        y_train,
        x_eval,
        y_eval,
        hidden_dim=CRITIC_HIDDEN_DIM,
        embedding_dim=CRITIC_EMBEDDING_DIM,
        eval_batch_size=min(CRITIC_EVAL_ROWS, x_eval.shape[0]),
        **common,
    )

    prefix = _pair_prefix(modality)
    if club.below_zero:
        logger.warning(
            "trial %s epoch %s: CLUB estimate of I(%s; %s) is %.6g nats on %d held-out rows, below zero. "
            "q(zc | zs) is badly fitted or the held-out rows differ from the training rows, so the value is "
            "no upper bound. It is kept unclipped, and %s_club_below_zero is 1.",
            settings.trial or "?",
            "?" if epoch is None else epoch,
            specific,
            shared,
            club.value,
            club.n_eval_rows,
            prefix,
        )
    return {
        f"{prefix}_club": club.value,
        f"{prefix}_club_train_loss": club.train_loss,
        f"{prefix}_club_below_zero": 1.0 if club.below_zero else 0.0,
        f"{prefix}_infonce": critic.value,
        f"{prefix}_infonce_train_loss": critic.train_loss,
    }


def _standardise(train: Tensor | np.ndarray, held_out: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Scale both row sets (n, k) per coordinate with the training rows' mean and standard deviation."""
    train_t = torch.as_tensor(train).detach().float()
    held_out_t = torch.as_tensor(held_out).detach().float().to(train_t.device)
    mean = train_t.mean(dim=0, keepdim=True)
    scale = train_t.std(dim=0, keepdim=True).clamp_min(_STANDARDISE_EPS)
    return (train_t - mean) / scale, (held_out_t - mean) / scale


def _latent_r2_metrics(
    held_out: Mapping[str, Tensor | np.ndarray], latents: Mapping[str, np.ndarray], seed: int
) -> dict[str, float]:
    """Compute ``r2/{representation}/{latent}`` for every regressed representation and latent."""
    if not latents:
        return {}
    arrays = {name: _as_numpy(value) for name, value in held_out.items()}
    composed: dict[str, np.ndarray] = {}
    for name in regressed_representations(arrays):
        if name == "shared":
            composed[name] = np.concatenate([arrays["shared1"], arrays["shared2"]], axis=1)
        else:
            composed[name] = arrays[name]

    metrics: dict[str, float] = {}
    for representation, features in composed.items():
        for latent_name, latent in latents.items():
            metrics[f"r2/{representation}/{latent_name}"] = latent_r2(features, latent, seed=seed)
    return metrics


def _as_numpy(value: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Rows and embeddings for the training loop
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DiagnosticRows:
    """The fixed rows a trial's diagnostics embed after every selected epoch.

    Attributes:
        x1_train: Modality-1 rows of the training subsample, (n_train, d1), on the model device.
        x2_train: Modality-2 rows of the training subsample, (n_train, d2).
        x1_held_out: Modality-1 held-out rows, (n_eval, d1).
        x2_held_out: Modality-2 held-out rows, (n_eval, d2).
        latents: True latents of the held-out rows, name to (n_eval, m); empty without latents.
    """

    x1_train: Tensor
    x2_train: Tensor
    x1_held_out: Tensor
    x2_held_out: Tensor
    latents: dict[str, np.ndarray]


def select_diagnostic_rows(
    dataset: PairedDataset,
    x1_train: Tensor,
    x2_train: Tensor,
    settings: MIDiagnosticsSettings,
    seed: int,
) -> DiagnosticRows | None:
    """Draw the training subsample and take the first held-out rows of ``dataset``'s test split.

    The subsample is ``settings.train_samples`` rows of ``x1_train``/``x2_train`` drawn without
    replacement with ``numpy.random.default_rng(seed)``, the same rows every epoch. The held-out
    rows are the first ``settings.eval_samples`` rows of ``dataset.test_index``.

    Args:
        dataset: The trial's dataset, for its test split and latents.
        x1_train: This worker's modality-1 training rows, (n, d1).
        x2_train: The paired modality-2 training rows, (n, d2).
        settings: The diagnostics settings.
        seed: The trial seed.

    Returns:
        The rows on ``x1_train``'s device, or ``None`` (with a warning) when either set has fewer
        than ``MIN_DIAGNOSTIC_ROWS`` rows.
    """
    held_out = dataset.test_index[: settings.eval_samples]
    n_train = min(settings.train_samples, x1_train.shape[0])
    if held_out.shape[0] < MIN_DIAGNOSTIC_ROWS or n_train < MIN_DIAGNOSTIC_ROWS:
        logger.warning(
            "trial %s: MI and R² diagnostics are off, because they need at least %d training and "
            "held-out rows and this worker has %d training and the test split %d held-out rows",
            settings.trial or "?",
            MIN_DIAGNOSTIC_ROWS,
            x1_train.shape[0],
            dataset.test_index.shape[0],
        )
        return None

    picked = np.sort(np.random.default_rng(seed).choice(x1_train.shape[0], size=n_train, replace=False))
    picked_t = torch.from_numpy(picked).to(x1_train.device)
    device = x1_train.device
    return DiagnosticRows(
        x1_train=x1_train.index_select(0, picked_t),
        x2_train=x2_train.index_select(0, picked_t),
        x1_held_out=torch.as_tensor(dataset.x1[held_out], device=device),
        x2_held_out=torch.as_tensor(dataset.x2[held_out], device=device),
        latents={name: values[held_out] for name, values in dataset.latents.items()},
    )


@torch.no_grad()
def embed_rows(models: Sequence[PhaseModel], x1: Tensor, x2: Tensor) -> dict[str, Tensor]:
    """Merge the representations of ``models`` for rows x1 (n, d1), x2 (n, d2), in eval mode.

    Later models overwrite earlier ones' names. Each model's train/eval mode is restored after.

    Returns:
        Float32 embeddings keyed by ``shared1``, ``shared2``, ``specific1``, ``specific2``.
    """
    modes = [model.training for model in models]
    merged: dict[str, Tensor] = {}
    try:
        for model in models:
            model.eval()
            merged.update({name: value.float() for name, value in model.representations(x1, x2).items()})
    finally:
        for model, mode in zip(models, modes, strict=True):
            model.train(mode)
    return merged


def epoch_mi_diagnostics(
    models: Sequence[PhaseModel],
    rows: DiagnosticRows,
    settings: MIDiagnosticsSettings,
    *,
    seed: int,
    epoch: int,
) -> dict[str, float]:
    """Embed the diagnostic rows with ``models`` (every phase so far) and compute the metrics.

    Args:
        models: The trained models of the earlier phases and the current one, in order.
        rows: The rows from :func:`select_diagnostic_rows`.
        settings: The diagnostics settings.
        seed: The trial seed.
        epoch: The global epoch just finished.

    Returns:
        The metrics of :func:`compute_mi_diagnostics`.
    """
    started = time.perf_counter()
    held_out = embed_rows(models, rows.x1_held_out, rows.x2_held_out)
    train = embed_rows(models, rows.x1_train, rows.x2_train) if estimated_pairs(held_out) else {}
    metrics = compute_mi_diagnostics(train, held_out, rows.latents, settings, seed=seed, epoch=epoch)
    logger.info(
        "trial %s epoch %d: %d MI and R² diagnostics in %.2f s",
        settings.trial or "?",
        epoch,
        len(metrics),
        time.perf_counter() - started,
    )
    return metrics
