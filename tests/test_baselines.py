"""The CLIP, JointOpt and FOCAL baselines: training, evaluation, checkpoints, schema, data parallelism.

Each method trains once per module (8 epochs of 25 steps on a small synthetic dataset) and the
tests share that run. The data-parallel test runs two gloo processes on this machine.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from dssl.data.synthetic import make_synthetic
from dssl.eval.evaluate import evaluate_trial
from dssl.methods.disentangled_ssl import SharedModel
from dssl.methods.focal import FocalModel
from dssl.methods.joint_opt import JointOptModel, augmented_views
from dssl.methods.registry import build_phases
from dssl.nn.deterministic import DeterministicHead
from dssl.objectives.infonce import symmetric_infonce
from dssl.objectives.overlap import orthogonality_penalty
from dssl.study.metric_names import final_metric_names, per_epoch_metric_names
from dssl.study.schema import (
    MethodSpec,
    StudyValidationError,
    method_parameter_paths,
    resolve_method,
    validate_study,
)
from dssl.train.checkpoint import load_state, save_state
from dssl.train.distributed import DataParallelContext
from dssl.train.loop import TrainingState, restore_models, train_trial

METHODS = ("clip", "joint_opt", "focal")
X_DIM = 16
EPOCHS = 8
# Loss drop over the 8 epochs that every method must reach, in nats. Measured drops at seed 0:
# clip 6.23 -> 2.78, joint_opt 9.23 -> 4.67, focal 10.58 -> 5.50.
MIN_LOSS_DROP = 1.0
# Test accuracy of the shared probe on the shared label; measured 0.74-0.77, chance is 0.5.
MIN_SHARED_YC = 0.6

_COMMON = {"hidden_dim": 32, "embed_dim": 8, "batch_size": 64, "init_std": 0.1}


def _method(name: str, **settings: object) -> MethodSpec:
    own = {"epochs": EPOCHS, "lr": 1.0e-3}
    if name == "joint_opt":
        data = {"joint_opt": {**own, "a": 1.0, "lambda": 0.1, **settings}}
    elif name == "focal":
        data = {"focal": {**own, "a": 1.0, "lambda": 0.1, **settings}}
    else:
        data = {"step1": {**own, **settings}}
    return MethodSpec.model_validate({**_COMMON, "name": name, **data})


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(n_samples=2000, latent_dim=8, x_dim=X_DIM, seed=0)


@pytest.fixture(scope="module", params=METHODS)
def trained(request, dataset) -> dict[str, object]:
    """Train one method with train_trial and keep its per-epoch metrics and last state."""
    torch.set_num_threads(1)
    method = _method(request.param)
    epochs: list[dict[str, float]] = []
    states: list[TrainingState] = []

    def record(epoch: int, metrics: dict[str, float], state: TrainingState) -> None:
        epochs.append(metrics)
        states.append(state)

    models = train_trial(dataset, method, seed=0, on_epoch_end=record, diagnostics_samples=256)
    return {"name": request.param, "method": method, "epochs": epochs, "state": states[-1], "models": models}


def _phase_name(name: str) -> str:
    return "step1" if name == "clip" else "joint"


def _test_rows(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    x1, x2, _ = dataset.split("test")
    return torch.as_tensor(x1), torch.as_tensor(x2)


def _study(name: str, **extra: object) -> dict[str, object]:
    search = {"algorithm": "random", "num_trials": 2, "metric": "probe/shared/y_c", **extra.pop("search", {})}
    return {"name": f"baseline-{name}", "method": {"name": name, **extra}, "search": search}


# --------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------


def test_training_lowers_loss(trained) -> None:
    phase = _phase_name(trained["name"])
    losses = [metrics[f"{phase}/train/loss"] for metrics in trained["epochs"]]

    assert len(losses) == EPOCHS
    assert losses[-1] < losses[0] - MIN_LOSS_DROP, losses


def test_per_epoch_metrics_match_the_declared_names(trained, dataset) -> None:
    """Every epoch reports exactly its phase's declared names, all finite and known to studies."""
    (phase,) = build_phases(trained["method"], X_DIM, X_DIM)
    expected = {f"{phase.name}/train/{term}" for term in phase.train_terms}
    expected |= {phase.metric_key(name) for name in phase.diagnostics}
    expected |= {f"{phase.name}/lr", f"{phase.name}/samples_per_second"}
    for metrics in trained["epochs"]:
        reported = {key for key in metrics if key not in ("epoch", "step")}
        assert reported == expected
        assert all(math.isfinite(value) for value in metrics.values())
    # Study validation accepts each of them as a metric of this method.
    assert expected <= per_epoch_metric_names(validate_study(_study(trained["name"])))
    last = trained["epochs"][-1]
    # log B - InfoNCE lies below log B, and training has made it positive.
    assert 0.0 < last["mi/shared_infonce_lower_bound"] < math.log(64)


