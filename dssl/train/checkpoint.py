"""Save and load a :class:`~dssl.train.loop.TrainingState` as a checkpoint folder."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from dssl.train.loop import TrainingState

STATE_FILE = "trial_state.pt"


def save_state(state: TrainingState, folder: str | Path) -> Path:
    """Write ``state`` to ``folder/trial_state.pt`` and return the file path."""
    path = Path(folder) / STATE_FILE
    torch.save(state.to_dict(), path)
    return path


def load_state(folder: str | Path) -> TrainingState:
    """Read the state that :func:`save_state` wrote; only tensors and plain containers load."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} not found; the folder contains no dssl training state")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise pickle.UnpicklingError(
            f"checkpoint file {path} contains objects other than tensors and plain containers, so it was "
            f"not written by dssl and is not loaded; remove the checkpoint folder to start the trial "
            f"from epoch 0. {error}"
        ) from error
    return TrainingState.from_dict(payload)
