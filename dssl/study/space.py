"""Optuna search space and sampler built from a study's ``search`` section.

Every space entry is suggested under its dotted method path (``step1.beta``, ``step2.lambda``)
and the training seed under ``"seed"``. Ray Tune's ``OptunaSearch`` accepts the returned
define-by-run callable as its ``space``. A trial's config is then a flat mapping with those keys,
and :func:`seed_of` and :func:`method_overrides` split it again.

An entry with ``when: {path: values}`` is suggested only on trials where each named path has
one of the values. A path's value is the one suggested earlier on the same trial, else the
study's fixed method value. Optuna's define-by-run API records only what a trial suggests, so a trial's config, its
Optuna parameters and the sampler's model contain the conditional entry only where it applies.
"""

from __future__ import annotations

import itertools
import logging
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna

from dssl.study.schema import (
    CategoricalParameter,
    GridParameter,
    IntParameter,
    LogUniformParameter,
    MethodSpec,
    SearchSpec,
    Step2Spec,
    StudySpec,
    UniformParameter,
    canonical_method_path,
    method_value,
)

logger = logging.getLogger(__name__)

__all__ = [
    "SEED_PARAM",
    "grid_size",
    "make_define_by_run",
    "make_sampler",
    "method_overrides",
    "seed_of",
]

SEED_PARAM = "seed"
"""Name under which the training seed is suggested and stored in a trial's config."""

GRID_POINT_PARAM = "grid_point"
"""Name under which a grid union's point index is suggested and stored in a trial's config."""

_Parameter = LogUniformParameter | UniformParameter | IntParameter | CategoricalParameter | GridParameter


def _search_of(spec: StudySpec | SearchSpec) -> SearchSpec:
    if isinstance(spec, StudySpec):
        return spec.search
    if isinstance(spec, SearchSpec):
        return spec
    raise ValueError(f"expected a StudySpec or SearchSpec, got {type(spec).__name__}")


def _suggest(trial: optuna.trial.Trial, path: str, parameter: _Parameter) -> Any:
    """Suggest one space entry under its dotted path."""
    if isinstance(parameter, LogUniformParameter):
        return trial.suggest_float(path, parameter.low, parameter.high, log=True)
    if isinstance(parameter, UniformParameter):
        return trial.suggest_float(path, parameter.low, parameter.high)
    if isinstance(parameter, IntParameter):
        return trial.suggest_int(path, parameter.low, parameter.high, log=parameter.log)
    if isinstance(parameter, CategoricalParameter):
        return trial.suggest_categorical(path, list(parameter.choices))
    return trial.suggest_categorical(path, list(parameter.values))


def _conditions_hold(when: Mapping[str, tuple[Any, ...]] | None, values: Mapping[str, Any]) -> bool:
    """Return whether every condition of an entry holds for the trial's values so far."""
    return when is None or all(values.get(path) in allowed for path, allowed in when.items())


class _DefineByRun:
    """Optuna define-by-run function for one study's search space.

    A class instance rather than a closure so that it pickles: Ray Tune pickles ``OptunaSearch``,
    including this callable, when it saves the searcher state.

    Args:
        space: The validated entries in file order (a condition's path comes before its entry).
        seeds: The training seeds.
        fixed: The method values of the paths that entries' conditions name, used on trials where
            the space does not suggest that path.
    """

    def __init__(
        self,
        space: Mapping[str, _Parameter],
        seeds: tuple[int, ...],
        fixed: Mapping[str, Any] | None = None,
    ) -> None:
        self._space = dict(space)
        self._seeds = list(seeds)
        self._fixed = dict(fixed or {})

    def __call__(self, trial: optuna.trial.Trial) -> None:
        """Suggest every space entry whose conditions hold, then the seed, on ``trial``.

        Args:
            trial: An Optuna trial, or Ray Tune's wrapper around one.

        Returns:
            None, so the trial's config contains exactly the suggested values.
        """
        values = dict(self._fixed)
        for path, parameter in self._space.items():
            if _conditions_hold(parameter.when, values):
                values[path] = _suggest(trial, path, parameter)
        trial.suggest_categorical(SEED_PARAM, self._seeds)
        return None


