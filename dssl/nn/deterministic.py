"""A deterministic head: the sample is the mean direction itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class DeterministicHead:
    """Map an embedding e (B, d) to mu = e / ||e|| and return (mu, mu); nothing is sampled.

    The CLIP baseline with deterministic encoders uses it. Its penalty is the cosine form.
    """

    def sample(self, e: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mu = F.normalize(e, dim=-1, eps=1e-12)
        return mu, mu