def test_evaluation_probes_every_representation(trained, dataset) -> None:
    metrics = evaluate_trial(trained["models"], dataset, seed=0)
    probes = {key: value for key, value in metrics.items() if key.startswith("probe/")}

    spec = validate_study(_study(trained["name"]))
    declared = {key for key in final_metric_names(spec) if key.startswith(("probe/", "r2/"))}
    assert {key for key in metrics if key.startswith(("probe/", "r2/"))} == declared
    expected_representations = {"shared"} if trained["name"] == "clip" else {
        "shared", "specific1", "specific2", "specific", "both"
    }  # fmt: skip
    assert {key.split("/")[1] for key in probes} == expected_representations
    assert all(0.0 <= value <= 1.0 for value in probes.values())
    assert probes["probe/shared/y_c"] > MIN_SHARED_YC


def test_checkpoint_round_trip_gives_identical_representations(trained, dataset, tmp_path: Path) -> None:
    save_state(trained["state"], tmp_path)
    restored = restore_models(load_state(tmp_path), X_DIM, X_DIM, trained["method"])
    x1, x2 = _test_rows(dataset)

    with torch.no_grad():
        original = trained["models"].representations(x1, x2)
        again = restored.representations(x1, x2)
    expected_names = {"shared1", "shared2"} if trained["name"] == "clip" else {
        "shared1", "shared2", "specific1", "specific2"
    }  # fmt: skip
    assert set(original) == set(again) == expected_names
    for name in original:
        assert torch.equal(original[name], again[name]), name


# --------------------------------------------------------------------------------------------
# CLIP
# --------------------------------------------------------------------------------------------


def test_clip_overrides_beta_and_step2(caplog: pytest.LogCaptureFixture) -> None:
    method = MethodSpec.model_validate({**_COMMON, "name": "clip", "step1": {"beta": 0.37}})
    assert method.step2.enabled

    with caplog.at_level(logging.INFO, logger="dssl.methods.clip"):
        phases = build_phases(method, X_DIM, X_DIM)
        build_phases(method, X_DIM, X_DIM)
    messages = [record.getMessage() for record in caplog.records if "0.37" in record.getMessage()]
    assert len(messages) == 1  # logged once for this beta
    assert [phase.name for phase in phases] == ["step1"]

    torch.manual_seed(0)
    model = phases[0].build([])
    assert isinstance(model, SharedModel)
    assert model.method.step1.beta == 0.0
    assert method.step1.beta == 0.37  # the study's settings are not changed
    x1, x2 = torch.randn(32, X_DIM), torch.randn(32, X_DIM)
    terms = {name: value.detach() for name, value in model.loss_terms(x1, x2).items()}
    assert abs(float(terms["cmi_penalty"])) > 1e-3  # the penalty exists but is not added
    assert float(terms["loss"]) == float(terms["infonce"])


def test_clip_deterministic_head_samples_nothing() -> None:
    method = _method("clip", head="deterministic", augment=False)
    torch.manual_seed(0)
    model = build_phases(method, X_DIM, X_DIM)[0].build([])
    assert isinstance(model.head, DeterministicHead)
    x1, x2 = torch.randn(32, X_DIM), torch.randn(32, X_DIM)
    first = model.loss_terms(x1, x2)["loss"]
    second = model.loss_terms(x1, x2)["loss"]
    assert torch.equal(first, second)


# --------------------------------------------------------------------------------------------
# Loss formulas
# --------------------------------------------------------------------------------------------


def _views(model: JointOptModel | FocalModel, x1: torch.Tensor, x2: torch.Tensor, settings) -> tuple:
    generator = torch.Generator().manual_seed(3)
    views = augmented_views(x1, x2, settings.noise_std, settings.drop_fraction, generator)
    return model.encode(*views)


def test_joint_opt_loss_matches_the_reference_formula() -> None:
    method = _method("joint_opt", a=3.0, **{"lambda": 0.5}, head="deterministic")
    torch.manual_seed(0)
    model = JointOptModel(X_DIM, X_DIM, method)
    x1, x2 = torch.randn(16, X_DIM), torch.randn(16, X_DIM)
    terms = model.loss_terms(x1, x2, generator=torch.Generator().manual_seed(3))

    expected_loss = (
        2 * terms["shared_infonce"] / 4 + 3 * (terms["specific_infonce1"] + terms["specific_infonce2"]) / 4
        + 0.5 * terms["ortho"]
    )  # fmt: skip
    assert torch.allclose(terms["loss"], expected_loss)

    # The same views encoded one by one: per-view CLIP of the unit shared codes, the step-2
    # joint code with the other modality's shared embedding, and half the four Frobenius norms.
    e1, e2, s1, s2 = _views(model, x1, x2, method.joint_opt)
    first, second = slice(0, 16), slice(16, 32)
    c1, c2 = F.normalize(e1, dim=1), F.normalize(e2, dim=1)
    shared = 0.5 * sum(symmetric_infonce(c1[view], c2[view], 0.07) for view in (first, second))
    h1 = F.normalize(torch.cat([s1, e2], dim=1), dim=1)
    specific1 = symmetric_infonce(h1[first], h1[second], 0.07)
    ortho = 0.5 * sum(
        orthogonality_penalty(s[view], e[view]) for s, e in ((s1, e1), (s2, e2)) for view in (first, second)
    )
    assert torch.allclose(terms["shared_infonce"], shared, atol=1e-6)
    assert torch.allclose(terms["specific_infonce1"], specific1, atol=1e-6)
    assert torch.allclose(terms["ortho"], ortho, atol=1e-5)


