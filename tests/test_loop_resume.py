"""A trial restarted from a checkpoint trains exactly as an uninterrupted one (no Ray).

The restarted case that matters most on clusters: the trial published its own step-1 model
(step-1 reuse) after its last checkpoint was taken, then died. On restart it finds that model
as pretrained, and the older checkpoint must not replace it.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from dssl.data.dataset import PairedDataset, load_dataset
from dssl.study.schema import MethodSpec
from dssl.train.loop import TrainingState, train_trial

STEP1_EPOCHS = 4
STEP2_EPOCHS = 2


@pytest.fixture(scope="module")
def dataset() -> PairedDataset:
    return load_dataset("synthetic", n_samples=1200, seed=0, test_fraction=0.2)


def _method() -> MethodSpec:
    return MethodSpec.model_validate(
        {
            "hidden_dim": 32,
            "embed_dim": 8,
            "batch_size": 64,
            "step1": {"epochs": STEP1_EPOCHS, "lr": 1.0e-3},
            "step2": {"epochs": STEP2_EPOCHS, "lr": 1.0e-3},
        }
    )


def _train(dataset: PairedDataset, **options: Any) -> tuple[dict[int, dict[str, float]], dict[int, TrainingState]]:
    """Train with seed 3; return each reported epoch's metrics and a copy of its state."""
    metrics: dict[int, dict[str, float]] = {}
    states: dict[int, TrainingState] = {}

    def record(epoch: int, values: dict[str, float], state: TrainingState) -> None:
        metrics[epoch] = {key: value for key, value in values.items() if "samples_per_second" not in key}
        states[epoch] = copy.deepcopy(state)

    train_trial(dataset, _method(), 3, on_epoch_end=record, diagnostics_samples=128, **options)
    return metrics, states


@pytest.fixture(scope="module")
def uninterrupted(dataset: PairedDataset) -> tuple[dict[int, dict[str, float]], dict[int, TrainingState]]:
    return _train(dataset)


def _assert_same_metrics(expected: dict[str, float], got: dict[str, float], epoch: int) -> None:
    assert set(got) == set(expected), epoch
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), f"epoch {epoch}: {key}"


def test_resume_continues_like_an_uninterrupted_run(dataset: PairedDataset, uninterrupted: Any) -> None:
    expected, states = uninterrupted
    metrics, _ = _train(dataset, resume_from=states[2])

    assert sorted(metrics) == list(range(3, STEP1_EPOCHS + STEP2_EPOCHS + 1))
    for epoch, values in metrics.items():
        _assert_same_metrics(expected[epoch], values, epoch)


def test_own_step1_model_wins_over_an_older_checkpoint(dataset: PairedDataset, uninterrupted: Any) -> None:
    expected, states = uninterrupted
    final_step1 = states[STEP1_EPOCHS].models["step1"]

    # The checkpoint of epoch 2 predates the end of step 1; the pretrained model is step 1's end.
    metrics, restarted = _train(dataset, resume_from=states[2], pretrained={"step1": final_step1})

    assert sorted(metrics) == list(range(STEP1_EPOCHS + 1, STEP1_EPOCHS + STEP2_EPOCHS + 1))
    for epoch, values in metrics.items():
        _assert_same_metrics(expected[epoch], values, epoch)
    last = restarted[STEP1_EPOCHS + STEP2_EPOCHS].models["step1"]
    for name, tensor in final_step1.items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(last[name], tensor), name