def make_define_by_run(spec: StudySpec) -> Callable[[optuna.trial.Trial], dict[str, Any] | None]:
    """Build the define-by-run function that suggests a study's search space.

    loguniform entries use ``suggest_float(log=True)``, uniform ``suggest_float``, int
    ``suggest_int(log=...)``, categorical and grid ``suggest_categorical``; ``"seed"`` is a
    categorical over ``search.seeds``. An entry with ``when`` is suggested only on trials where its
    conditions hold (see the module docstring).

    Args:
        spec: A validated study. A bare search section is accepted too; its conditions on paths
            that the space does not sample then see the default method values.

    Returns:
        A picklable callable that takes an Optuna trial and returns None.

    Example:
        >>> from dssl.study.schema import validate_study
        >>> spec = validate_study({"name": "c", "search": {"metric": "probe/shared/y_c", "num_trials": 4,
        ...     "space": {"step2.penalty": {"type": "categorical", "choices": ["orthogonality", "club"]},
        ...               "step2.club_hidden_dim": {"type": "int", "low": 16, "high": 256,
        ...                                         "when": {"step2.penalty": "club"}}}}})
        >>> study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        >>> trial = study.ask()
        >>> make_define_by_run(spec)(trial)
        >>> ("step2.club_hidden_dim" in trial.params) == (trial.params["step2.penalty"] == "club")
        True
    """
    search = _search_of(spec)
    if search.grids:
        return _GridUnionDefineByRun(grid_union_points(search), search.seeds)
    method = spec.method if isinstance(spec, StudySpec) else MethodSpec()
    conditions = {path for parameter in search.space.values() for path in (parameter.when or {})}
    fixed = {path: method_value(method, path) for path in sorted(conditions)}
    return _DefineByRun(search.space, search.seeds, fixed)


def grid_union_points(search: SearchSpec) -> list[dict[str, Any]]:
    """Return every point of ``search.grids``, block after block, as ``{path: value}`` dicts.

    Example:
        >>> from dssl.study.schema import validate_study
        >>> spec = validate_study({"name": "u", "search": {"algorithm": "grid", "metric": "probe/shared/y_c",
        ...     "grids": [{"name": {"type": "grid", "values": ["clip"]}},
        ...               {"step2.lambda": {"type": "grid", "values": [0.0, 1.0]}}]}})
        >>> grid_union_points(spec.search)
        [{'name': 'clip'}, {'step2.lambda': 0.0}, {'step2.lambda': 1.0}]
    """
    points: list[dict[str, Any]] = []
    for block in search.grids:
        paths = list(block)
        axes = [_axis_values(block[path]) for path in paths]
        points.extend(dict(zip(paths, values, strict=True)) for values in itertools.product(*axes))
    return points


class _GridUnionDefineByRun:
    """Define-by-run function of a grid union: one categorical over point indices, then the seed.

    The sampler's grid contains ``GRID_POINT_PARAM`` and the seed. The point's settings come back as
    constants, which Ray Tune's ``OptunaSearch`` (2.60) merges into the trial's config.
    """

    def __init__(self, points: list[dict[str, Any]], seeds: tuple[int, ...]) -> None:
        self._points = points
        self._seeds = list(seeds)

    def __call__(self, trial: optuna.trial.Trial) -> dict[str, Any]:
        index = trial.suggest_categorical(GRID_POINT_PARAM, list(range(len(self._points))))
        trial.suggest_categorical(SEED_PARAM, self._seeds)
        return dict(self._points[index])


def _axis_values(parameter: _Parameter) -> list[Any]:
    if isinstance(parameter, CategoricalParameter):
        return list(parameter.choices)
    if isinstance(parameter, GridParameter):
        return list(parameter.values)
    raise ValueError(f"a {parameter.type!r} entry is not a grid axis")


def grid_size(spec: StudySpec | SearchSpec) -> int:
    """Count the trials of a grid study: the product of the axis lengths times the number of seeds.

    Args:
        spec: A validated study (or its search section) with ``algorithm: grid``.

    Returns:
        The number of grid points times ``len(search.seeds)``; ``search.num_trials`` equals it.

    Raises:
        ValueError: If the algorithm is not ``grid``.
    """
    search = _search_of(spec)
    if search.algorithm != "grid":
        raise ValueError(f"grid_size needs search.algorithm 'grid', got {search.algorithm!r}")

    if search.grids:
        return len(grid_union_points(search)) * len(search.seeds)
    points = 1
    for path, parameter in search.space.items():
        if isinstance(parameter, CategoricalParameter):
            points *= len(parameter.choices)
        elif isinstance(parameter, GridParameter):
            points *= len(parameter.values)
        else:
            raise ValueError(f"space entry {path!r} of type {parameter.type!r} is not a grid axis")
    return points * len(search.seeds)


