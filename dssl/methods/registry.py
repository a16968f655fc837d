"""The methods a study can select by ``method.name``, each a function that returns its phases."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from dssl.methods.base import Phase

if TYPE_CHECKING:
    from dssl.study.schema import MethodSpec

PhaseBuilder = Callable[["MethodSpec", int, int], list[Phase]]

# "module:function" of each method's phase builder, imported on first use.
_METHODS: dict[str, str] = {
    "disentangled_ssl": "dssl.methods.disentangled_ssl:disentangled_ssl_phases",
    "clip": "dssl.methods.clip:clip_phases",
    "joint_opt": "dssl.methods.joint_opt:joint_opt_phases",
    "focal": "dssl.methods.focal:focal_phases",
    "dmvae": "dssl.methods.dmvae:dmvae_phases",
}


def _load_builder(name: str) -> PhaseBuilder:
    module_name, _, function_name = _METHODS[name].partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def method_names() -> tuple[str, ...]:
    """Return the registered method names."""
    return tuple(_METHODS)


def build_phases(method: MethodSpec, x1_dim: int, x2_dim: int) -> list[Phase]:
    """Return the training phases of ``method`` for inputs of the given widths.

    Args:
        method: The resolved method settings; ``method.name`` selects the method.
        x1_dim: Feature dimension of modality 1.
        x2_dim: Feature dimension of modality 2.

    Raises:
        ValueError: If ``method.name`` is not registered.
    """
    if method.name not in _METHODS:
        raise ValueError(f"unknown method {method.name!r}; expected one of {method_names()}")
    return _load_builder(method.name)(method, x1_dim, x2_dim)


def describe_phases(method: MethodSpec) -> list[Phase]:
    """Return the phases of ``method`` for naming metrics; their models are never built."""
    return build_phases(method, 1, 1)


def reuses_step1(method: MethodSpec) -> bool:
    """Return whether a trial of ``method`` can load a step-1 model trained by another trial.

    Only DisentangledSSL with step 2 qualifies: step 2 freezes the step-1 model, so trials that
    differ in step-2 settings only can share it (see dssl.study.step1_cache).
    """
    return method.name == "disentangled_ssl" and method.step2.enabled
