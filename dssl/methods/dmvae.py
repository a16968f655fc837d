"""DMVAE baseline (Lee & Pavlovic 2021), trained as the DisentangledSSL reference code trains it.

Each modality m has one encoder whose output is split into four blocks of ``embed_dim``: the
mean and log-variance of a Gaussian shared posterior q(zs | x_m) and of a Gaussian private
(specific) posterior q(zp | x_m). The joint shared posterior is the product of the two shared
experts. Decoder m maps concat(zp_m, zs) back to x_m. With one reparameterised sample of each
of the five posteriors (private 1, private 2, shared 1, shared 2, product):

    recon       = MSE(dec1(zp1, zs_poe), x1) + MSE(dec2(zp2, zs_poe), x2)
    recon_cross = MSE(dec1(zp1, zs2), x1) + MSE(dec2(zp2, zs1), x2)
    kl          = E_rows[KL(q_p1) + KL(q_p2) + 2 KL(q_poe)]
    kl_cross    = E_rows[KL(q_p1) + KL(q_p2) + KL(q_s1) + KL(q_s2)]
    loss = recon + a F kl + cross_weight (recon_cross + a F kl_cross)

KL(q) is the divergence from q to N(0, I), summed over the latent coordinates. MSE is the mean
squared error per coordinate: for d_m coordinates it is the negative log-likelihood of
N(x_hat, (d_m / 2) I) up to a constant. F is the global batch size with ``kl_reduction:
batch_sum``, because the reference sums its KL terms over the batch, and 1 with ``row_mean``.
The logged ``kl`` and ``kl_cross`` are per-row values in nats, whatever F is.

Log-variances pass through :func:`soft_clamp_logvar`, which keeps them in
[:data:`LOGVAR_MIN`, :data:`LOGVAR_MAX`] = [-20, 15] smoothly and is the identity to within
5e-5 on [-5, 5]. Without it, nothing bounds the variances from below at ``a = 0`` (a point of
the reference's grid), and 1/var overflows in float32 once a log-variance falls below -88.

Data parallelism: every term is a mean over rows (F is the global batch size, a constant), and no
term compares rows with each other. So the mean of the workers' losses is the loss over the
global batch, and the loop's plain gradient averaging gives the single-process gradient exactly.
No row is gathered. The random draws of the samples and augmentations differ from a single
process, as for every sampling method.

Example:
    >>> from dssl.study.schema import MethodSpec
    >>> method = MethodSpec(name="dmvae", hidden_dim=32, embed_dim=4, dmvae={"a": 1e-3})
    >>> model = DmvaeModel(10, 12, method)
    >>> sorted(model.loss_terms(torch.randn(8, 10), torch.randn(8, 12)))
    ['kl', 'kl_cross', 'loss', 'recon', 'recon_cross']
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from dssl.data.augment import augment
from dssl.methods.base import SINGLE_PROCESS, Phase, PhaseModel, joint_phase
from dssl.methods.disentangled_ssl import _augment_pair
from dssl.nn.encoders import MLPEncoder
from dssl.nn.precision import encoder_autocast
from dssl.objectives.infonce import symmetric_infonce
from dssl.train.distributed import DataParallelContext

if TYPE_CHECKING:
    from dssl.study.schema import MethodSpec

LOGVAR_MIN = -20.0
"""Lower bound of every posterior log-variance (standard deviation >= 4.5e-5)."""

LOGVAR_MAX = 15.0
"""Upper bound of every posterior log-variance (standard deviation <= 1808)."""

NUM_SAMPLES = 5
"""Posteriors sampled per step, in this order: private 1, private 2, shared 1, shared 2, product."""

DMVAE_TERMS = ("loss", "recon", "recon_cross", "kl", "kl_cross")
DMVAE_DIAGNOSTICS = (*DMVAE_TERMS, "mi/shared_infonce_lower_bound")

_DIAGNOSTICS_SEED = 0


def soft_clamp_logvar(raw: Tensor, low: float = LOGVAR_MIN, high: float = LOGVAR_MAX) -> Tensor:
    """Squash raw log-variances smoothly into [low, high].

    ``y = low + softplus(raw - low)`` bounds from below, then ``high - softplus(high - y)`` from
    above. Both steps are smooth and strictly increasing. Unlike a hard clamp, the map passes
    gradients just outside the bounds, and they decay as ``exp(-distance)`` further out.
    Away from the bounds the map is the identity up to about
    ``exp(-(high - raw)) + exp(-(raw - low))``.

    Args:
        raw: Unconstrained log-variances, any shape.
        low: Lower bound.
        high: Upper bound, > ``low``.

    Returns:
        Log-variances of the same shape, in [low, high].

    Raises:
        ValueError: If ``low >= high``.
    """
    if not low < high:
        raise ValueError(f"low must be < high, got low={low!r} and high={high!r}")
    lower_bounded = low + F.softplus(raw - low)
    return high - F.softplus(high - lower_bounded)


def product_of_experts(mu: Tensor, logvar: Tensor, prior_expert: bool = False) -> tuple[Tensor, Tensor]:
    """Combine diagonal Gaussian experts into their normalised product.

    The product of N(mu_e, var_e) is Gaussian with precision sum_e 1/var_e and mean
    sum_e w_e mu_e, w_e = (1/var_e) / sum_f (1/var_f). Both are computed from log-variances
    (log-sum-exp and softmax over the experts), so a tiny or huge variance neither overflows
    nor divides by zero.

    Args:
        mu: Expert means, shape (E, B, k).
        logvar: Expert log-variances, shape (E, B, k).
        prior_expert: Add N(0, I) as one more expert. The reference's DMVAE has no prior expert.

    Returns:
        ``(mu, logvar)`` of the product, each (B, k).

    Raises:
        ValueError: If the shapes differ or are not (E, B, k) with E >= 1.

    Example:
        >>> mu = torch.tensor([[[1.0]], [[3.0]]])
        >>> logvar = torch.log(torch.tensor([[[1.0]], [[4.0]]]))
        >>> mean, log_variance = product_of_experts(mu, logvar)
        >>> round(float(mean), 4), round(float(log_variance.exp()), 4)
        (1.4, 0.8)
    """
    if mu.shape != logvar.shape or mu.dim() != 3 or mu.shape[0] < 1:
        raise ValueError(
            f"mu and logvar must both have shape (E, B, k) with E >= 1, got {tuple(mu.shape)} and "
            f"{tuple(logvar.shape)}"
        )
    if prior_expert:
        zeros = torch.zeros_like(mu[:1])
        mu = torch.cat([mu, zeros])
        logvar = torch.cat([logvar, zeros])
    neg_logvar = -logvar
    product_logvar = -torch.logsumexp(neg_logvar, dim=0)
    weights = torch.softmax(neg_logvar, dim=0)
    return (weights * mu).sum(dim=0), product_logvar


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """Compute KL(N(mu, diag(exp(logvar))) || N(0, I)) per row.

    KL = 0.5 * sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j). The mean and variance parts
    add, so pairing one posterior's mean with another's variance, as the reference's cross KL
    does, gives the same sum over both posteriors.

    Args:
        mu: Means, shape (..., k).
        logvar: Log-variances, shape (..., k).

    Returns:
        KL in nats, shape (...).

    Raises:
        ValueError: If the shapes differ.
    """
    if mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must have the same shape, got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=-1)


@dataclasses.dataclass(frozen=True)
class Posteriors:
    """Posterior parameters of one batch, each (2, B, k) with index 0 for modality 1.

    Attributes:
        shared_mu: Means of q(zs | x_m).
        shared_logvar: Soft-clamped log-variances of q(zs | x_m).
        private_mu: Means of q(zp_m | x_m).
        private_logvar: Soft-clamped log-variances of q(zp_m | x_m).
    """

    shared_mu: Tensor
    shared_logvar: Tensor
    private_mu: Tensor
    private_logvar: Tensor


class DmvaeModel(PhaseModel):
    """DMVAE: Gaussian shared and private encoders per modality, a product of experts, two decoders.

    Encoders and decoders are MLPs with ``method.dmvae.num_hidden_layers`` hidden layers of
    ``method.hidden_dim`` and N(0, ``init_std``^2) weights. Encoder m maps x_m (B, d_m) to
    (B, 4k), k = ``method.embed_dim``, read as [shared mean, shared log-variance, private mean,
    private log-variance]. Decoder m maps (B, 2k) = concat(private, shared) to (B, d_m).

    Args:
        x1_dim: Feature dimension of modality 1.
        x2_dim: Feature dimension of modality 2.
        method: The resolved method settings; DMVAE reads ``method.dmvae`` and the shared
            sizes (``hidden_dim``, ``embed_dim``, ``init_std``, ``batch_size``, ``temperature``,
            ``precision``).
    """

    def __init__(self, x1_dim: int, x2_dim: int, method: MethodSpec) -> None:
        super().__init__()
        self.method = method
        self.spec = method.dmvae
        k = method.embed_dim
        layers = dict(
            hidden_dim=method.hidden_dim,
            num_hidden_layers=self.spec.num_hidden_layers,
            init_std=method.init_std,
        )
        self.encoder1 = MLPEncoder(x1_dim, 4 * k, **layers)
        self.encoder2 = MLPEncoder(x2_dim, 4 * k, **layers)
        self.decoder1 = MLPEncoder(2 * k, x1_dim, **layers)
        self.decoder2 = MLPEncoder(2 * k, x2_dim, **layers)

    @property
    def kl_factor(self) -> float:
        """F in the loss: the global batch size for ``batch_sum``, 1 for ``row_mean``."""
        return float(self.method.batch_size) if self.spec.kl_reduction == "batch_sum" else 1.0

    def posteriors(self, x1: Tensor, x2: Tensor) -> Posteriors:
        """Encode both modalities, x1 (B, d1) and x2 (B, d2), into their posterior parameters."""
        with encoder_autocast(self.method.precision, x1.device, enabled=self.training):
            out1, out2 = self.encoder1(x1), self.encoder2(x2)
        # (2, B, 4k) -> four (2, B, k) blocks in the encoder's output order.
        blocks = torch.stack([out1.float(), out2.float()]).chunk(4, dim=-1)
        shared_mu, shared_raw, private_mu, private_raw = blocks
        return Posteriors(
            shared_mu=shared_mu,
            shared_logvar=soft_clamp_logvar(shared_raw),
            private_mu=private_mu,
            private_logvar=soft_clamp_logvar(private_raw),
        )

    def representations(self, x1: Tensor, x2: Tensor) -> dict[str, Tensor]:
        """Return posterior means of clean inputs, each (B, embed_dim).

        ``shared1``/``shared2`` are the means of each modality's own shared posterior
        q(zs | x_m), and ``specific1``/``specific2`` the means of the private posteriors
        q(zp_m | x_m). These are the reference's embeddings. Means, not samples, keep the
        embeddings deterministic. The product-of-experts mean is not used, because it needs
        both modalities, while every method's ``shared1`` is a function of x1 alone.
        """
        posteriors = self.posteriors(x1, x2)
        return {
            "shared1": posteriors.shared_mu[0],
            "shared2": posteriors.shared_mu[1],
            "specific1": posteriors.private_mu[0],
            "specific2": posteriors.private_mu[1],
        }

    def loss_terms(
        self,
        x1: Tensor,
        x2: Tensor,
        parallel: DataParallelContext = SINGLE_PROCESS,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Compute the DMVAE loss terms of a local batch x1 (B, d1), x2 (B, d2).

        In training mode with ``augment`` on, both inputs are augmented first and the
        augmented rows are also the reconstruction targets, as in the reference.

        Args:
            x1: Modality-1 rows, (B, d1).
            x2: Modality-2 rows, (B, d2).
            parallel: Unused: every term is a row mean (see the module docstring).
            generator: Source of the augmentation and sampling noise; the default generator
                of the device when None.

        Returns:
            Scalar tensors ``loss``, ``recon``, ``recon_cross``, ``kl``, ``kl_cross``.
        """
        if self.training and self.spec.augment:
            x1, x2 = self._augment(x1, x2, generator)
        posteriors = self.posteriors(x1, x2)
        return self.terms_from_noise(x1, x2, posteriors, _standard_noise(posteriors, generator))

    def _augment(self, x1: Tensor, x2: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Augment both modalities' rows: one stacked call without a generator, else one call each."""
        spec = self.spec
        if generator is None:
            return _augment_pair(x1, x2, spec.noise_std, spec.drop_fraction)
        return (
            augment(x1, spec.noise_std, spec.drop_fraction, generator),
            augment(x2, spec.noise_std, spec.drop_fraction, generator),
        )

    def terms_from_noise(self, x1: Tensor, x2: Tensor, posteriors: Posteriors, noise: Tensor) -> dict[str, Tensor]:
        """Compute the loss terms with given standard-normal noise for the reparameterisation.

        Args:
            x1: Reconstruction targets of modality 1, (B, d1).
            x2: Reconstruction targets of modality 2, (B, d2).
            posteriors: The posteriors of x1 and x2.
            noise: Standard-normal draws, (5, B, k), in the order of :data:`NUM_SAMPLES`.

        Returns:
            Scalar tensors ``loss``, ``recon``, ``recon_cross``, ``kl``, ``kl_cross``.

        Raises:
            ValueError: If ``noise`` does not have shape (5, B, k).
        """
        expected = (NUM_SAMPLES, *posteriors.shared_mu.shape[1:])
        if tuple(noise.shape) != expected:
            raise ValueError(f"noise must have shape {expected}, got {tuple(noise.shape)}")
        product_mu, product_logvar = product_of_experts(
            posteriors.shared_mu, posteriors.shared_logvar, prior_expert=self.spec.prior_expert
        )
        # All five posteriors stacked as (5, B, k): private 1, private 2, shared 1, shared 2, product.
        mu = torch.cat([posteriors.private_mu, posteriors.shared_mu, product_mu.unsqueeze(0)])
        logvar = torch.cat([posteriors.private_logvar, posteriors.shared_logvar, product_logvar.unsqueeze(0)])
        z = mu + noise * torch.exp(0.5 * logvar)
        private1, private2, shared1, shared2, product = z.unbind(0)

        batch = x1.shape[0]
        # Self (rows [:B]) and cross (rows [B:]) reconstructions go through each decoder at once.
        inputs1 = torch.cat([torch.cat([private1, product], 1), torch.cat([private1, shared2], 1)])
        inputs2 = torch.cat([torch.cat([private2, product], 1), torch.cat([private2, shared1], 1)])
        with encoder_autocast(self.method.precision, x1.device, enabled=self.training):
            out1, out2 = self.decoder1(inputs1), self.decoder2(inputs2)
        out1, out2 = out1.float(), out2.float()
        recon = F.mse_loss(out1[:batch], x1) + F.mse_loss(out2[:batch], x2)
        recon_cross = F.mse_loss(out1[batch:], x1) + F.mse_loss(out2[batch:], x2)

        kl_rows = kl_to_standard_normal(mu, logvar)  # (5, B)
        kl = (kl_rows[0] + kl_rows[1] + 2.0 * kl_rows[4]).mean()
        kl_cross = kl_rows[:4].sum(dim=0).mean()

        weight = self.spec.a * self.kl_factor
        loss = recon + weight * kl + self.spec.cross_weight * (recon_cross + weight * kl_cross)
        return {"loss": loss, "recon": recon, "recon_cross": recon_cross, "kl": kl, "kl_cross": kl_cross}

    @torch.no_grad()
    def diagnostics(self, x1: Tensor, x2: Tensor) -> dict[str, float]:
        """Compute held-out terms of one batch of clean inputs with a fixed sampling seed.

        Returns:
            The loss terms of :meth:`loss_terms` (no augmentation) and
            ``mi/shared_infonce_lower_bound`` = log(B) - symmetric InfoNCE of the L2-normalised
            shared means (nats, at ``method.temperature``). The bound is comparable with the
            other methods' shared bound; DMVAE does not train on it.
        """
        generator = torch.Generator(device=x1.device).manual_seed(_DIAGNOSTICS_SEED)
        was_training = self.training
        self.eval()
        try:
            posteriors = self.posteriors(x1, x2)
            terms = self.terms_from_noise(x1, x2, posteriors, _standard_noise(posteriors, generator))
        finally:
            self.train(was_training)
        shared = posteriors.shared_mu
        infonce = symmetric_infonce(
            F.normalize(shared[0], dim=1), F.normalize(shared[1], dim=1), self.method.temperature
        )
        metrics = {name: float(value) for name, value in terms.items()}
        metrics["mi/shared_infonce_lower_bound"] = math.log(x1.shape[0]) - float(infonce)
        return metrics


def _standard_noise(posteriors: Posteriors, generator: torch.Generator | None) -> Tensor:
    """Draw the (5, B, k) standard-normal noise of one step's reparameterised samples."""
    mu = posteriors.shared_mu
    shape = (NUM_SAMPLES, *mu.shape[1:])
    return torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)


def dmvae_phases(method: MethodSpec, x1_dim: int, x2_dim: int) -> list[Phase]:
    """Return the single ``joint`` phase of DMVAE.

    Args:
        method: The resolved method settings. DMVAE's own are in ``method.dmvae``.
        x1_dim: Feature dimension of modality 1.
        x2_dim: Feature dimension of modality 2.

    Returns:
        One phase that trains encoders and decoders together and yields all four representations.
    """
    return joint_phase(
        method.dmvae,
        lambda: DmvaeModel(x1_dim, x2_dim, method),
        DMVAE_TERMS,
        DMVAE_DIAGNOSTICS,
    )
