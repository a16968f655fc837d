"""Final evaluation of a trained trial: representations, linear probes, latent R² and retrieval.

Representations probed (each a NumPy array of train and test rows):

- ``shared``: concat(e1, e2), the deterministic step-1 embeddings before normalisation;
- ``specific1``, ``specific2``: the step-2 embeddings s1, s2 of clean inputs;
- ``specific``: concat(s1, s2);
- ``both``: concat(shared, specific).

Metric names are ``probe/{representation}/{label}`` (test accuracy) and, for datasets that keep
their true latents, ``r2/{representation}/{latent}``. When the phases provide ``shared1`` and
``shared2``, cross-modal retrieval between them over all held-out rows adds
``retrieval/{x1_to_x2,x2_to_x1}/{top1,top5,top10,mrr}`` (:mod:`dssl.eval.retrieval`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

from dssl.eval.latent_r2 import latent_r2
from dssl.eval.probes import probe_representations
from dssl.eval.retrieval import retrieval_metrics

if TYPE_CHECKING:
    from dssl.data.dataset import PairedDataset
    from dssl.train.loop import TrainedModels

logger = logging.getLogger(__name__)

_EMBED_CHUNK = 8192


@torch.no_grad()
def _embed_rows(models: TrainedModels, x1: np.ndarray, x2: np.ndarray) -> dict[str, np.ndarray]:
    """Embed rows in chunks and return every per-modality embedding of the phases as float32 arrays."""
    device = models.device
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, x1.shape[0], _EMBED_CHUNK):
        a = torch.as_tensor(x1[start : start + _EMBED_CHUNK], device=device)
        b = torch.as_tensor(x2[start : start + _EMBED_CHUNK], device=device)
        for name, value in models.representations(a, b).items():
            parts.setdefault(name, []).append(value.float().cpu().numpy())
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def _compose(per_modality: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Build the probed representations from the per-modality embeddings of the phases."""
    result: dict[str, np.ndarray] = {}
    if "shared1" in per_modality and "shared2" in per_modality:
        result["shared"] = np.concatenate([per_modality["shared1"], per_modality["shared2"]], axis=1)
    if "specific1" in per_modality and "specific2" in per_modality:
        result["specific1"] = per_modality["specific1"]
        result["specific2"] = per_modality["specific2"]
        result["specific"] = np.concatenate([per_modality["specific1"], per_modality["specific2"]], axis=1)
        if "shared" in result:
            result["both"] = np.concatenate([result["shared"], result["specific"]], axis=1)
    return result


def evaluate_trial(
    models: TrainedModels,
    dataset: PairedDataset,
    *,
    probe_max_train_samples: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Probe every representation on every label, regress the latents and score retrieval.

    Args:
        models: The trained step-1 (and step-2) models.
        dataset: The dataset the models were trained on.
        probe_max_train_samples: Training rows per probe (all when ``None``).
        seed: Seed of the probe subsample and the R² split.

    Returns:
        Metrics named ``probe/{representation}/{label}``, ``r2/{representation}/{latent}`` (when
        the dataset keeps its latents) and ``retrieval/{direction}/{metric}`` (when the phases
        provide ``shared1`` and ``shared2``; all held-out rows form the gallery).
    """
    train_x1, train_x2, train_labels = dataset.split("train")
    test_x1, test_x2, test_labels = dataset.split("test")
    train_repr = _compose(_embed_rows(models, train_x1, train_x2))
    test_embeddings = _embed_rows(models, test_x1, test_x2)
    test_repr = _compose(test_embeddings)

    representations = {name: (train_repr[name], test_repr[name]) for name in train_repr}
    metrics = probe_representations(
        representations,
        train_labels,
        test_labels,
        max_train_samples=probe_max_train_samples,
        seed=seed,
    )

    if dataset.latents:
        # R² on held-out rows: how much of each true latent a representation carries.
        latents_test = {name: values[dataset.test_index] for name, values in dataset.latents.items()}
        for representation in ("shared", "specific1", "specific2"):
            if representation not in test_repr:
                continue
            for latent_name, latent in latents_test.items():
                metrics[f"r2/{representation}/{latent_name}"] = latent_r2(
                    test_repr[representation], latent, seed=seed
                )

    if "shared1" in test_embeddings and "shared2" in test_embeddings:
        metrics.update(retrieval_metrics(test_embeddings["shared1"], test_embeddings["shared2"]))
    logger.info("evaluation: %s", {k: round(v, 4) for k, v in sorted(metrics.items())})
    return metrics
