"""The FOCAL baseline (Liu et al., NeurIPS 2023) as the authors' reference code trains it.

Deterministic shared and specific encoders of both modalities are trained together in one
phase. Per batch, with two augmented views x' = T(x) and v = T(x') of each modality, stacked as
(2B, d) rows [x' ; v], and every embedding L2-normalised before the losses:

    e_m = f_cm(x_m),  s_m = f_sm(concat(x_m, e_m))      (2B, k) each; e_m is not detached
    c_m = e_m / ||e_m||,  u_m = s_m / ||s_m||
    shared   = mean over the views of InfoNCE(c1, c2)            cross-modal CLIP loss, per view
    specific = InfoNCE(u1(x'), u1(v)) + InfoNCE(u2(x'), u2(v))   across the views
    ortho    = sum over both views of mean cos(u1, c1) + mean cos(u2, c2) + mean cos(u1, u2)
    loss = 2 * shared + a * specific + lambda * ortho

This is the loss of the reference ``Focal`` model (focal_mp.py): it sums the CLIP loss of the
two views (here 2 * their mean) and six row-mean cosines. The cosines are signed, so the penalty
is lowest for anti-aligned codes (cosine -1), not for orthogonal ones (cosine 0). dssl keeps the
reference's form so that its ``lambda`` grid applies unchanged.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from dssl.methods.base import SINGLE_PROCESS, Phase, joint_phase
from dssl.methods.disentangled_ssl import _gathered_infonce
from dssl.methods.joint_opt import JointEncoderModel, augmented_views, per_view_infonce
from dssl.objectives.infonce import symmetric_infonce
from dssl.train.distributed import DataParallelContext

if TYPE_CHECKING:
    from dssl.study.schema import MethodSpec

FOCAL_TERMS = ("loss", "shared_infonce", "specific_infonce1", "specific_infonce2", "ortho")
FOCAL_DIAGNOSTICS = (
    *FOCAL_TERMS,
    "mi/shared_infonce_lower_bound",
    "mi/specific1_infonce_lower_bound",
    "mi/specific2_infonce_lower_bound",
)


def _mean_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return the mean over rows of <a_i, b_i> for unit rows a, b (N, k).

    A mean over rows needs no gathering: the loop averages the workers' gradients, which gives
    the gradient of the mean over the global batch.
    """
    return (a * b).sum(dim=1).mean()


class FocalModel(JointEncoderModel):
    """FOCAL: the loss in the module docstring, weighted by ``method.focal``.

    Args:
        x1_dim: Feature dimension of modality 1.
        x2_dim: Feature dimension of modality 2.
        method: The resolved method settings. ``method.focal`` contains a, lambda and the
            augmentation settings.

    Example:
        >>> from dssl.study.schema import MethodSpec
        >>> method = MethodSpec.model_validate(
        ...     {"name": "focal", "hidden_dim": 16, "embed_dim": 4, "focal": {"lambda": 0.1}}
        ... )
        >>> model = FocalModel(6, 5, method)
        >>> terms = model.loss_terms(torch.randn(8, 6), torch.randn(8, 5))
        >>> sorted(terms) == sorted(FOCAL_TERMS)
        True
    """

    def __init__(self, x1_dim: int, x2_dim: int, method: MethodSpec) -> None:
        super().__init__(x1_dim, x2_dim, method, method.focal.num_hidden_layers)

    def loss_terms(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        parallel: DataParallelContext = SINGLE_PROCESS,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute the FOCAL loss terms for a local batch x1 (B, d1), x2 (B, d2).

        Args:
            x1: Modality-1 rows of this worker, (B, d1).
            x2: Modality-2 rows of this worker, (B, d2).
            parallel: Rank and world size; InfoNCE negatives are gathered across workers.
            generator: Source of the augmentations; the default generator when None.

        Returns:
            ``loss``, ``shared_infonce`` (mean over the two views), ``specific_infonce1``,
            ``specific_infonce2`` and ``ortho`` (the sum of the six mean cosines), all scalars.
        """
        settings = self.method.focal
        temperature = self.method.temperature
        batch = x1.shape[0]
        x1_views, x2_views = augmented_views(x1, x2, settings.noise_std, settings.drop_fraction, generator)
        e1, e2, s1, s2 = self.encode_views(x1_views, x2_views)
        c1, c2, u1, u2 = (F.normalize(code, dim=1) for code in (e1, e2, s1, s2))

        shared = per_view_infonce(c1, c2, batch, temperature, parallel)
        specific1 = _gathered_infonce(u1[:batch], u1[batch:], temperature, parallel)
        specific2 = _gathered_infonce(u2[:batch], u2[batch:], temperature, parallel)
        # A mean over the 2B view-stacked rows is half the sum of the two per-view means.
        ortho = 2.0 * (_mean_cosine(u1, c1) + _mean_cosine(u2, c2) + _mean_cosine(u1, u2))

        loss = 2.0 * shared + settings.a * (specific1 + specific2) + settings.lam * ortho
        return {
            "loss": loss,
            "shared_infonce": shared,
            "specific_infonce1": specific1,
            "specific_infonce2": specific2,
            "ortho": ortho,
        }

    @torch.no_grad()
    def diagnostics(self, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, float]:
        """Compute held-out terms and MI bounds on one batch (B rows of each modality).

        The loss terms use augmentations from a generator seeded with 0, so every epoch
        evaluates the same views.

        Returns:
            The names of :data:`FOCAL_TERMS` on held-out rows, and in nats
            ``mi/shared_infonce_lower_bound`` = log(B) - InfoNCE of the normalised shared
            embeddings of clean inputs and ``mi/specific{1,2}_infonce_lower_bound`` = log(B) -
            ``specific_infonce{1,2}``.
        """
        generator = torch.Generator(device=x1.device).manual_seed(0)
        terms = {name: float(value) for name, value in self.loss_terms(x1, x2, generator=generator).items()}

        c1 = F.normalize(self.shared1(x1), dim=1)
        c2 = F.normalize(self.shared2(x2), dim=1)
        clean_infonce = float(symmetric_infonce(c1, c2, self.method.temperature))
        log_batch = math.log(x1.shape[0])
        return {
            **terms,
            "mi/shared_infonce_lower_bound": log_batch - clean_infonce,
            "mi/specific1_infonce_lower_bound": log_batch - terms["specific_infonce1"],
            "mi/specific2_infonce_lower_bound": log_batch - terms["specific_infonce2"],
        }


def focal_phases(method: MethodSpec, x1_dim: int, x2_dim: int) -> list[Phase]:
    """Return the single ``joint`` phase of FOCAL.

    Args:
        method: Resolved method settings. ``method.focal`` contains FOCAL's own settings.
        x1_dim: Feature dimension of modality 1.
        x2_dim: Feature dimension of modality 2.

    Returns:
        One phase that trains all four encoders and yields every representation.
    """
    return joint_phase(
        method.focal,
        lambda: FocalModel(x1_dim, x2_dim, method),
        FOCAL_TERMS,
        FOCAL_DIAGNOSTICS,
    )