def test_joint_opt_specific_term_trains_the_shared_encoders() -> None:
    torch.manual_seed(0)
    model = JointOptModel(X_DIM, X_DIM, _method("joint_opt"))
    terms = model.loss_terms(torch.randn(16, X_DIM), torch.randn(16, X_DIM))
    terms["specific_infonce1"].backward()
    # s1 takes e1 as input and h1 contains e2, so both shared encoders get gradient.
    for encoder in (model.shared1, model.shared2, model.specific1):
        assert float(encoder.net[0].weight.grad.abs().max()) > 0.0
    assert model.specific2.net[0].weight.grad is None


def test_focal_loss_matches_the_reference_formula() -> None:
    method = _method("focal", a=2.0, **{"lambda": 0.25})
    torch.manual_seed(0)
    model = FocalModel(X_DIM, X_DIM, method)
    x1, x2 = torch.randn(16, X_DIM), torch.randn(16, X_DIM)
    terms = model.loss_terms(x1, x2, generator=torch.Generator().manual_seed(3))

    expected_loss = (
        2 * terms["shared_infonce"] + 2 * (terms["specific_infonce1"] + terms["specific_infonce2"])
        + 0.25 * terms["ortho"]
    )  # fmt: skip
    assert torch.allclose(terms["loss"], expected_loss)

    # The reference sums six per-view mean cosines: (s1, c1), (s2, c2) and (s1, s2) on each view.
    codes = [F.normalize(code, dim=1) for code in _views(model, x1, x2, method.focal)]
    c1, c2, u1, u2 = codes
    ortho = sum(
        (a[view] * b[view]).sum(dim=1).mean()
        for a, b in ((u1, c1), (u2, c2), (u1, u2))
        for view in (slice(0, 16), slice(16, 32))
    )
    shared = sum(symmetric_infonce(c1[view], c2[view], 0.07) for view in (slice(0, 16), slice(16, 32)))
    assert torch.allclose(terms["ortho"], ortho, atol=1e-6)
    assert torch.allclose(2 * terms["shared_infonce"], shared, atol=1e-6)


def test_diagnostics_use_fixed_views() -> None:
    torch.manual_seed(0)
    model = FocalModel(X_DIM, X_DIM, _method("focal")).eval()
    x1, x2 = torch.randn(32, X_DIM), torch.randn(32, X_DIM)
    first, second = model.diagnostics(x1, x2), model.diagnostics(x1, x2)
    assert first == second
    assert first["mi/specific1_infonce_lower_bound"] == pytest.approx(math.log(32) - first["specific_infonce1"])


# --------------------------------------------------------------------------------------------
# Study schema
# --------------------------------------------------------------------------------------------


def test_schema_accepts_each_method_and_searches_its_settings() -> None:
    assert {"joint_opt.a", "joint_opt.lambda", "focal.a", "focal.lambda"} <= set(method_parameter_paths())

    joint = validate_study(
        _study(
            "joint_opt",
            joint_opt={"head": "deterministic"},
            search={
                "metric": "probe/specific1/y_1",
                "space": {
                    "joint_opt.a": {"type": "loguniform", "low": 0.01, "high": 1000},
                    "joint_opt.lambda": {"type": "categorical", "choices": [0, 0.1]},
                },
            },
        )
    )
    assert joint.search.space["joint_opt.lambda"].choices == (0.0, 0.1)
    resolved = resolve_method(joint, {"joint_opt.a": 5.0, "joint_opt.lam": 0.2})
    assert (resolved.joint_opt.a, resolved.joint_opt.lam, resolved.joint_opt.head) == (5.0, 0.2, "deterministic")

    focal = validate_study(
        _study("focal", search={"space": {"focal.lambda": {"type": "uniform", "low": 0.0, "high": 10.0}}})
    )
    assert resolve_method(focal, {"focal.lambda": 2.5}).focal.lam == 2.5
    assert "joint/val/ortho" in final_metric_names(focal)

    clip = validate_study(_study("clip", step1={"head": "deterministic"}))
    assert "step1/train/infonce" in final_metric_names(clip)


