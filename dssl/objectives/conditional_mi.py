"""Step-1 penalty: an upper bound on the conditional mutual information I(Z1; X1 | X2).

I(Z1; X1 | X2) <= E KL(p(z1 | x1) || p(z2 | x2)). For von Mises-Fisher heads with a shared
concentration kappa in dimension d the KL is kappa * A_d(kappa) * (1 - cos(mu1, mu2)), with
A_d the mean resultant length. The penalty comes on two scales:

- ``"cosine"``: -mean cos(mu1, mu2). It drops the constant and the factor kappa * A_d(kappa), so
  beta_cos * penalty_cos and beta_kl * penalty_kl have equal gradients when
  beta_cos = kappa * A_d(kappa) * beta_kl (about 951.7 * beta_kl at d = 100, kappa = 1000).
- ``"kl"``: mean kappa * A_d(kappa) * (1 - cos(mu1, mu2)), the KL itself in nats.
"""

from __future__ import annotations

import logging
import math

from torch import Tensor
from torch.nn import functional as F

from dssl.nn.gaussian import kl_gaussian_unit_variance
from dssl.nn.vmf import mean_resultant_length

logger = logging.getLogger(__name__)

SCALES = ("cosine", "kl")
HEADS = ("vmf", "gaussian")


def _check_head(head: str) -> None:
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}.")


def _check_kappa(kappa: float | None) -> float:
    if kappa is None:
        raise ValueError("kappa is required for the vmf head on the KL scale; got None.")
    kappa_float = float(kappa)
    if not (math.isfinite(kappa_float) and kappa_float >= 0.0):
        raise ValueError(f"kappa must be finite and >= 0, got {kappa!r}.")
    return kappa_float


def _check_pair(mu1: Tensor, mu2: Tensor) -> None:
    if mu1.dim() != 2 or mu1.shape != mu2.shape:
        raise ValueError(
            f"mu1 and mu2 must both have shape (B, d), got {tuple(mu1.shape)} and {tuple(mu2.shape)}."
        )


def _kl_scale_factor(kappa: float, dim: int) -> float:
    """Return kappa * A_d(kappa), the factor between the cosine and the KL scale."""
    return kappa * mean_resultant_length(kappa, dim)


