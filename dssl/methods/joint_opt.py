"""The JointOpt baseline: shared and specific encoders trained together from scratch.

JointOpt optimises the shared and the specific objectives of DisentangledSSL in one phase
instead of two, with no conditional-MI (beta) term. Per batch, with two augmented views
x' = T(x) and v = T(x') of each modality, stacked as (2B, d) rows [x' ; v]:

    e_m = f_cm(x_m)                          shared embedding, (2B, k)
    s_m = f_sm(concat(x_m, e_m))             specific embedding, (2B, k); e_m is not detached
    z_m = head(e_m)                          vMF sample (or e / ||e||), (2B, k)
    shared   = mean over the views of InfoNCE(z1, z2)             cross-modal, per view
    specific = InfoNCE(h1(x'), h1(v)) + InfoNCE(h2(x'), h2(v))    h1 = normalise(concat(s1, e2))
    ortho    = the step-2 orthogonality penalty of (s_m, e_m) over both views and modalities
    loss = 2 * shared / (1 + a) + a * specific / (1 + a) + lambda * ortho

This is the loss of the authors' reference ``JointDisenModel`` (jointdisen_mp.py). Every
gradient flows into both encoders: the shared encoder also learns from the specific and the
orthogonality terms. :class:`JointEncoderModel` contains the four encoders, and FOCAL
(:mod:`dssl.methods.focal`) reuses it with another loss.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from dssl.data.augment import augment
from dssl.methods.base import SINGLE_PROCESS, Phase, PhaseModel, joint_phase
from dssl.methods.disentangled_ssl import _gathered_infonce, _make_head, _overlap_penalty
from dssl.nn.encoders import MLPEncoder
from dssl.nn.precision import encoder_autocast
from dssl.objectives.conditional_mi import conditional_mi_upper_bound_nats
from dssl.objectives.infonce import symmetric_infonce
from dssl.train.distributed import DataParallelContext

if TYPE_CHECKING:
    from dssl.study.schema import MethodSpec

JOINT_OPT_TERMS = ("loss", "shared_infonce", "specific_infonce1", "specific_infonce2", "ortho")
JOINT_OPT_DIAGNOSTICS = (
    *JOINT_OPT_TERMS,
    "mi/shared_infonce_lower_bound",
    "mi/cmi_upper_bound_kl",
    "mi/specific1_infonce_lower_bound",
    "mi/specific2_infonce_lower_bound",
)


def augmented_views(
    x1: torch.Tensor,
    x2: torch.Tensor,
    noise_std: float,
    drop_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return both views of each modality stacked as [x' ; v], with x' = T(x) and v = T(x').

    The four augmentations draw from ``generator`` in the order x1', x2', v1, v2, as in
    DisentangledSSL's step 2.

    Args:
        x1: Modality-1 rows, (B, d1).
        x2: Modality-2 rows, (B, d2).
        noise_std: Std of the additive-noise transform.
        drop_fraction: Share of coordinates the drop transform zeroes.
        generator: Source of randomness; the device's default generator when None.

    Returns:
        ``(x1_views, x2_views)`` of shapes (2B, d1) and (2B, d2); rows [:B] are x', rows [B:] are v.
    """
    x1_first = augment(x1, noise_std, drop_fraction, generator)
    x2_first = augment(x2, noise_std, drop_fraction, generator)
    x1_second = augment(x1_first, noise_std, drop_fraction, generator)
    x2_second = augment(x2_first, noise_std, drop_fraction, generator)
    return torch.cat([x1_first, x1_second]), torch.cat([x2_first, x2_second])


def per_view_infonce(
    a: torch.Tensor, b: torch.Tensor, batch: int, temperature: float, parallel: DataParallelContext
) -> torch.Tensor:
    """Return the mean over the two views of InfoNCE(a, b) for view-stacked rows a, b (2B, k)."""
    first = _gathered_infonce(a[:batch], b[:batch], temperature, parallel)
    second = _gathered_infonce(a[batch:], b[batch:], temperature, parallel)
    return 0.5 * (first + second)


