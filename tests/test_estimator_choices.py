"""Step-2 overlap penalties (orthogonality, CLUB, HSIC), the learnable temperature and conditional
search parameters.

The training tests share one step-1 model trained on a small synthetic dataset and train step 2
from it with each penalty at lambda = 0 and lambda > 0, through the real training loop. The
two-worker test spawns two gloo processes on the loopback interface, and they import this
module. So the training loop and the data generator, slow to import, are imported only inside
the tests that use them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch

from dssl.methods.disentangled_ssl import (
    LearnableTemperature,
    SharedModel,
    SpecificModel,
    _club_overlap,
    _hsic_overlap,
    _make_club,
)
from dssl.study.metric_names import per_epoch_metric_names
from dssl.study.schema import (
    MethodSpec,
    StudyValidationError,
    flatten_params,
    resolve_method,
    validate_study,
)
from dssl.study.space import SEED_PARAM, make_define_by_run, make_sampler, method_overrides
from dssl.train.distributed import DataParallelContext

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Penalty weight of each lambda > 0 run, and the largest share of the lambda = 0 run's final
# overlap term (training and held-out) that the lambda > 0 run may keep. Measured at seed 0 with
# this file's settings, training / held-out: orthogonality 21.5 -> 16.0 / 21.4 -> 17.5 (shares
# 0.74 / 0.82; with B = 64 rows of 16-d codes the penalty cannot go far below 2 * sqrt(64) = 16),
# HSIC 0.0075 -> 0.0051 / 0.0075 -> 0.0051 (0.68), CLUB 9.3 -> 0.38 / 9.1 -> 0.36 (0.04).
PENALTY_RUNS = {
    "orthogonality": (10.0, 0.9),
    "hsic": (10.0, 0.8),
    "club": (1.0, 0.25),
}


def _method(**overrides: Any) -> MethodSpec:
    """Return small step-1 and step-2 settings with the given top-level or ``step2`` overrides."""
    data = {
        "hidden_dim": 64,
        "embed_dim": 16,
        "batch_size": 64,
        **overrides,
        "step1": {"epochs": 3, "lr": 1e-3, **overrides.get("step1", {})},
        "step2": {"epochs": 12, "lr": 3e-3, **overrides.get("step2", {})},
    }
    return MethodSpec.model_validate(data)


@pytest.fixture(scope="module")
def dataset():
    from dssl.data.synthetic import make_synthetic

    return make_synthetic(n_samples=2000, latent_dim=8, x_dim=16, seed=1)


@pytest.fixture(scope="module")
def step1_state(dataset) -> dict[str, Any]:
    """Train step 1 once, for the step-2 runs to load."""
    from dssl.train.loop import train_trial

    torch.set_num_threads(1)
    states: list[Any] = []
    method = _method(step2={"enabled": False})
    train_trial(dataset, method, seed=0, on_epoch_end=lambda e, m, s: states.append(s), diagnostics_samples=256)
    return states[-1].models["step1"]


@pytest.fixture(scope="module")
def step2_runs(dataset, step1_state) -> dict[tuple[str, float], list[dict[str, float]]]:
    """Train step 2 with each penalty at lambda = 0 and at its lambda > 0, and return per-epoch metrics."""
    from dssl.train.loop import train_trial

    torch.set_num_threads(1)
    runs = {}
    for penalty, (lam, _) in PENALTY_RUNS.items():
        for weight in (0.0, lam):
            history: list[dict[str, float]] = []
            method = _method(step2={"penalty": penalty, "lambda": weight})
            train_trial(
                dataset,
                method,
                seed=0,
                on_epoch_end=lambda e, m, s: history.append(m),
                diagnostics_samples=256,
                pretrained={"step1": step1_state},
            )
            runs[(penalty, weight)] = history
    return runs


# --------------------------------------------------------------------------------------------
# Penalties in training
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("penalty", sorted(PENALTY_RUNS))
def test_penalty_lowers_its_own_term(step2_runs, penalty: str) -> None:
    lam, share = PENALTY_RUNS[penalty]
    free = step2_runs[(penalty, 0.0)][-1]
    penalised = step2_runs[(penalty, lam)][-1]

    for key in ("step2/train/overlap", "step2/val/overlap"):
        assert math.isfinite(free[key])
        assert math.isfinite(penalised[key])
        assert free[key] > 0
        assert penalised[key] < share * free[key], (key, penalised[key], free[key])


def test_penalties_report_their_own_terms(step2_runs) -> None:
    club = step2_runs[("club", 0.0)][-1]
    hsic = step2_runs[("hsic", 0.0)][-1]
    orthogonality = step2_runs[("orthogonality", 0.0)][-1]

    assert "step2/train/club_learning_loss" in club
    assert "step2/val/club_learning_loss" in club
    assert "step2/train/club_learning_loss" not in hsic
    assert "step2/train/club_learning_loss" not in orthogonality
    # At lambda = 0 the penalty does not enter the gradient, so the InfoNCE terms of the
    # orthogonality and HSIC runs agree, and only the logged overlap values differ.
    assert hsic["step2/train/infonce1"] == pytest.approx(orthogonality["step2/train/infonce1"], rel=1e-5)
    assert hsic["step2/train/overlap"] != pytest.approx(orthogonality["step2/train/overlap"], rel=0.1)


@pytest.mark.parametrize("lam", [0.0, PENALTY_RUNS["club"][0]])
def test_club_learning_loss_falls(step2_runs, lam: float) -> None:
    losses = [metrics["step2/train/club_learning_loss"] for metrics in step2_runs[("club", lam)]]
    # q starts at N(0, I): 0.5 * dim * (1 + log 2 pi) nats per modality, two modalities.
    initial = 16 * (1 + math.log(2 * math.pi))
    assert losses[0] < initial + 1.0
    assert losses[-1] < losses[0] - 0.5, losses


def test_club_gradients_are_separated() -> None:
    torch.manual_seed(0)
    method = _method(step2={"penalty": "club", "club_hidden_dim": 32})
    model = SpecificModel(SharedModel(16, 16, method), 16, 16, method)
    assert model.club is not None
    assert model.club[0].hidden_dim == 32
    for club in model.club:
        # Away from the zero start, so that the estimate has a gradient to compare.
        torch.nn.init.normal_(club.output.weight, std=0.2)
    x1, x2 = torch.randn(32, 16), torch.randn(32, 16)
    terms = model.loss_terms(x1, x2, generator=torch.Generator().manual_seed(1))

    encoders = [*model.specific1.parameters(), *model.specific2.parameters()]
    q = list(model.club.parameters())
    assert set(map(id, q)) <= set(map(id, model.trainable_parameters()))

    def norms(term: torch.Tensor, parameters: list[torch.nn.Parameter]) -> list[float]:
        grads = torch.autograd.grad(term, parameters, retain_graph=True, allow_unused=True)
        return [0.0 if grad is None else float(grad.norm()) for grad in grads]

    assert max(norms(terms["overlap"], encoders)) > 1e-6
    assert max(norms(terms["overlap"], q)) == 0.0
    assert max(norms(terms["club_learning_loss"], q)) > 1e-6
    assert max(norms(terms["club_learning_loss"], encoders)) == 0.0


def test_orthogonality_model_has_no_club_parameters() -> None:
    torch.manual_seed(0)
    method = _method()
    model = SpecificModel(SharedModel(16, 16, method), 16, 16, method)
    assert model.club is None
    assert model.learned_temperature is None
    assert len(model.trainable_parameters()) == len(list(model.specific1.parameters())) * 2


# --------------------------------------------------------------------------------------------
# Learnable temperature
# --------------------------------------------------------------------------------------------


def test_learnable_temperature_moves_within_range(dataset) -> None:
    from dssl.train.loop import train_trial

    torch.set_num_threads(1)
    low, high = 0.06, 0.08
    method = _method(
        temperature_learnable=True,
        temperature_range=[low, high],
        step1={"epochs": 3, "lr": 1e-2},
        step2={"epochs": 3, "lr": 1e-2},
    )
    history: list[dict[str, float]] = []
    models = train_trial(dataset, method, seed=0, on_epoch_end=lambda e, m, s: history.append(m), diagnostics_samples=256)

    step1 = [metrics["step1/train/temperature"] for metrics in history if "step1/train/temperature" in metrics]
    step2 = [metrics["step2/train/temperature"] for metrics in history if "step2/train/temperature" in metrics]
    assert len(step1) == 3
    assert len(step2) == 3
    assert all(low - 1e-7 <= value <= high + 1e-7 for value in step1 + step2)
    # Measured: step 1 rises to 0.075, step 2 falls to the lower bound 0.06 and stays there.
    assert max(abs(value - 0.07) for value in step1) > 2e-3
    assert max(abs(value - 0.07) for value in step2) > 2e-3

    shared, specific = models.phases["step1"], models.phases["step2"]
    assert shared.learned_temperature is not None
    assert specific.learned_temperature is not None
    assert specific.learned_temperature is not shared.learned_temperature
    assert not shared.learned_temperature.log_temperature.requires_grad  # frozen in step 2
    # exp(log(low)) in float32 can land a rounding step below low.
    assert low - 1e-7 <= float(specific.temperature().detach()) <= high + 1e-7


def test_temperature_clamp_passes_only_inward_gradients() -> None:
    temperature = LearnableTemperature(0.07, low=0.05, high=0.5)
    with torch.no_grad():
        temperature.log_temperature.fill_(math.log(0.9))  # past the upper bound
    assert float(temperature().detach()) == pytest.approx(0.5)

    (outward,) = torch.autograd.grad(-temperature(), temperature.log_temperature)  # wants a larger tau
    (inward,) = torch.autograd.grad(temperature(), temperature.log_temperature)  # wants a smaller tau
    assert float(outward) == 0.0
    assert float(inward) == pytest.approx(0.5)

    with pytest.raises(ValueError, match="initial temperature"):
        LearnableTemperature(2.0, low=0.05, high=0.5)


# --------------------------------------------------------------------------------------------
# Conditional search parameters
# --------------------------------------------------------------------------------------------


def _study(space: dict[str, Any], method: dict[str, Any] | None = None, **search: Any) -> dict[str, Any]:
    return {
        "name": "conditional",
        "data": {"kind": "synthetic", "n_samples": 2000},
        "method": method or {},
        "search": {"algorithm": "tpe", "metric": "probe/shared/y_c", "num_trials": 20, "space": space, **search},
    }


CONDITIONAL_SPACE = {
    "step2.penalty": {"type": "categorical", "choices": ["orthogonality", "club", "hsic"]},
    "step2.club_hidden_dim": {"type": "int", "low": 16, "high": 256, "log": True, "when": {"step2.penalty": "club"}},
    "step2.hsic_sigma": {"type": "loguniform", "low": 0.1, "high": 2.0, "when": {"step2.penalty": ["hsic"]}},
}


@pytest.mark.parametrize("base_penalty", ["orthogonality", "club"])
def test_tpe_suggests_conditional_where_applicable(base_penalty: str) -> None:
    spec = validate_study(_study(CONDITIONAL_SPACE, {"step2": {"penalty": base_penalty}}))
    study = optuna.create_study(sampler=make_sampler(spec), direction="maximize")
    define_by_run = make_define_by_run(spec)

    seen = set()
    for _ in range(20):  # TPE's first 10 trials are random, the rest use its model
        trial = study.ask()
        assert define_by_run(trial) is None
        penalty = trial.params["step2.penalty"]
        seen.add(penalty)
        expected = {"step2.penalty", SEED_PARAM}
        expected |= {"club": {"step2.club_hidden_dim"}, "hsic": {"step2.hsic_sigma"}}.get(penalty, set())
        assert set(trial.params) == expected

        method = resolve_method(spec, method_overrides(dict(trial.params)))
        params = flatten_params(method)
        assert params["step2.penalty"] == penalty
        if penalty == "club":
            assert params["step2.club_hidden_dim"] == trial.params["step2.club_hidden_dim"]
            assert 16 <= params["step2.club_hidden_dim"] <= 256
        else:
            assert method.step2.club_hidden_dim is None
        if penalty == "hsic":
            assert method.step2.hsic_sigma == trial.params["step2.hsic_sigma"]
        else:
            assert method.step2.hsic_sigma is None
        value = trial.params.get("step2.club_hidden_dim", 0) + 100 * trial.params.get("step2.hsic_sigma", 0.0)
        study.tell(trial, float(value))

    assert seen == {"orthogonality", "club", "hsic"}
    club_trials = [t for t in study.trials if t.params["step2.penalty"] == "club"]
    assert club_trials[0].distributions["step2.club_hidden_dim"] == optuna.distributions.IntDistribution(16, 256, log=True)


def test_method_setting_conditioned_on_method_name() -> None:
    space = {
        "name": {"type": "categorical", "choices": ["joint_opt", "focal"]},
        "focal.a": {"type": "loguniform", "low": 0.1, "high": 10, "when": {"name": "focal"}},
    }
    spec = validate_study(_study(space))
    study = optuna.create_study(sampler=make_sampler(spec))
    define_by_run = make_define_by_run(spec)

    seen = set()
    for _ in range(12):
        trial = study.ask()
        define_by_run(trial)
        name = trial.params["name"]
        seen.add(name)
        assert ("focal.a" in trial.params) == (name == "focal")
        study.tell(trial, 0.0)
    assert seen == {"joint_opt", "focal"}


def test_reused_step1_metric_allowed_without_reuse() -> None:
    study = _study({"step2.lambda": {"type": "loguniform", "low": 0.1, "high": 10}}, metric="step1/val/infonce", mode="min")
    study["tracking"] = {"reuse_step1": False}
    assert validate_study(study).search.metric == "step1/val/infonce"


def test_condition_on_fixed_method_value() -> None:
    space = {"step2.club_hidden_dim": {"type": "categorical", "choices": [32, 64], "when": {"step2.penalty": "club"}}}
    spec = validate_study(_study(space, {"step2": {"penalty": "club"}}))
    study = optuna.create_study(sampler=make_sampler(spec))
    trial = study.ask()
    make_define_by_run(spec)(trial)
    assert set(trial.params) == {"step2.club_hidden_dim", SEED_PARAM}
    assert spec.search.space["step2.club_hidden_dim"].when == {"step2.penalty": ("club",)}


@pytest.mark.parametrize(
    ("space", "method", "search", "field", "fragment"),
    [
        (
            {"step2.lambda": {"type": "uniform", "low": 0, "high": 1, "when": {"step2.penalti": "club"}}},
            {},
            {},
            "search.space.step2.lambda.when.step2.penalti",
            "did you mean 'step2.penalty'",
        ),
        (
            {"step2.lambda": {"type": "uniform", "low": 0, "high": 1, "when": {"step2.penalty": ["club", "clup"]}}},
            {},
            {},
            "search.space.step2.lambda.when.step2.penalty[1]",
            "not valid for method.step2.penalty",
        ),
        (
            {
                "step2.club_hidden_dim": {"type": "int", "low": 16, "high": 64, "when": {"step2.penalty": "club"}},
                "step2.penalty": {"type": "categorical", "choices": ["orthogonality", "club"]},
            },
            {},
            {},
            "search.space.step2.club_hidden_dim.when.step2.penalty",
            "sampled after this entry",
        ),
        (
            {
                "step2.penalty": {"type": "categorical", "choices": ["orthogonality", "club"]},
                "step2.club_hidden_dim": {"type": "int", "low": 16, "high": 64},
            },
            {},
            {},
            "search.space.step2.club_hidden_dim",
            "add when: {step2.penalty: club}",
        ),
        (
            {"step2.hsic_sigma": {"type": "loguniform", "low": 0.1, "high": 1, "when": {"step2.penalty": "hsic"}}},
            {"step2": {"penalty": "club"}},
            {},
            "search.space.step2.hsic_sigma.when.step2.penalty",
            "never holds",
        ),
        (
            {
                "step2.penalty": {"type": "categorical", "choices": ["orthogonality", "club"]},
                "step2.club_hidden_dim": {"type": "categorical", "choices": [16, 64], "when": {"step2.penalty": "club"}},
            },
            {},
            {"algorithm": "grid", "num_trials": None},
            "search.space.step2.club_hidden_dim.when",
            "not allowed with search.algorithm: grid",
        ),
        (
            {
                "step1.beta": {"type": "loguniform", "low": 0.01, "high": 1},
                "step2.lambda": {"type": "uniform", "low": 0, "high": 1, "when": {"step1.beta": 0.1}},
            },
            {},
            {},
            "search.space.step2.lambda.when.step1.beta",
            "sampled from a range",
        ),
        ({}, {"step2": {"club_hidden_dim": 32}}, {}, "method.step2.club_hidden_dim", "only allowed with penalty: club"),
        ({}, {"step2": {"penalty": "club", "hsic_sigma": 0.5}}, {}, "method.step2.hsic_sigma", "only allowed with penalty: hsic"),
        ({}, {"temperature_range": [0.5, 0.1]}, {}, "method.temperature_range", "low < high"),
        ({}, {"temperature_range": [0.0, 0.1]}, {}, "method.temperature_range[0]", "must be > 0"),
        ({}, {"temperature_learnable": True, "temperature": 2.0}, {}, "method.temperature", "must lie in temperature_range"),
        (
            {"temperature": {"type": "uniform", "low": 0.005, "high": 0.5}},
            {"temperature_learnable": True},
            {},
            "search.space.temperature",
            "must stay in method.temperature_range",
        ),
        (
            {"focal.a": {"type": "loguniform", "low": 0.1, "high": 10}},
            {"name": "joint_opt"},
            {},
            "search.space.focal.a",
            "read only by method 'focal', but every trial that samples it runs method 'joint_opt'",
        ),
        (
            {
                "name": {"type": "categorical", "choices": ["disentangled_ssl", "clip"]},
                "step1.beta": {"type": "loguniform", "low": 0.01, "high": 1},
            },
            {},
            {},
            "search.space.step1.beta",
            "also be suggested on trials of method 'clip', which ignore it; add when: {name: disentangled_ssl}",
        ),
        (
            {},
            {},
            {
                "algorithm": "grid",
                "num_trials": None,
                "grids": [{"name": {"type": "grid", "values": ["dmvae"]}, "joint_opt.a": {"type": "grid", "values": [1, 2]}}],
            },
            "search.grids[0].joint_opt.a",
            "read only by method 'joint_opt'",
        ),
        (
            {"step2.lambda": {"type": "loguniform", "low": 0.1, "high": 10}},
            {"step2": {"enabled": True}},
            {"metric": "step1/val/infonce", "mode": "min"},
            "search.metric",
            "reported by step 1 only",
        ),
        (
            {"step2.lambda": {"type": "loguniform", "low": 0.1, "high": 10}},
            {"step2": {"enabled": True}},
            {"scheduler": "asha", "asha": {"metric": "mi/cmi_upper_bound_kl", "mode": "min"}},
            "search.asha.metric",
            "set tracking.reuse_step1: false",
        ),
    ],
)
def test_validation_names_the_field(
    space: dict[str, Any], method: dict[str, Any], search: dict[str, Any], field: str, fragment: str
) -> None:
    study = _study(space, method, **search)
    if study["search"].get("num_trials", 0) is None:
        del study["search"]["num_trials"]
    with pytest.raises(StudyValidationError) as error:
        validate_study(study)
    lines = [problem.render() for problem in error.value.problems]
    assert any(line.startswith(f"{field}: ") and fragment in line for line in lines), lines


def test_metric_names_follow_the_settings() -> None:
    study = _study({}, {"step2": {"penalty": "club"}, "temperature_learnable": True})
    study["tracking"] = {"reuse_step1": False}
    names = per_epoch_metric_names(validate_study(study))
    assert {"step2/train/club_learning_loss", "step2/val/club_learning_loss"} <= names
    assert {"step1/train/temperature", "step2/train/temperature"} <= names

    # A trial that reuses a step-1 model reports none of step 1's per-epoch metrics.
    study["tracking"] = {"reuse_step1": True}
    reused = per_epoch_metric_names(validate_study(study))
    assert "step2/train/temperature" in reused
    assert not {name for name in reused if name.startswith("step1/")}
    assert "mi/cmi_upper_bound_kl" not in reused
    assert "step2/train/club_learning_loss" not in per_epoch_metric_names(validate_study(_study({})))

    # Only the names that every sampled penalty reports can be the study's metric.
    searched = _study(CONDITIONAL_SPACE, {"step2": {"penalty": "club"}}, metric="step2/val/club_learning_loss", mode="min")
    with pytest.raises(StudyValidationError, match="search.metric: is not a metric"):
        validate_study(searched)
    searched["search"]["metric"] = "step2/val/overlap"
    assert validate_study(searched).search.metric == "step2/val/overlap"


# --------------------------------------------------------------------------------------------
# One worker against two
# --------------------------------------------------------------------------------------------

GLOBAL_BATCH = 16
DIM = 12


def _penalty_and_gradients(penalty: str, rank: int, world_size: int, parallel: DataParallelContext) -> dict[str, Any]:
    """Compute a step-2 penalty on this rank's rows of both views, and the averaged gradients."""
    torch.manual_seed(3)
    specific = torch.nn.Linear(DIM, 6)
    shared = torch.nn.Linear(DIM, 6)
    clubs = torch.nn.ModuleList([_make_club(6, 8) for _ in range(2)])
    for club in clubs:
        torch.nn.init.normal_(club.output.weight, std=0.3)
    generator = torch.Generator().manual_seed(7)
    x1 = torch.randn(GLOBAL_BATCH, DIM, generator=generator)
    x2 = x1 + 0.5 * torch.randn(GLOBAL_BATCH, DIM, generator=generator)
    local = GLOBAL_BATCH // world_size
    rows = slice(rank * local, (rank + 1) * local)
    views = torch.cat([x1[rows], x2[rows]])  # rows [:local] play view x', rows [local:] view v

    codes = (specific(views), shared(views), specific(views.flip(1)), shared(views.flip(1)))
    learning = torch.zeros(())
    if penalty == "hsic":
        value = _hsic_overlap(*codes, local, parallel, sigma=None)
    else:
        value, learning = _club_overlap(clubs, *codes, local, parallel)
    (value + learning).backward()
    parameters = [*specific.parameters(), *shared.parameters(), *clubs.parameters()]
    parallel.average_gradients(parameters)
    gradients = torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.reshape(-1) for p in parameters])
    return {
        "value": parallel.mean_scalar(float(value.detach())),
        "learning": parallel.mean_scalar(float(learning.detach())),
        "gradients": gradients.numpy(),
    }


