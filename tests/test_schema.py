"""Tests of the study file schema and of the Optuna search space built from it."""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from dssl.study.schema import (
    MethodSpec,
    StudySpec,
    StudyValidationError,
    dump_resolved_yaml,
    flatten_params,
    load_study,
    method_parameter_paths,
    resolve_method,
    validate_study,
)
from dssl.study.space import (
    SEED_PARAM,
    grid_size,
    make_define_by_run,
    make_sampler,
    method_overrides,
    seed_of,
)

STUDIES_DIR = Path(__file__).resolve().parents[1] / "studies"
SHIPPED_STUDIES = sorted(STUDIES_DIR.glob("*.yaml"))

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _base_study() -> dict[str, Any]:
    """Return a small valid study as parsed YAML."""
    return {
        "name": "unit",
        "data": {"kind": "synthetic", "n_samples": 2000},
        "method": {
            "hidden_dim": 32,
            "embed_dim": 8,
            "step1": {"beta": 0.1, "epochs": 1},
            "step2": {"lambda": 1.0, "epochs": 1},
        },
        "search": {
            "algorithm": "tpe",
            "metric": "probe/shared/y_c",
            "num_trials": 4,
            "space": {"step1.beta": {"type": "loguniform", "low": 1.0e-3, "high": 10.0}},
        },
    }


def _grid_study() -> dict[str, Any]:
    study = _base_study()
    study["search"] = {
        "algorithm": "grid",
        "metric": "probe/shared/y_c",
        "seeds": [0, 1],
        "space": {"step2.lambda": {"type": "grid", "values": [0, 0.01, 1]}},
    }
    return study


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _load_error(tmp_path: Path, data: Any) -> StudyValidationError:
    path = _write(tmp_path, data)
    with pytest.raises(StudyValidationError) as info:
        load_study(path)
    assert info.value.path == str(path)
    return info.value


def _line_for(error: StudyValidationError, field: str) -> str:
    """Return the error line about ``field``; fail with the whole message if there is none."""
    prefix = f"{error.path}: {field}: "
    lines = [line for line in str(error).splitlines() if line.startswith(prefix)]
    assert lines, f"no line for {field!r} in:\n{error}"
    return lines[0]


# --------------------------------------------------------------------------------------------
# Shipped study files
# --------------------------------------------------------------------------------------------


def test_shipped_studies_present() -> None:
    names = {path.stem for path in SHIPPED_STUDIES}
    assert {"demo", "smoke", "paper-figure4a", "digits-two-view"} <= names


@pytest.mark.parametrize("path", SHIPPED_STUDIES, ids=[path.stem for path in SHIPPED_STUDIES])
def test_shipped_study_loads(path: Path, in_repo_root: Path) -> None:
    spec = load_study(path)

    assert spec.name == path.stem
    assert spec.tracking.experiment == spec.name
    assert path.read_text(encoding="utf-8").startswith("#")
    assert spec.search.num_trials is not None and spec.search.num_trials >= 1


@pytest.mark.parametrize("path", SHIPPED_STUDIES, ids=[path.stem for path in SHIPPED_STUDIES])
def test_shipped_study_round_trips(path: Path, tmp_path: Path, in_repo_root: Path) -> None:
    spec = load_study(path)
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(dump_resolved_yaml(spec), encoding="utf-8")

    assert load_study(dumped) == spec


def test_smoke_study_settings() -> None:
    spec = load_study(STUDIES_DIR / "smoke.yaml")

    assert spec.data.n_samples == 4000
    assert (spec.method.hidden_dim, spec.method.embed_dim, spec.method.batch_size) == (64, 16, 128)
    assert (spec.method.step1.epochs, spec.method.step2.epochs) == (2, 2)
    assert spec.method.step2.enabled is True
    assert spec.method.step1.lr == pytest.approx(1e-3)
    assert spec.method.step2.lr == pytest.approx(1e-3)
    assert (spec.search.algorithm, spec.search.num_trials, spec.search.max_concurrent) == ("tpe", 2, 1)
    assert spec.resources.num_workers == 2
    assert spec.eval.probe_max_train_samples == 2000
    assert spec.eval.diagnostics_samples == 512


