"""The interface between methods and the training loop.

A method is a list of :class:`Phase` objects that the loop trains one after the other, with
epoch numbers that run on across phases. DisentangledSSL has two phases (``step1`` trains the
shared encoders, ``step2`` the specific encoders on top of the frozen ones); the joint
baselines have one. Each phase builds a :class:`PhaseModel` from the models of the phases
before it, so a phase can freeze and reuse them.

Representation names that :meth:`PhaseModel.representations` returns:

- ``shared1``, ``shared2``: the shared embedding of each modality, (B, k);
- ``specific1``, ``specific2``: the specific embedding of each modality, (B, k).

Evaluation concatenates them into ``shared``, ``specific`` and ``both``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dssl.train.distributed import DataParallelContext

SINGLE_PROCESS = DataParallelContext()
REPRESENTATION_NAMES = ("shared1", "shared2", "specific1", "specific2")


class PhaseModel(nn.Module):
    """A model that one phase trains: loss terms for a batch, diagnostics and embeddings.

    Subclasses implement :meth:`loss_terms`, :meth:`diagnostics` and :meth:`representations`.
    Parameters of earlier phases that a model contains as frozen submodules are excluded from
    :meth:`trainable_parameters` and :meth:`checkpoint_state`.
    """

    def loss_terms(
        self, x1: torch.Tensor, x2: torch.Tensor, parallel: DataParallelContext = SINGLE_PROCESS
    ) -> dict[str, torch.Tensor]:
        """Return the scalar loss terms of a local batch x1 (B, d1), x2 (B, d2); ``"loss"`` is minimised."""
        raise NotImplementedError

    def diagnostics(self, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, float]:
        """Return held-out metrics of one batch. Keys starting with ``mi/`` are logged as they are."""
        raise NotImplementedError

    def representations(self, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return the evaluation embeddings of clean inputs, keyed by :data:`REPRESENTATION_NAMES`."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Return the parameters this phase optimises (by default, all that require gradients)."""
        return [parameter for parameter in self.parameters() if parameter.requires_grad]

    def frozen_prefixes(self) -> tuple[str, ...]:
        """Return the state-dict prefixes of submodules that belong to earlier phases."""
        return ()

    def checkpoint_state(self) -> dict[str, Any]:
        """Return this phase's own state dict, without the submodules of earlier phases."""
        prefixes = self.frozen_prefixes()
        return {key: value for key, value in self.state_dict().items() if not _has_prefix(key, prefixes)}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Load a state saved by :meth:`checkpoint_state`; the earlier phases' weights stay as they are."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        prefixes = self.frozen_prefixes()
        missing = [key for key in missing if not _has_prefix(key, prefixes)]
        if missing or unexpected:
            raise RuntimeError(
                f"{type(self).__name__}: checkpoint does not match the model: missing keys {missing}, "
                f"unexpected keys {unexpected}"
            )


def _has_prefix(key: str, prefixes: tuple[str, ...]) -> bool:
    return bool(prefixes) and key.startswith(prefixes)


@dataclasses.dataclass(frozen=True)
class Phase:
    """One training phase of a method.

    Attributes:
        name: Metric prefix and checkpoint name, for example ``"step1"``.
        epochs: Epochs of this phase.
        lr: Initial learning rate of its Adam optimiser (cosine-annealed to 0 over ``epochs``).
        build: Builds the phase's model from the trained models of the earlier phases.
        train_terms: Names of the loss terms that :meth:`PhaseModel.loss_terms` returns.
        diagnostics: Names of the held-out metrics that :meth:`PhaseModel.diagnostics` returns.
        representations: Names that :meth:`PhaseModel.representations` returns.
    """

    name: str
    epochs: int
    lr: float
    build: Callable[[list[PhaseModel]], PhaseModel]
    train_terms: tuple[str, ...]
    diagnostics: tuple[str, ...]
    representations: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"phase {self.name!r}: epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"phase {self.name!r}: lr must be > 0, got {self.lr}")
        unknown = set(self.representations) - set(REPRESENTATION_NAMES)
        if unknown:
            raise ValueError(
                f"phase {self.name!r}: unknown representation names {sorted(unknown)}; "
                f"expected names from {REPRESENTATION_NAMES}"
            )

    def metric_key(self, diagnostic: str) -> str:
        """Return the logged name of a held-out diagnostic: ``mi/...`` as is, else ``{phase}/val/{name}``."""
        return diagnostic if diagnostic.startswith("mi/") else f"{self.name}/val/{diagnostic}"


JOINT_PHASE = "joint"


def joint_phase(
    settings: Any,
    build: Callable[[], PhaseModel],
    train_terms: tuple[str, ...],
    diagnostics: tuple[str, ...],
) -> list[Phase]:
    """Return the single ``joint`` phase of a method that trains all its encoders together.

    Args:
        settings: The method's own settings section, with ``epochs`` and ``lr``.
        build: Builds the method's model; there are no earlier phases to pass to it.
        train_terms: Names of the model's loss terms.
        diagnostics: Names of the model's held-out metrics.

    Returns:
        One phase that yields all four representations.
    """
    return [
        Phase(
            name=JOINT_PHASE,
            epochs=settings.epochs,
            lr=settings.lr,
            build=lambda previous: build(),
            train_terms=train_terms,
            diagnostics=diagnostics,
            representations=REPRESENTATION_NAMES,
        )
    ]
