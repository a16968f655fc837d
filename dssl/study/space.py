"""Optuna search space and sampler built from a study's ``search`` section.

Every space entry is suggested under its dotted method path (``step1.beta``, ``step2.lambda``)
and the training seed under ``"seed"``. Ray Tune's ``OptunaSearch`` accepts the returned
define-by-run callable as its ``space``. A trial's config is then a flat mapping with those keys,
and :func:`seed_of` and :func:`method_overrides` split it again.
"""

from __future__ import annotations

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
    SearchSpec,
    StudySpec,
    UniformParameter,
    canonical_method_path,
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


class _DefineByRun:
    """Optuna define-by-run function for one study's search space.

    A class instance rather than a closure so that it pickles: Ray Tune pickles ``OptunaSearch``,
    including this callable, when it saves the searcher state.
    """

    def __init__(self, space: Mapping[str, _Parameter], seeds: tuple[int, ...]) -> None:
        self._space = dict(space)
        self._seeds = list(seeds)

    def __call__(self, trial: optuna.trial.Trial) -> None:
        """Suggest every space entry and the seed on ``trial``.

        Args:
            trial: An Optuna trial, or Ray Tune's wrapper around one.

        Returns:
            None, so the trial's config contains exactly the suggested values.
        """
        for path, parameter in self._space.items():
            _suggest(trial, path, parameter)
        trial.suggest_categorical(SEED_PARAM, self._seeds)
        return None


def make_define_by_run(spec: StudySpec) -> Callable[[optuna.trial.Trial], dict[str, Any] | None]:
    """Build the define-by-run function that suggests a study's search space.

    loguniform entries use ``suggest_float(log=True)``, uniform ``suggest_float``, int
    ``suggest_int(log=...)``, categorical and grid ``suggest_categorical``; ``"seed"`` is a
    categorical over ``search.seeds``.

    Args:
        spec: A validated study.

    Returns:
        A picklable callable that takes an Optuna trial and returns None.
    """
    search = _search_of(spec)
    return _DefineByRun(search.space, search.seeds)


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

    Args:
        config: The trial's config, as produced by :func:`make_define_by_run`.

    Returns:
        Overrides for :func:`dssl.study.schema.resolve_method`, e.g. ``{"step1.beta": 0.5}``.
    """
    overrides: dict[str, Any] = {}
    for key, value in _flatten_config(config).items():
        if key == SEED_PARAM:
            continue
        path = canonical_method_path(key)
        if path is None:
            logger.debug("trial config key %r is not a method parameter; left out", key)
            continue
        overrides[path] = value
    return overrides