def _grid_search_space(search: SearchSpec) -> dict[str, list[Any]]:
    if search.grids:
        points = len(grid_union_points(search))
        return {GRID_POINT_PARAM: list(range(points)), SEED_PARAM: list(search.seeds)}
    space: dict[str, list[Any]] = {}
    for path, parameter in search.space.items():
        if isinstance(parameter, CategoricalParameter):
            space[path] = list(parameter.choices)
        elif isinstance(parameter, GridParameter):
            space[path] = list(parameter.values)
    space[SEED_PARAM] = list(search.seeds)
    return space


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """``GridSampler`` that does not stop the study when the grid is used up.

    ``GridSampler.after_trial`` (optuna 5.1) calls ``study.stop()`` once every grid point has been
    visited, and ``Study.stop`` raises RuntimeError outside ``Study.optimize``. Ray Tune's
    ``OptunaSearch`` drives the study through ask and tell, so the last trials of a grid would log
    that error. The trial budget (``search.num_trials``, the grid size) ends the study instead.
    """

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: optuna.trial.TrialState,
        values: Sequence[float] | None,
    ) -> None:
        return None


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    """Build the Optuna sampler named by ``search.algorithm``, seeded with ``search.sampler_seed``.

    Args:
        spec: A validated study.

    Returns:
        ``TPESampler`` for tpe, ``RandomSampler`` for random, and for grid a ``GridSampler`` over
        every grid and categorical entry plus ``"seed"`` over ``search.seeds``. The grid sampler
        visits each point once in ``num_trials`` sequential trials and does not call
        ``study.stop()`` at the end, so it works with ask and tell.
    """
    search = _search_of(spec)
    if search.algorithm == "tpe":
        return optuna.samplers.TPESampler(seed=search.sampler_seed)
    if search.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=search.sampler_seed)
    if search.algorithm == "grid":
        return _AskTellGridSampler(_grid_search_space(search), seed=search.sampler_seed)
    raise ValueError(f"search.algorithm must be 'tpe', 'grid' or 'random', got {search.algorithm!r}")


def _flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten_config(value, name + "."))
        else:
            flat[name] = value
    return flat


def seed_of(config: Mapping[str, Any]) -> int:
    """Return the training seed of a sampled trial config.

    Args:
        config: The trial's config, as produced by :func:`make_define_by_run`.

    Returns:
        The value under ``"seed"``.

    Raises:
        ValueError: If there is no ``"seed"`` entry or it is not a non-negative integer.
    """
    if SEED_PARAM not in config:
        raise ValueError(
            f"trial config has no {SEED_PARAM!r} entry; keys are {sorted(map(str, config))}"
        )

    seed = config[SEED_PARAM]
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"trial config {SEED_PARAM!r} must be a non-negative integer, got {seed!r}")
    return int(seed)


def method_overrides(config: Mapping[str, Any]) -> dict[str, Any]:
    """Return the method settings of a sampled trial config, keyed by dotted YAML path.

    Nested mappings are flattened with ``.`` first. Keys that are neither the seed nor a method
    parameter (constants that a runner adds to the config, for example) are left out.

    When the config sets ``step2.penalty``, the settings that only another penalty uses
    (``step2.club_hidden_dim``, ``step2.hsic_sigma``) are set to None unless the config sets them
    too. A study whose method fixes ``penalty: club`` can then sample ``hsic`` on some trials
    without carrying CLUB's width into them.

    Args:
        config: The trial's config, as produced by :func:`make_define_by_run`.

    Returns:
        Overrides for :func:`dssl.study.schema.resolve_method`, e.g. ``{"step1.beta": 0.5}``.
    """
    overrides: dict[str, Any] = {}
    for key, value in _flatten_config(config).items():
        if key in (SEED_PARAM, GRID_POINT_PARAM):
            continue
        path = canonical_method_path(key)
        if path is None:
            logger.debug("trial config key %r is not a method parameter; left out", key)
            continue
        overrides[path] = value
    if "step2.penalty" in overrides:
        for name, owner in Step2Spec.penalty_settings.items():
            if owner != overrides["step2.penalty"]:
                overrides.setdefault(f"step2.{name}", None)
    return overrides