class JointEncoderModel(PhaseModel):
    """Shared and specific encoders of both modalities, trained together in one phase.

    ``shared_m`` maps x_m (B, d_m) to e_m (B, k); ``specific_m`` maps concat(x_m, e_m) to
    s_m (B, k). Subclasses define the loss.

    Args:
        x1_dim: Feature dimension of modality 1.
        x2_dim: Feature dimension of modality 2.
        method: The resolved method settings (``hidden_dim``, ``embed_dim``, ``init_std``).
        num_hidden_layers: Hidden layers of each of the four encoders.
    """

    def __init__(self, x1_dim: int, x2_dim: int, method: MethodSpec, num_hidden_layers: int) -> None:
        super().__init__()
        self.method = method
        encoder_args = dict(
            out_dim=method.embed_dim,
            hidden_dim=method.hidden_dim,
            num_hidden_layers=num_hidden_layers,
            init_std=method.init_std,
        )
        self.shared1 = MLPEncoder(x1_dim, **encoder_args)
        self.shared2 = MLPEncoder(x2_dim, **encoder_args)
        self.specific1 = MLPEncoder(x1_dim + method.embed_dim, **encoder_args)
        self.specific2 = MLPEncoder(x2_dim + method.embed_dim, **encoder_args)

    def encode(
        self, x1: torch.Tensor, x2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return e1, e2, s1, s2, each (B, k); the specific encoders see the shared embedding undetached."""
        e1 = self.shared1(x1)
        e2 = self.shared2(x2)
        s1 = self.specific1(torch.cat([x1, e1], dim=1))
        s2 = self.specific2(torch.cat([x2, e2], dim=1))
        return e1, e2, s1, s2

    def encode_views(
        self, x1_views: torch.Tensor, x2_views: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode view-stacked rows (2B, d_m), in mixed precision when training; outputs are float32."""
        with encoder_autocast(self.method.precision, x1_views.device, enabled=self.training):
            codes = self.encode(x1_views, x2_views)
        e1, e2, s1, s2 = (code.float() for code in codes)
        return e1, e2, s1, s2

    def representations(self, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return the raw embeddings e1, e2, s1, s2 of clean inputs, before any normalisation."""
        e1, e2, s1, s2 = self.encode(x1, x2)
        return {"shared1": e1, "shared2": e2, "specific1": s1, "specific2": s2}


class JointOptModel(JointEncoderModel):
    """JointOpt: the loss in the module docstring, weighted by ``method.joint_opt``.

    Args:
        x1_dim: Feature dimension of modality 1.
        x2_dim: Feature dimension of modality 2.
        method: The resolved method settings. ``method.joint_opt`` contains a, lambda, the head
            and the augmentation settings.

    Example:
        >>> from dssl.study.schema import MethodSpec
        >>> method = MethodSpec.model_validate(
        ...     {"name": "joint_opt", "hidden_dim": 16, "embed_dim": 4, "joint_opt": {"a": 10.0}}
        ... )
        >>> model = JointOptModel(6, 5, method)
        >>> terms = model.loss_terms(torch.randn(8, 6), torch.randn(8, 5))
        >>> sorted(terms) == sorted(JOINT_OPT_TERMS)
        True
    """

    def __init__(self, x1_dim: int, x2_dim: int, method: MethodSpec) -> None:
        settings = method.joint_opt
        super().__init__(x1_dim, x2_dim, method, settings.num_hidden_layers)
        self.head = _make_head(settings.head, settings.kappa)

    def loss_terms(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        parallel: DataParallelContext = SINGLE_PROCESS,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute the JointOpt loss terms for a local batch x1 (B, d1), x2 (B, d2).

        Args:
            x1: Modality-1 rows of this worker, (B, d1).
            x2: Modality-2 rows of this worker, (B, d2).
            parallel: Rank and world size; InfoNCE negatives and the orthogonality penalty's
                rows are gathered across workers.
            generator: Source of the augmentations and vMF samples; the default generator when None.

        Returns:
            ``loss``, ``shared_infonce`` (mean over the two views), ``specific_infonce1``,
            ``specific_infonce2`` and ``ortho``, all scalars.
        """
        settings = self.method.joint_opt
        batch = x1.shape[0]
        x1_views, x2_views = augmented_views(x1, x2, settings.noise_std, settings.drop_fraction, generator)
        e1, e2, s1, s2 = self.encode_views(x1_views, x2_views)

        # One head call on the stacked (4B, k) embeddings: rows [:2B] belong to modality 1.
        _, z = self.head.sample(torch.cat([e1, e2]), generator)
        shared = per_view_infonce(z[: 2 * batch], z[2 * batch :], batch, self.method.temperature, parallel)

        # As in DisentangledSSL's step 2, each joint code pairs the specific embedding with the
        # other modality's shared embedding; here that embedding is trained too.
        h1 = F.normalize(torch.cat([s1, e2], dim=1), dim=1)
        h2 = F.normalize(torch.cat([s2, e1], dim=1), dim=1)
        specific1 = _gathered_infonce(h1[:batch], h1[batch:], self.method.temperature, parallel)
        specific2 = _gathered_infonce(h2[:batch], h2[batch:], self.method.temperature, parallel)

        ortho = _overlap_penalty(s1, e1, s2, e2, batch, parallel)
        a = settings.a
        loss = 2.0 * shared / (1.0 + a) + a * (specific1 + specific2) / (1.0 + a) + settings.lam * ortho
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

        The loss terms use augmentations and vMF samples from a generator seeded with 0, so
        every epoch evaluates the same views.

        Returns:
            The names of :data:`JOINT_OPT_TERMS` on held-out rows, and in nats
            ``mi/shared_infonce_lower_bound`` = log(B) - InfoNCE of the shared samples of clean
            inputs, ``mi/cmi_upper_bound_kl`` = the symmetrised vMF KL of the clean inputs'
            mean directions, and ``mi/specific{1,2}_infonce_lower_bound`` = log(B) -
            ``specific_infonce{1,2}``.
        """
        generator = torch.Generator(device=x1.device).manual_seed(0)
        terms = {name: float(value) for name, value in self.loss_terms(x1, x2, generator=generator).items()}

        batch = x1.shape[0]
        mu, z = self.head.sample(torch.cat([self.shared1(x1), self.shared2(x2)]), generator)
        clean_infonce = float(symmetric_infonce(z[:batch], z[batch:], self.method.temperature))
        # NOTE: a deterministic head has no posterior; its bound is that of a vMF head with the
        # configured kappa, as in DisentangledSSL's step 1.
        upper = conditional_mi_upper_bound_nats(mu[:batch], mu[batch:], kappa=self.method.joint_opt.kappa, head="vmf")
        log_batch = math.log(batch)
        return {
            **terms,
            "mi/shared_infonce_lower_bound": log_batch - clean_infonce,
            "mi/cmi_upper_bound_kl": float(upper.mean()),
            "mi/specific1_infonce_lower_bound": log_batch - terms["specific_infonce1"],
            "mi/specific2_infonce_lower_bound": log_batch - terms["specific_infonce2"],
        }


def joint_opt_phases(method: MethodSpec, x1_dim: int, x2_dim: int) -> list[Phase]:
    """Return the single ``joint`` phase of JointOpt.

    Args:
        method: Resolved method settings. ``method.joint_opt`` contains JointOpt's own settings.
        x1_dim: Feature dimension of modality 1.
        x2_dim: Feature dimension of modality 2.

    Returns:
        One phase that trains all four encoders and yields every representation.
    """
    return joint_phase(
        method.joint_opt,
        lambda: JointOptModel(x1_dim, x2_dim, method),
        JOINT_OPT_TERMS,
        JOINT_OPT_DIAGNOSTICS,
    )
