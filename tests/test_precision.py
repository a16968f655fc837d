"""bf16-mixed training: the encoders run in bfloat16, everything after them in float32."""

from __future__ import annotations

import pytest
import torch

from dssl.data.synthetic import make_synthetic
from dssl.methods.disentangled_ssl import SharedModel, SpecificModel
from dssl.nn.precision import encoder_autocast
from dssl.study.schema import MethodSpec, StudyValidationError, load_study
from dssl.train.loop import train_trial


def _method(precision: str, **step_settings: object) -> MethodSpec:
    return MethodSpec.model_validate(
        {
            "hidden_dim": 64,
            "embed_dim": 16,
            "batch_size": 128,
            "init_std": 0.05,
            "precision": precision,
            "step1": {"beta": 0.1, "epochs": 3, **step_settings},
            "step2": {"lam": 1.0, "epochs": 2},
        }
    )


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = make_synthetic(n_samples=600, seed=seed)
    return torch.as_tensor(dataset.x1[:128]), torch.as_tensor(dataset.x2[:128])


def _step1_loss_and_grads(precision: str) -> tuple[float, torch.Tensor, torch.dtype]:
    torch.manual_seed(0)
    model = SharedModel(100, 100, _method(precision, augment=False, head="deterministic"))
    model.train()
    x1, x2 = _batch()
    terms = model.loss_terms(x1, x2)
    terms["loss"].backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    return float(terms["loss"].detach()), grads, terms["loss"].dtype


def test_autocast_rejects_unknown_precision() -> None:
    with pytest.raises(ValueError, match="'fp16'"):
        encoder_autocast("fp16", torch.device("cpu"))


def test_autocast_disabled_keeps_float32() -> None:
    layer = torch.nn.Linear(4, 2)
    with encoder_autocast("bf16-mixed", torch.device("cpu"), enabled=False):
        out = layer(torch.ones(3, 4))
    assert out.dtype == torch.float32


def test_step1_bf16_matches_fp32() -> None:
    loss32, grads32, dtype32 = _step1_loss_and_grads("fp32")
    loss16, grads16, dtype16 = _step1_loss_and_grads("bf16-mixed")

    assert dtype32 == torch.float32
    assert dtype16 == torch.float32
    assert loss16 == pytest.approx(loss32, rel=2e-2)
    assert loss16 != loss32  # the encoders did run in bfloat16
    cosine = torch.nn.functional.cosine_similarity(grads16, grads32, dim=0)
    assert float(cosine) > 0.98
    assert grads16.dtype == torch.float32


def test_step2_bf16_matches_fp32() -> None:
    losses = {}
    for precision in ("fp32", "bf16-mixed"):
        torch.manual_seed(0)
        method = _method(precision)
        model = SpecificModel(SharedModel(100, 100, method), 100, 100, method)
        model.train()
        x1, x2 = _batch()
        generator = torch.Generator().manual_seed(3)
        terms = model.loss_terms(x1, x2, generator=generator)
        assert terms["loss"].dtype == torch.float32
        losses[precision] = {name: float(value.detach()) for name, value in terms.items()}

    for name, value in losses["fp32"].items():
        assert losses["bf16-mixed"][name] == pytest.approx(value, rel=3e-2, abs=1e-3), name


def test_eval_embeddings_stay_float32() -> None:
    model = SharedModel(100, 100, _method("bf16-mixed"))
    model.eval()
    x1, x2 = _batch()
    with torch.no_grad():
        e1, e2 = model.embed(x1, x2)
    assert e1.dtype == torch.float32
    assert e2.dtype == torch.float32


def test_bf16_training_lowers_loss() -> None:
    torch.set_num_threads(1)
    dataset = make_synthetic(n_samples=2000, seed=1)
    losses: list[float] = []

    def record(epoch: int, metrics: dict[str, float], state: object) -> None:
        if "step1/train/loss" in metrics:
            losses.append(metrics["step1/train/loss"])

    models = train_trial(dataset, _method("bf16-mixed"), seed=0, on_epoch_end=record, diagnostics_samples=256)

    assert len(losses) == 3
    assert losses[-1] < losses[0] - 0.1
    assert all(p.dtype == torch.float32 for p in models.phases["step1"].parameters())


def test_study_rejects_unknown_precision(tmp_path) -> None:
    study = tmp_path / "study.yaml"
    study.write_text("name: p\nmethod:\n  precision: fp16\n")
    with pytest.raises(StudyValidationError, match="precision"):
        load_study(study)