def conditional_mi_penalty(
    mu1: Tensor,
    mu2: Tensor,
    scale: str,
    kappa: float | None = None,
    head: str = "vmf",
    unit_rows: bool = False,
) -> Tensor:
    """Compute the batch-mean conditional-MI penalty between the two modalities' posteriors.

    Args:
        mu1: Posterior means of modality 1, shape (B, d). For the vmf head they are mean
            directions; they are normalised again here, so any non-zero rows are accepted.
        mu2: Posterior means of modality 2, shape (B, d).
        scale: ``"cosine"`` returns -mean cos(mu1, mu2) (vmf only). ``"kl"`` returns the mean
            KL in nats: kappa * A_d(kappa) * (1 - cos) for vmf, 0.5 * ||mu1 - mu2||^2 for gaussian.
        kappa: vMF concentration, required for ``head="vmf"`` with ``scale="kl"``.
        head: ``"vmf"`` or ``"gaussian"``.
        unit_rows: For the vmf head, whether every row of ``mu1`` and ``mu2`` already has unit
            norm (as the vMF and deterministic heads return them). The cosine is then the row
            dot product, which skips two normalisations (about 3x faster forward and backward
            at B = 256, d = 100 on one CPU thread). Rows that are not unit give a wrong value.

    Returns:
        Scalar penalty.

    Raises:
        ValueError: On an unknown scale or head, ``scale="cosine"`` with the gaussian head,
            a missing or invalid kappa, or mismatched shapes.

    Note:
        For unit-variance Gaussians KL(p1 || p2) = KL(p2 || p1) = 0.5 * ||mu1 - mu2||^2, so the
        returned value is each direction and also their mean. The sum of both directions,
        ||mu1 - mu2||^2, is twice as large; a beta tuned on that sum must be doubled here.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}.")
    _check_head(head)
    _check_pair(mu1, mu2)

    if head == "gaussian":
        if scale != "kl":
            raise ValueError(
                f"scale {scale!r} is defined for the vmf head only; use scale='kl' with head='gaussian'."
            )
        return kl_gaussian_unit_variance(mu1, mu2).mean()

    cosine = (mu1 * mu2).sum(dim=-1) if unit_rows else F.cosine_similarity(mu1, mu2, dim=-1)
    if scale == "cosine":
        return -cosine.mean()

    factor = _kl_scale_factor(_check_kappa(kappa), mu1.shape[-1])
    return factor * (1.0 - cosine).mean()


def beta_cosine_to_kl(beta_cos: float, kappa: float, dim: int) -> float:
    """Convert a penalty weight from the cosine scale to the KL scale: beta_cos / (kappa A_d(kappa)).

    Args:
        beta_cos: Weight on the cosine scale, >= 0.
        kappa: vMF concentration, > 0.
        dim: Embedding dimension d >= 2.

    Returns:
        The weight on the KL scale that gives the same gradients.

    Raises:
        ValueError: If kappa is not positive and finite, or ``dim`` < 2.

    Example:
        >>> round(beta_cosine_to_kl(951.7008547, kappa=1000.0, dim=100), 6)
        1.0
    """
    kappa_float = _check_kappa(kappa)
    if kappa_float == 0.0:
        raise ValueError("kappa must be > 0 to convert to the KL scale, got 0.")
    return float(beta_cos) / _kl_scale_factor(kappa_float, dim)


def beta_kl_to_cosine(beta_kl: float, kappa: float, dim: int) -> float:
    """Convert a penalty weight from the KL scale to the cosine scale: beta_kl * kappa A_d(kappa).

    Args:
        beta_kl: Weight on the KL scale, >= 0.
        kappa: vMF concentration, >= 0.
        dim: Embedding dimension d >= 2.

    Returns:
        The weight on the cosine scale that gives the same gradients.

    Raises:
        ValueError: If kappa is negative or not finite, or ``dim`` < 2.

    Example:
        >>> round(beta_kl_to_cosine(1.0, kappa=1000.0, dim=100), 1)
        951.7
    """
    return float(beta_kl) * _kl_scale_factor(_check_kappa(kappa), dim)


def conditional_mi_upper_bound_nats(
    mu1: Tensor,
    mu2: Tensor,
    kappa: float | None,
    head: str = "vmf",
) -> Tensor:
    """Compute the diagnostic E KL upper bound on I(Z1; X1 | X2) in nats.

    The KL is symmetrised as the mean of the two directions. For equal-kappa vMF posteriors
    and for unit-variance Gaussians both directions are equal, so the value is
    mean kappa * A_d(kappa) * (1 - cos) or mean 0.5 * ||mu1 - mu2||^2. The result keeps the
    autograd graph; call it under ``torch.no_grad()`` when only logging it.

    Args:
        mu1: Posterior means of modality 1, shape (B, d).
        mu2: Posterior means of modality 2, shape (B, d).
        kappa: vMF concentration (required for ``head="vmf"``, ignored for the gaussian head).
        head: ``"vmf"`` or ``"gaussian"``.

    Returns:
        Scalar tensor in nats.

    Raises:
        ValueError: On an unknown head, a missing or invalid kappa, or mismatched shapes.
    """
    _check_head(head)
    _check_pair(mu1, mu2)

    if head == "gaussian":
        forward_kl = kl_gaussian_unit_variance(mu1, mu2)
        backward_kl = kl_gaussian_unit_variance(mu2, mu1)
        return (0.5 * (forward_kl + backward_kl)).mean()

    factor = _kl_scale_factor(_check_kappa(kappa), mu1.shape[-1])
    cosine = F.cosine_similarity(mu1, mu2, dim=-1)
    return factor * (1.0 - cosine).mean()