def test_demo_study_settings() -> None:
    spec = load_study(STUDIES_DIR / "demo.yaml")
    beta = spec.search.space["step1.beta"]

    assert spec.data.n_samples == 60000
    assert (spec.method.hidden_dim, spec.method.embed_dim, spec.method.batch_size) == (512, 100, 256)
    assert spec.method.step1.kappa == 1000.0
    assert (spec.method.step1.epochs, spec.method.step2.epochs) == (15, 8)
    assert (spec.search.num_trials, spec.search.max_concurrent) == (8, 2)
    assert (beta.type, beta.low, beta.high) == ("loguniform", 1e-3, 1e3)
    assert spec.eval.probe_max_train_samples == 10000


def test_figure4a_study_grid() -> None:
    spec = load_study(STUDIES_DIR / "paper-figure4a.yaml")
    values = spec.search.space["step1.beta"].values

    assert values[0] == 0.0
    assert len(values) == 13
    assert all(isinstance(value, float) for value in values)
    assert spec.search.seeds == (0, 1, 2)
    assert spec.search.num_trials == 39
    assert grid_size(spec) == 39
    assert spec.method.step2.enabled is False
    assert (spec.method.step1.epochs, spec.method.step1.lr) == (50, 1e-4)


def test_digits_study_settings(in_repo_root: Path) -> None:
    spec = load_study(STUDIES_DIR / "digits-two-view.yaml")

    assert spec.data.kind == "parquet"
    assert spec.data.manifest == str(in_repo_root / "data" / "digits-two-view" / "dataset.yaml")
    assert not hasattr(spec.data, "n_samples")
    assert spec.search.metric == "probe/shared/digit"
    assert [set(block) for block in spec.search.grids] == [{"name", "step1.beta", "step2.lambda"}, {"name"}]
    assert grid_size(spec) == (3 * 2 + 1) * 3


# --------------------------------------------------------------------------------------------
# Validation errors
# --------------------------------------------------------------------------------------------


def _rename_search(study: dict[str, Any]) -> None:
    study["serach"] = study.pop("search")


def _misspell_beta(study: dict[str, Any]) -> None:
    study["method"]["step1"]["betta"] = study["method"]["step1"].pop("beta")