def _two_rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        parallel = DataParallelContext.from_process_group()
        results = {penalty: _penalty_and_gradients(penalty, rank, 2, parallel) for penalty in ("hsic", "club")}
        if rank == 0:
            torch.save(results, Path(out_dir) / "results.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_penalties_match_across_two_workers(tmp_path: Path) -> None:
    single = {penalty: _penalty_and_gradients(penalty, 0, 1, DataParallelContext()) for penalty in ("hsic", "club")}

    torch.multiprocessing.spawn(_two_rank_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2)
    distributed = torch.load(tmp_path / "results.pt", weights_only=False)

    for penalty in ("hsic", "club"):
        assert distributed[penalty]["value"] == pytest.approx(single[penalty]["value"], rel=1e-5), penalty
        assert distributed[penalty]["learning"] == pytest.approx(single[penalty]["learning"], rel=1e-5), penalty
        assert np.abs(single[penalty]["gradients"]).max() > 1e-4  # the comparison is not between zeros
        np.testing.assert_allclose(
            distributed[penalty]["gradients"], single[penalty]["gradients"], rtol=1e-4, atol=1e-6, err_msg=penalty
        )


@pytest.mark.parametrize("penalty", ["hsic", "club"])
def test_local_rows_alone_give_another_value(penalty: str) -> None:
    """Without the gathered rows, two half batches give another value: the test above can fail."""
    torch.manual_seed(0)
    clubs = torch.nn.ModuleList([_make_club(6, 8) for _ in range(2)])
    for club in clubs:
        torch.nn.init.normal_(club.output.weight, std=0.3)
    codes = [torch.randn(2 * GLOBAL_BATCH, 6) for _ in range(4)]
    codes[0] = codes[0] + codes[1]  # s1 depends on c1

    def overlap(s1: torch.Tensor, c1: torch.Tensor, s2: torch.Tensor, c2: torch.Tensor, batch: int) -> float:
        if penalty == "hsic":
            return float(_hsic_overlap(s1, c1, s2, c2, batch, DataParallelContext(), sigma=None))
        return float(_club_overlap(clubs, s1, c1, s2, c2, batch, DataParallelContext())[0].detach())

    full = overlap(*codes, GLOBAL_BATCH)
    half = GLOBAL_BATCH // 2
    halves = []
    for rows in (slice(0, half), slice(half, GLOBAL_BATCH)):
        local = [torch.cat([code[rows], code[GLOBAL_BATCH:][rows]]) for code in codes]
        halves.append(overlap(*local, half))
    assert abs(np.mean(halves) - full) > 1e-3
