"""Per-epoch MI and latent-R² diagnostics: the loop hook, the estimators' values and the settings."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dssl.data.dataset import PairedDataset, load_dataset
from dssl.eval.mi_diagnostics import (
    MIN_DIAGNOSTIC_ROWS,
    MIDiagnosticsSettings,
    compute_mi_diagnostics,
    embed_rows,
    pair_metric_names,
)
from dssl.study.metric_names import per_epoch_metric_names
from dssl.study.schema import EvalSpec, StudySpec, StudyValidationError, resolve_method, validate_study
from dssl.study.trial import _mi_diagnostics_settings
from dssl.train.loop import train_trial

STEP1_EPOCHS = 3
STEP2_EPOCHS = 3
EVERY_N_EPOCHS = 2
# Global epochs that are multiples of 2, plus the last epoch of each step (3 and 6).
SELECTED_EPOCHS = {2, 3, 4, 6}
LATENTS = ("z_s", "z_1", "z_2")


def _is_diagnostic(name: str) -> bool:
    return name.startswith(("r2/", "mi/specific1_shared1", "mi/specific2_shared2"))


def _study(step1_epochs: int = STEP1_EPOCHS, step2_enabled: bool = True, **eval_options: Any) -> StudySpec:
    return validate_study(
        {
            "name": "mi-diagnostics",
            "data": {"kind": "synthetic", "n_samples": 3000, "latent_dim": 5, "x_dim": 20, "seed": 0},
            "method": {
                "hidden_dim": 64,
                "embed_dim": 16,
                "batch_size": 128,
                "step1": {"epochs": step1_epochs, "lr": 1e-3},
                "step2": {"enabled": step2_enabled, "epochs": STEP2_EPOCHS, "lr": 1e-3},
            },
            "search": {
                "algorithm": "random",
                "num_trials": 1,
                "metric": "probe/shared/y_c",
                "mode": "max",
                "space": {"step1.beta": {"type": "loguniform", "low": 0.01, "high": 1.0}},
            },
            "eval": eval_options,
        }
    )


def _dataset(spec: StudySpec) -> PairedDataset:
    return load_dataset(spec.data.kind, **spec.data.model_dump(exclude={"kind"}))


def _train(spec: StudySpec) -> dict[int, dict[str, float]]:
    """Train the study's method for seed 0 and return every epoch's callback metrics."""
    torch.set_num_threads(1)
    recorded: dict[int, dict[str, float]] = {}
    train_trial(
        _dataset(spec),
        resolve_method(spec, {}),
        seed=0,
        on_epoch_end=lambda epoch, metrics, state: recorded.__setitem__(epoch, dict(metrics)),
        diagnostics_samples=256,
        mi_diagnostics=_mi_diagnostics_settings(spec, "tiny"),
    )
    return recorded


@pytest.fixture(scope="module")
def tiny_study() -> StudySpec:
    return _study(mi_every_n_epochs=EVERY_N_EPOCHS, mi_train_samples=1000, mi_eval_samples=512, mi_estimator_steps=100)


@pytest.fixture(scope="module")
def tiny_trial(tiny_study: StudySpec) -> dict[int, dict[str, float]]:
    return _train(tiny_study)


# --------------------------------------------------------------------------------------------
# The loop hook
# --------------------------------------------------------------------------------------------


def test_diagnostics_only_at_selected_epochs(tiny_trial: dict[int, dict[str, float]]) -> None:
    assert sorted(tiny_trial) == list(range(1, STEP1_EPOCHS + STEP2_EPOCHS + 1))
    epochs_with_diagnostics = {epoch for epoch, metrics in tiny_trial.items() if any(map(_is_diagnostic, metrics))}
    assert epochs_with_diagnostics == SELECTED_EPOCHS


def test_step1_epochs_report_shared_r2_only(tiny_trial: dict[int, dict[str, float]]) -> None:
    for epoch in (2, 3):
        names = {name for name in tiny_trial[epoch] if _is_diagnostic(name)}
        assert names == {f"r2/shared/{latent}" for latent in LATENTS}


def test_step2_epochs_report_pairs_and_all_r2(tiny_trial: dict[int, dict[str, float]]) -> None:
    expected = set(pair_metric_names(1)) | set(pair_metric_names(2))
    expected |= {f"r2/{r}/{latent}" for r in ("shared", "specific1", "specific2") for latent in LATENTS}
    for epoch in (4, 6):
        names = {name for name in tiny_trial[epoch] if _is_diagnostic(name)}
        assert names == expected


def test_diagnostic_values_are_finite(tiny_trial: dict[int, dict[str, float]]) -> None:
    for epoch in SELECTED_EPOCHS:
        for name, value in tiny_trial[epoch].items():
            if _is_diagnostic(name):
                assert math.isfinite(value), (epoch, name, value)
            if name.endswith("_below_zero"):
                assert value in (0.0, 1.0)


def test_reported_names_match_metric_names(tiny_study: StudySpec, tiny_trial: dict[int, dict[str, float]]) -> None:
    reported = {name for metrics in tiny_trial.values() for name in metrics if _is_diagnostic(name)}
    declared = {name for name in per_epoch_metric_names(tiny_study) if _is_diagnostic(name)}
    assert reported == declared


def test_shared_r2_favours_zs_over_z1(tiny_trial: dict[int, dict[str, float]]) -> None:
    # Measured at the last step-1 epoch: r2/shared/z_s 0.41, r2/shared/z_1 -0.02 (margin 0.42).
    last_step1 = tiny_trial[STEP1_EPOCHS]
    assert last_step1["r2/shared/z_s"] - last_step1["r2/shared/z_1"] > 0.2
    assert last_step1["r2/shared/z_s"] - last_step1["r2/shared/z_2"] > 0.2


def test_null_turns_diagnostics_off() -> None:
    spec = _study(step1_epochs=1, step2_enabled=False, mi_every_n_epochs=None)
    recorded = _train(spec)
    assert list(recorded) == [1]
    assert not [name for name in recorded[1] if _is_diagnostic(name)]
    assert not [name for name in per_epoch_metric_names(spec) if _is_diagnostic(name)]


def test_embed_rows_restores_training_mode() -> None:
    from dssl.methods.disentangled_ssl import SharedModel

    spec = _study()
    torch.manual_seed(0)
    model = SharedModel(20, 20, spec.method)
    model.train()
    x1, x2 = torch.randn(8, 20), torch.randn(8, 20)
    embedded = embed_rows([model], x1, x2)
    assert model.training
    assert set(embedded) == {"shared1", "shared2"}
    assert not embedded["shared1"].requires_grad


# --------------------------------------------------------------------------------------------
# The estimators
# --------------------------------------------------------------------------------------------


def _gaussian_pair(rows: int, generator: torch.Generator, sign: float = 1.0) -> dict[str, torch.Tensor]:
    """Zs standard normal (rows, 4) and Zc = sign * 0.8 Zs + 0.6 noise: correlation 0.8 per coordinate."""
    specific = torch.randn(rows, 4, generator=generator)
    shared = sign * 0.8 * specific + 0.6 * torch.randn(rows, 4, generator=generator)
    return {"specific1": specific, "shared1": shared}


def test_club_above_infonce_on_gaussian_pair() -> None:
    # q(zc | zs) is a Gaussian family that contains the true conditional, so CLUB is an upper
    # bound in expectation (population value 4 * 0.64 / 0.36 = 7.11 nats); the critic's InfoNCE
    # is a lower bound for any critic. The true MI is -2 * log(0.36) = 2.04 nats.
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    train, held_out = _gaussian_pair(2000, generator), _gaussian_pair(1024, generator)
    settings = MIDiagnosticsSettings(train_samples=2000, eval_samples=1024, estimator_steps=400)
    metrics = compute_mi_diagnostics(train, held_out, {}, settings, seed=0)
    true_mi = -2.0 * math.log(0.36)

    assert metrics["mi/specific1_shared1_club"] > metrics["mi/specific1_shared1_infonce"]
    assert metrics["mi/specific1_shared1_club"] > true_mi
    assert metrics["mi/specific1_shared1_infonce"] < true_mi + 0.1
    assert metrics["mi/specific1_shared1_infonce"] > 0.5
    assert metrics["mi/specific1_shared1_club_below_zero"] == 0.0


def test_club_below_zero_is_flagged_not_clipped(caplog: pytest.LogCaptureFixture) -> None:
    # The held-out relation is the training one with its sign flipped, so q predicts the wrong
    # mean and scores matched held-out pairs worse than mismatched ones.
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(1)
    train, held_out = _gaussian_pair(1000, generator), _gaussian_pair(512, generator, sign=-1.0)
    settings = MIDiagnosticsSettings(train_samples=1000, eval_samples=512, estimator_steps=200, trial="trial-x")
    with caplog.at_level(logging.WARNING, logger="dssl.eval.mi_diagnostics"):
        metrics = compute_mi_diagnostics(train, held_out, {}, settings, seed=0, epoch=7)

    value = metrics["mi/specific1_shared1_club"]
    assert value < -1.0
    assert metrics["mi/specific1_shared1_club_below_zero"] == 1.0
    warnings = [record.getMessage() for record in caplog.records if record.name == "dssl.eval.mi_diagnostics"]
    assert len(warnings) == 1
    assert "trial trial-x epoch 7" in warnings[0]
    assert f"{value:.6g} nats" in warnings[0]


def test_r2_metrics_use_held_out_latents() -> None:
    generator = np.random.default_rng(0)
    latent = generator.normal(size=(400, 2)).astype(np.float32)
    noise = generator.normal(size=(400, 3)).astype(np.float32)
    held_out = {
        "shared1": np.concatenate([latent, noise[:, :1]], axis=1),
        "shared2": noise[:, 1:],
    }
    metrics = compute_mi_diagnostics({}, held_out, {"z_s": latent, "z_1": noise[:, :1]}, MIDiagnosticsSettings())
    assert set(metrics) == {"r2/shared/z_s", "r2/shared/z_1"}
    assert metrics["r2/shared/z_s"] > 0.99
    assert metrics["r2/shared/z_1"] > 0.99


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


def test_selects_multiples_and_phase_ends() -> None:
    settings = MIDiagnosticsSettings(every_n_epochs=3)
    phase_ends = {1: 4, 2: 4, 3: 4, 4: 4, 5: 7, 6: 7, 7: 7}
    selected = {epoch for epoch, end in phase_ends.items() if settings.selects(epoch, end)}
    assert selected == {3, 4, 6, 7}
    assert not MIDiagnosticsSettings(every_n_epochs=None).selects(4, 4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"every_n_epochs": 0}, "every_n_epochs must be an integer >= 1 or None to turn the diagnostics off, got 0."),
        ({"train_samples": 15}, "train_samples must be an integer >= 16, got 15."),
        ({"eval_samples": 2.5}, "eval_samples must be an integer >= 16, got 2.5."),
        ({"estimator_steps": 0}, "estimator_steps must be an integer >= 1, got 0."),
    ],
)
def test_settings_reject_bad_values(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as error:
        MIDiagnosticsSettings(**options)
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"mi_every_n_epochs": 0},
            "eval.mi_every_n_epochs: must be an integer >= 1, or null to turn the per-epoch MI and R² "
            "diagnostics off (got 0)",
        ),
        (
            {"mi_train_samples": 8},
            "eval.mi_train_samples: must be >= 16, because the MI estimators and the 80/20 split of the "
            "R² regression need at least 16 rows (got 8)",
        ),
        (
            {"mi_eval_samples": 15},
            "eval.mi_eval_samples: must be >= 16, because the MI estimators and the 80/20 split of the "
            "R² regression need at least 16 rows (got 15)",
        ),
        ({"mi_estimator_steps": 0}, "eval.mi_estimator_steps: must be >= 1 optimiser step (got 0)"),
    ],
)
def test_study_rejects_bad_mi_settings(options: dict[str, Any], message: str) -> None:
    with pytest.raises(StudyValidationError) as error:
        _study(**options)
    assert message in str(error.value)


def test_schema_row_bound_matches_module() -> None:
    assert EvalSpec(mi_train_samples=MIN_DIAGNOSTIC_ROWS, mi_eval_samples=MIN_DIAGNOSTIC_ROWS).mi_eval_samples == 16
    with pytest.raises(ValueError):
        EvalSpec(mi_train_samples=MIN_DIAGNOSTIC_ROWS - 1)


def test_eval_defaults_build_settings() -> None:
    spec = _study()
    settings = _mi_diagnostics_settings(spec, "trial-1")
    assert settings.every_n_epochs == spec.eval.mi_every_n_epochs
    assert settings.train_samples == 2000
    assert settings.eval_samples == 1024
    assert settings.trial == "trial-1"


# --------------------------------------------------------------------------------------------
# MLflow: the final R² stays the latest value
# --------------------------------------------------------------------------------------------


def test_final_r2_stays_latest_in_mlflow(tmp_path: Path) -> None:
    # run_trial logs the last epoch's metrics and then the final evaluation at the same step;
    # MLflow orders one step's values by timestamp, so the final value must be the latest.
    import time

    from mlflow import MlflowClient

    from dssl.study.tracking import log_metrics

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("mi")).info.run_id
    log_metrics(client, run_id, {"r2/shared/z_s": 0.9}, step=6)
    time.sleep(0.01)
    log_metrics(client, run_id, {"r2/shared/z_s": 0.5}, step=6)

    assert client.get_run(run_id).data.metrics["r2/shared/z_s"] == 0.5
    history = client.get_metric_history(run_id, "r2/shared/z_s")
    assert sorted(metric.value for metric in history) == [0.5, 0.9]