def _misspell_space_path(study: dict[str, Any]) -> None:
    study["search"]["space"]["step1.betta"] = study["search"]["space"].pop("step1.beta")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Return a mutation that sets ``path`` in a study dict.

    Keys in ``path`` are joined by ``/`` so that dotted space keys stay whole.
    """

    def mutate(study: dict[str, Any]) -> None:
        keys = path.split("/")
        target = study
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = value

    return mutate


ERROR_CASES = [
    # (case id, mutation, field in the message, value repr in the message, other expected text)
    ("misspelt top-level field", _rename_search, "serach", None, "did you mean 'search'"),
    ("misspelt method field", _misspell_beta, "method.step1.betta", "0.1", "did you mean 'beta'"),
    ("misspelt space path", _misspell_space_path, "search.space.step1.betta", "'step1.betta'", "valid paths"),
    ("wrong literal", _set("method/step1/penalty", "cos"), "method.step1.penalty", "'cos'", "'cosine' or 'kl'"),
    ("wrong algorithm", _set("search/algorithm", "bayes"), "search.algorithm", "'bayes'", "'tpe'"),
    ("negative beta", _set("method/step1/beta", -1.0), "method.step1.beta", "-1.0", ">= 0"),
    ("zero lr", _set("method/step1/lr", 0.0), "method.step1.lr", "0.0", "> 0"),
    ("drop fraction one", _set("method/step2/drop_fraction", 1.0), "method.step2.drop_fraction", "1.0", "< 1"),
    (
        "loguniform low zero",
        _set("search/space", {"step1.beta": {"type": "loguniform", "low": 0.0, "high": 1.0}}),
        "search.space.step1.beta.low",
        "0.0",
        "must be > 0",
    ),
    (
        "uniform low above high",
        _set("search/space", {"temperature": {"type": "uniform", "low": 0.5, "high": 0.1}}),
        "search.space.temperature.high",
        "0.1",
        "greater than low",
    ),
    (
        "range outside field",
        _set("search/space", {"step1.beta": {"type": "uniform", "low": -1.0, "high": 1.0}}),
        "search.space.step1.beta.low",
        "-1.0",
        "method.step1.beta",
    ),
    (
        "int dim below one",
        _set("search/space", {"embed_dim": {"type": "int", "low": 0, "high": 64}}),
        "search.space.embed_dim.low",
        "0",
        "must be >= 1",
    ),
    (
        "uniform on int field",
        _set("search/space", {"embed_dim": {"type": "uniform", "low": 8.0, "high": 64.0}}),
        "search.space.embed_dim.type",
        "'uniform'",
        "use type: int",
    ),
    (
        "invalid categorical choice",
        _set("search/space", {"step1.penalty": {"type": "categorical", "choices": ["cosine", "l2"]}}),
        "search.space.step1.penalty.choices[1]",
        "'l2'",
        "'cosine' or 'kl'",
    ),
    (
        "unknown parameter type",
        _set("search/space", {"step1.beta": {"type": "lognormal", "low": 1.0, "high": 2.0}}),
        "search.space.step1.beta.type",
        "'lognormal'",
        "'loguniform'",
    ),
    (
        "grid under tpe",
        _set("search/space", {"step1.beta": {"type": "grid", "values": [0.1, 1.0]}}),
        "search.space.step1.beta.type",
        "'grid'",
        "algorithm: grid",
    ),
    ("several seeds under tpe", _set("search/seeds", [0, 1]), "search.seeds", "[0, 1]", "use algorithm: grid"),
    ("repeated seed", _set("search/seeds", [0, 0]), "search.seeds", "[0, 0]", "repeat"),
    ("bad metric name", _set("search/metric", "probe$acc"), "search.metric", "'probe$acc'", "letters"),
    (
        "mode length mismatch",
        _set("search/mode", ["max", "min"]),
        "search.mode",
        "['max', 'min']",
        "single",
    ),
    (
        "asha with two metrics",
        lambda study: study["search"].update(metric=["a", "b"], mode="max", scheduler="asha"),
        "search.scheduler",
        "'asha'",
        "single metric",
    ),
    (
        "gaussian head with cosine",
        _set("method/step1/head", "gaussian"),
        "method.step1.penalty",
        "'cosine'",
        "'kl'",
    ),
    (
        "synthetic field on digits",
        _set("data", {"kind": "digits", "n_samples": 5000}),
        "data.n_samples",
        "5000",
        "synthetic",
    ),
    ("unknown data kind", _set("data", {"kind": "mnist"}), "data.kind", "'mnist'", "'digits'"),
    ("bad study name", _set("name", "my study"), "name", "'my study'", "letters"),
    (
        "step2 search while disabled",
        lambda study: (
            study["method"]["step2"].update(enabled=False),
            study["search"]["space"].update({"step2.lambda": {"type": "loguniform", "low": 0.1, "high": 1.0}}),
        ),
        "search.space.step2.lambda",
        "'step2.lambda'",
        "enabled is false",
    ),
    ("fractional workers", _set("resources/num_workers", 1.5), "resources.num_workers", "1.5", "integer"),
]


@pytest.mark.parametrize(
    ("mutate", "field", "value", "text"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_invalid_study_rejected(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], Any], field: str, value: str | None, text: str
) -> None:
    study = _base_study()
    mutate(study)

    line = _line_for(_load_error(tmp_path, study), field)

    if value is not None:
        assert f"(got {value})" in line
    assert text in line


def test_missing_num_trials_reported_for_tpe(tmp_path: Path) -> None:
    study = _base_study()
    del study["search"]["num_trials"]

    line = _line_for(_load_error(tmp_path, study), "search.num_trials")

    assert "required with algorithm 'tpe'" in line


def test_all_problems_reported_together(tmp_path: Path) -> None:
    study = _base_study()
    _rename_search(study)
    study["method"]["step1"]["beta"] = -2.0
    study["method"]["step1"]["penalty"] = "cos"

    error = _load_error(tmp_path, study)

    assert "(got -2.0)" in _line_for(error, "method.step1.beta")
    assert "(got 'cos')" in _line_for(error, "method.step1.penalty")
    assert "did you mean 'search'" in _line_for(error, "serach")
    assert "required field is missing" in _line_for(error, "search")
    assert len(error.problems) == 4


def test_single_mode_repeated_per_metric() -> None:
    study = _base_study()
    study["search"]["metric"] = ["probe/shared/y_c", "probe/shared/y_1"]
    study["search"]["mode"] = "min"

    search = validate_study(study).search

    assert search.mode == ["min", "min"]
    assert search.metrics == ["probe/shared/y_c", "probe/shared/y_1"]
    assert search.modes == ["min", "min"]


def test_grid_num_trials_mismatch(tmp_path: Path) -> None:
    study = _grid_study()
    study["search"]["num_trials"] = 5

    line = _line_for(_load_error(tmp_path, study), "search.num_trials")

    assert "(got 5)" in line
    assert "3 x 2 = 6" in line


def test_grid_rejects_range_entry(tmp_path: Path) -> None:
    study = _grid_study()
    study["search"]["space"]["step1.beta"] = {"type": "loguniform", "low": 0.1, "high": 1.0}

    line = _line_for(_load_error(tmp_path, study), "search.space.step1.beta.type")

    assert "(got 'loguniform')" in line
    assert "grid or categorical" in line


def test_grid_num_trials_defaults(tmp_path: Path) -> None:
    spec = load_study(_write(tmp_path, _grid_study()))

    assert spec.search.num_trials == 6
    assert spec.search.space["step2.lambda"].values == (0.0, 0.01, 1.0)


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nsearch:\n  metric: [a, b\n  mode: max\n", encoding="utf-8")

    with pytest.raises(StudyValidationError) as info:
        load_study(path)

    message = str(info.value)
    assert message.startswith(f"{path}: line ")
    assert "invalid YAML" in message


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("name: a\nname: b\nsearch: {metric: m, num_trials: 1}\n", encoding="utf-8")

    with pytest.raises(StudyValidationError) as info:
        load_study(path)

    assert "duplicate key 'name'" in str(info.value)
    assert "line 2" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    with pytest.raises(StudyValidationError) as info:
        load_study(path)

    assert str(info.value) == f"{path}: study file not found"


@pytest.mark.parametrize(("text", "expected"), [("", "the file is empty"), ("- a\n- b\n", "not a list")])
def test_top_level_not_mapping(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(StudyValidationError) as info:
        load_study(path)

    assert expected in str(info.value)
    assert "top level must be a mapping" in str(info.value)


def test_validation_error_pickles(tmp_path: Path) -> None:
    study = _base_study()
    study["method"]["step1"]["beta"] = -1.0
    error = _load_error(tmp_path, study)

    restored = pickle.loads(pickle.dumps(error))

    assert str(restored) == str(error)
    assert restored.path == error.path


# --------------------------------------------------------------------------------------------
# Defaults, dumping and flattening
# --------------------------------------------------------------------------------------------


def test_defaults_fill_study() -> None:
    spec = validate_study({"name": "tiny", "search": {"metric": "probe/shared/y_c", "num_trials": 1}})

    assert spec.data.kind == "synthetic"
    assert (spec.data.n_samples, spec.data.latent_dim, spec.data.x_dim) == (90000, 50, 100)
    assert spec.data.latent_variance == 0.5
    assert spec.method == MethodSpec()
    assert spec.method.step1.beta == 0.1
    assert spec.method.step2.lam == 1.0
    assert spec.search.seeds == (0,)
    assert spec.tracking.experiment == "tiny"


def test_study_is_frozen() -> None:
    spec = validate_study(_base_study())

    with pytest.raises(ValueError):
        spec.name = "other"  # type: ignore[misc]


def test_dump_uses_yaml_names() -> None:
    spec = validate_study(_base_study())

    text = dump_resolved_yaml(spec)
    data = yaml.safe_load(text)

    assert data["method"]["step2"]["lambda"] == 1.0
    assert "lam" not in data["method"]["step2"]
    assert data["tracking"]["experiment"] == "unit"
    assert validate_study(data) == spec


def test_flatten_params_names() -> None:
    spec = validate_study(_base_study())

    params = flatten_params(spec)

    assert params["step1.beta"] == 0.1
    assert params["step2.lambda"] == 1.0
    assert params["hidden_dim"] == 32
    assert params["step1.penalty"] == "cosine"
    assert params["step2.enabled"] is True
    assert flatten_params(spec.method) == params
    assert set(method_parameter_paths()) <= set(params)


def test_space_accepts_python_path() -> None:
    study = _base_study()
    study["search"]["space"] = {"step2.lam": {"type": "uniform", "low": 0.0, "high": 2.0}}

    spec = validate_study(study)

    assert list(spec.search.space) == ["step2.lambda"]


# --------------------------------------------------------------------------------------------
# resolve_method
# --------------------------------------------------------------------------------------------


def test_resolve_method_applies_overrides() -> None:
    spec = validate_study(_base_study())

    method = resolve_method(spec, {"step1.beta": 0.5, "step2.lambda": 3, "embed_dim": 12})

    assert method.step1.beta == 0.5
    assert method.step2.lam == 3.0
    assert method.embed_dim == 12
    assert method.hidden_dim == 32
    assert spec.method.step1.beta == 0.1


def test_resolve_method_accepts_python_names() -> None:
    spec = validate_study(_base_study())

    method = resolve_method(spec, {"step2.lam": 0.25})

    assert method.step2.lam == 0.25


def test_resolve_method_rejects_bad_value() -> None:
    spec = validate_study(_base_study())

    with pytest.raises(ValueError) as info:
        resolve_method(spec, {"step1.beta": -0.5})

    assert "method.step1.beta" in str(info.value)
    assert "(got -0.5)" in str(info.value)


def test_resolve_method_rejects_bad_combination() -> None:
    spec = validate_study(_base_study())

    with pytest.raises(ValueError) as info:
        resolve_method(spec, {"step1.head": "gaussian"})

    assert "method.step1.penalty" in str(info.value)
    assert resolve_method(spec, {"step1.head": "gaussian", "step1.penalty": "kl"}).step1.head == "gaussian"


def test_resolve_method_rejects_unknown_path() -> None:
    spec = validate_study(_base_study())

    with pytest.raises(ValueError) as info:
        resolve_method(spec, {"step1.betta": 0.5})

    assert "'step1.betta'" in str(info.value)
    assert "did you mean 'step1.beta'" in str(info.value)


# --------------------------------------------------------------------------------------------
# Optuna search space
# --------------------------------------------------------------------------------------------


def _mixed_space_study() -> StudySpec:
    study = _base_study()
    study["search"]["space"] = {
        "step1.beta": {"type": "loguniform", "low": 1.0e-3, "high": 10.0},
        "temperature": {"type": "uniform", "low": 0.05, "high": 0.5},
        "embed_dim": {"type": "int", "low": 4, "high": 64, "log": True},
        "step1.penalty": {"type": "categorical", "choices": ["cosine", "kl"]},
    }
    study["search"]["seeds"] = [7]
    return validate_study(study)


def test_define_by_run_suggests_space() -> None:
    spec = _mixed_space_study()
    study = optuna.create_study(sampler=make_sampler(spec), direction="maximize")
    define_by_run = make_define_by_run(spec)

    for index in range(6):
        trial = study.ask()
        assert define_by_run(trial) is None
        distributions = trial.distributions

        assert set(trial.params) == {"step1.beta", "temperature", "embed_dim", "step1.penalty", SEED_PARAM}
        assert distributions["step1.beta"] == optuna.distributions.FloatDistribution(1e-3, 10.0, log=True)
        assert distributions["temperature"] == optuna.distributions.FloatDistribution(0.05, 0.5)
        assert distributions["embed_dim"] == optuna.distributions.IntDistribution(4, 64, log=True)
        assert distributions["step1.penalty"] == optuna.distributions.CategoricalDistribution(["cosine", "kl"])
        assert distributions[SEED_PARAM] == optuna.distributions.CategoricalDistribution([7])
        assert 1e-3 <= trial.params["step1.beta"] <= 10.0
        assert 4 <= trial.params["embed_dim"] <= 64
        assert trial.params[SEED_PARAM] == 7

        study.tell(trial, float(index))


def test_sampled_config_resolves() -> None:
    spec = _mixed_space_study()
    study = optuna.create_study(sampler=make_sampler(spec), direction="maximize")
    trial = study.ask()
    make_define_by_run(spec)(trial)

    config = dict(trial.params)
    method = resolve_method(spec, method_overrides(config))

    assert seed_of(config) == 7
    assert set(method_overrides(config)) == {"step1.beta", "temperature", "embed_dim", "step1.penalty"}
    assert method.step1.beta == trial.params["step1.beta"]
    assert method.embed_dim == trial.params["embed_dim"]
    assert method.step1.penalty == trial.params["step1.penalty"]


def test_samplers_match_algorithm() -> None:
    tpe = validate_study(_base_study())
    random_study = _base_study()
    random_study["search"]["algorithm"] = "random"

    assert isinstance(make_sampler(tpe), optuna.samplers.TPESampler)
    assert isinstance(make_sampler(validate_study(random_study)), optuna.samplers.RandomSampler)
    assert isinstance(make_sampler(validate_study(_grid_study())), optuna.samplers.GridSampler)


def test_sampler_seed_reproduces_trials() -> None:
    study = _base_study()
    study["search"]["algorithm"] = "random"
    study["search"]["sampler_seed"] = 3
    spec = validate_study(study)

    def first_beta() -> float:
        optuna_study = optuna.create_study(sampler=make_sampler(spec))
        trial = optuna_study.ask()
        make_define_by_run(spec)(trial)
        return trial.params["step1.beta"]

    assert first_beta() == first_beta()


def _run_grid(spec: StudySpec) -> list[tuple[Any, ...]]:
    """Run ``num_trials`` sequential trials and return each trial's sampled values."""
    study = optuna.create_study(sampler=make_sampler(spec), direction="maximize")
    define_by_run = make_define_by_run(spec)
    names = [*spec.search.space, SEED_PARAM]
    visited = []
    for _ in range(spec.search.num_trials):
        trial = study.ask()
        define_by_run(trial)
        visited.append(tuple(trial.params[name] for name in names))
        study.tell(trial, 0.0)
    return visited