@pytest.mark.parametrize(
    ("study", "field", "value"),
    [
        (_study("joint_opt", joint_opt={"a": -1.0}), "method.joint_opt.a", "-1.0"),
        (_study("focal", focal={"lambda": -0.5}), "method.focal.lambda", "-0.5"),
        (_study("joint_opt", joint_opt={"head": "gaussian"}), "method.joint_opt.head", "'gaussian'"),
        (
            _study("focal", search={"space": {"focal.lambda": {"type": "uniform", "low": -1.0, "high": 1.0}}}),
            "search.space.focal.lambda.low",
            "-1.0",
        ),
        (_study("clip", search={"metric": "probe/specific1/y_1"}), "search.metric", "'probe/specific1/y_1'"),
    ],
)
def test_schema_rejects_bad_values_by_name(study: dict[str, object], field: str, value: str) -> None:
    with pytest.raises(StudyValidationError) as caught:
        validate_study(study)
    lines = [line for line in str(caught.value).splitlines() if f": {field}:" in line]
    assert len(lines) == 1, str(caught.value)
    assert f"(got {value})" in lines[0]


# --------------------------------------------------------------------------------------------
# Data parallelism
# --------------------------------------------------------------------------------------------

_DP_BATCH = 16


def _dp_methods() -> dict[str, MethodSpec]:
    # Zero noise and zero drop make both views equal the input, and the deterministic head
    # samples nothing, so one process and two draw the same numbers.
    still = {"noise_std": 0.0, "drop_fraction": 0.0, "lambda": 0.5}
    return {
        "joint_opt": _method("joint_opt", head="deterministic", a=2.0, **still),
        "focal": _method("focal", a=2.0, **still),
    }


def _dp_loss_and_gradients(parallel: DataParallelContext) -> dict[str, dict[str, object]]:
    generator = torch.Generator().manual_seed(5)
    x1 = torch.randn(_DP_BATCH, X_DIM, generator=generator)
    x2 = x1 @ torch.randn(X_DIM, X_DIM, generator=generator) + 0.3 * torch.randn(_DP_BATCH, X_DIM, generator=generator)
    local = _DP_BATCH // parallel.world_size
    rows = slice(parallel.rank * local, (parallel.rank + 1) * local)

    results = {}
    for name, method in _dp_methods().items():
        torch.manual_seed(0)
        model = build_phases(method, X_DIM, X_DIM)[0].build([])
        terms = model.loss_terms(x1[rows], x2[rows], parallel)
        terms["loss"].backward()
        parameters = list(model.parameters())
        parallel.average_gradients(parameters)
        results[name] = {
            "terms": {key: parallel.mean_scalar(float(value.detach())) for key, value in terms.items()},
            "gradients": torch.cat([p.grad.reshape(-1) for p in parameters]).numpy(),
        }
    return results


def _dp_worker(rank: int, store: str, queue: mp.Queue) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        results = _dp_loss_and_gradients(DataParallelContext(rank=rank, world_size=2))
        if rank == 0:
            queue.put(results)
    finally:
        torch.distributed.destroy_process_group()


def test_two_workers_match_one_process(tmp_path: Path) -> None:
    single = _dp_loss_and_gradients(DataParallelContext())

    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_dp_worker, args=(rank, str(tmp_path / "store"), queue)) for rank in (0, 1)]
    for process in processes:
        process.start()
    distributed = queue.get(timeout=120)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    for name in ("joint_opt", "focal"):
        for term, value in single[name]["terms"].items():
            assert distributed[name]["terms"][term] == pytest.approx(value, rel=1e-5, abs=1e-6), (name, term)
        assert np.abs(single[name]["gradients"]).max() > 1e-4  # the comparison is not between zeros
        np.testing.assert_allclose(distributed[name]["gradients"], single[name]["gradients"], rtol=1e-4, atol=1e-6)


def test_local_only_negatives_differ() -> None:
    """Two half batches without gathering give another loss, so the test above can fail."""
    for method in _dp_methods().values():
        torch.manual_seed(0)
        model = build_phases(method, X_DIM, X_DIM)[0].build([])
        generator = torch.Generator().manual_seed(5)
        x1 = torch.randn(_DP_BATCH, X_DIM, generator=generator)
        x2 = torch.randn(_DP_BATCH, X_DIM, generator=generator)
        half = _DP_BATCH // 2
        with torch.no_grad():
            full = float(model.loss_terms(x1, x2)["loss"])
            halves = [float(model.loss_terms(x1[i : i + half], x2[i : i + half])["loss"]) for i in (0, half)]
        assert abs(np.mean(halves) - full) > 1e-3
