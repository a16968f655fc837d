"""The CLIP (InfoNCE only) baseline: DisentangledSSL step 1 with beta = 0 and no step 2.

The shared encoders are trained with the symmetric cross-modal InfoNCE alone:

    e_m = f_cm(x_m)                       deterministic shared embedding, (B, k)
    mu_m, z_m = head(e_m)                 vMF sample, or z = e / ||e|| with step1.head: deterministic
    loss = InfoNCE(z1, z2; tau)

Every other step-1 setting (head, kappa, epochs, lr, augmentation) applies as in DisentangledSSL,
and the phase is named ``step1``, so the metrics have the names of DisentangledSSL's step 1.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dssl.methods.base import Phase
from dssl.methods.disentangled_ssl import disentangled_ssl_phases

if TYPE_CHECKING:
    from dssl.study.schema import MethodSpec

logger = logging.getLogger(__name__)

# Overridden (beta, step 2 enabled) pairs already logged, so that repeated phase builds (metric
# name checks, every worker's start) log each one once per process.
_LOGGED_OVERRIDES: set[tuple[float, bool]] = set()


def clip_method(method: MethodSpec) -> MethodSpec:
    """Return a copy of ``method`` with ``step1.beta = 0`` and ``step2.enabled = False``.

    Args:
        method: Resolved method settings; ``method.name`` is normally ``"clip"``.

    Returns:
        The settings that the CLIP baseline trains with. ``method`` itself is not changed.
    """
    step1 = method.step1.model_copy(update={"beta": 0.0})
    step2 = method.step2.model_copy(update={"enabled": False})
    return method.model_copy(update={"step1": step1, "step2": step2})


def _log_override(method: MethodSpec) -> None:
    key = (method.step1.beta, method.step2.enabled)
    if key == (0.0, False) or key in _LOGGED_OVERRIDES:
        return
    _LOGGED_OVERRIDES.add(key)
    logger.info(
        "method 'clip' trains step 1 with beta 0 and without step 2, so step1.beta=%r and "
        "step2.enabled=%r are ignored",
        method.step1.beta,
        method.step2.enabled,
    )


def clip_phases(method: MethodSpec, x1_dim: int, x2_dim: int) -> list[Phase]:
    """Return the single ``step1`` phase of the CLIP baseline.

    A non-zero ``step1.beta`` or an enabled step 2 in ``method`` is overridden, not rejected,
    so a study can compare ``clip`` with ``disentangled_ssl`` on one set of method settings. The
    override is logged once at INFO for each distinct (beta, step2.enabled) pair.

    Args:
        method: Resolved method settings; ``step1.head: deterministic`` gives the variant with
            deterministic heads (no vMF sampling).
        x1_dim: Feature dimension of modality 1.
        x2_dim: Feature dimension of modality 2.

    Returns:
        One phase named ``step1`` that trains the shared encoders on InfoNCE alone.

    Example:
        >>> from dssl.study.schema import MethodSpec
        >>> phases = clip_phases(MethodSpec(name="clip"), 100, 100)
        >>> [phase.name for phase in phases], phases[0].representations
        (['step1'], ('shared1', 'shared2'))
    """
    _log_override(method)
    return disentangled_ssl_phases(clip_method(method), x1_dim, x2_dim)