def test_grid_sampler_visits_figure4a_once() -> None:
    spec = load_study(STUDIES_DIR / "paper-figure4a.yaml")

    visited = _run_grid(spec)

    expected = set(itertools.product(spec.search.space["step1.beta"].values, spec.search.seeds))
    assert len(visited) == 39
    assert len(set(visited)) == len(visited)
    assert set(visited) == expected


def test_grid_sampler_visits_mixed_axes_once() -> None:
    study = _grid_study()
    study["search"]["space"]["step1.penalty"] = {"type": "categorical", "choices": ["cosine", "kl"]}
    spec = validate_study(study)

    visited = _run_grid(spec)

    expected = set(itertools.product((0.0, 0.01, 1.0), ("cosine", "kl"), (0, 1)))
    assert grid_size(spec) == spec.search.num_trials == 12
    assert len(visited) == 12
    assert set(visited) == expected


def test_grid_size_rejects_tpe() -> None:
    with pytest.raises(ValueError, match="'tpe'"):
        grid_size(validate_study(_base_study()))


def test_seed_of_rejects_missing_seed() -> None:
    with pytest.raises(ValueError, match="no 'seed' entry"):
        seed_of({"step1.beta": 0.1})
    with pytest.raises(ValueError, match="non-negative integer"):
        seed_of({"seed": -1})


def test_method_overrides_split_config() -> None:
    config = {"step1.beta": 0.2, "seed": 1, "study_path": "x.yaml", "step2": {"lam": 2.0}}

    assert method_overrides(config) == {"step1.beta": 0.2, "step2.lambda": 2.0}
    assert seed_of(config) == 1


def test_define_by_run_pickles() -> None:
    spec = _mixed_space_study()
    restored = pickle.loads(pickle.dumps(make_define_by_run(spec)))
    study = optuna.create_study(sampler=make_sampler(spec))
    trial = study.ask()

    restored(trial)

    assert set(trial.params) == {*spec.search.space, SEED_PARAM}


def test_ray_optuna_search_suggests_dotted_keys(tmp_path: Path) -> None:
    ray_optuna = pytest.importorskip("ray.tune.search.optuna")
    spec = load_study(STUDIES_DIR / "paper-figure4a.yaml")
    searcher = ray_optuna.OptunaSearch(
        space=make_define_by_run(spec),
        metric=spec.search.metric,
        mode=spec.search.mode,
        sampler=make_sampler(spec),
    )

    config = searcher.suggest("trial-1")
    searcher.on_trial_complete("trial-1", {spec.search.metric: 0.5})
    searcher.save(str(tmp_path / "searcher.pkl"))

    assert set(config) == {"step1.beta", SEED_PARAM}
    assert config["step1.beta"] in spec.search.space["step1.beta"].values
    assert seed_of(config) in spec.search.seeds
    assert (tmp_path / "searcher.pkl").stat().st_size > 0



def test_unknown_metric_rejected(tmp_path: Path) -> None:
    data = _base_study()
    data["search"]["metric"] = "probe/shared/yc"
    error = _load_error(tmp_path, data)
    line = _line_for(error, "search.metric")
    assert "'probe/shared/yc'" in line
    assert "did you mean 'probe/shared/y_c'" in line


def test_specific_metric_needs_step2(tmp_path: Path) -> None:
    data = _base_study()
    data["method"] = {"step2": {"enabled": False}}
    data["search"]["metric"] = "probe/specific1/y_1"
    data["search"]["space"] = {"step1.beta": {"type": "loguniform", "low": 0.01, "high": 1.0}}
    error = _load_error(tmp_path, data)
    assert "probe/specific1/y_1" in _line_for(error, "search.metric")


def test_batch_not_divisible_by_workers(tmp_path: Path) -> None:
    data = _base_study()
    data["method"] = {"batch_size": 255}
    data["resources"] = {"num_workers": 2}
    error = _load_error(tmp_path, data)
    line = _line_for(error, "method.batch_size")
    assert "255" in line
    assert "num_workers (2)" in line
