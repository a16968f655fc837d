"""The methods a study can select by ``method.name``, each a function that returns its phases."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from dssl.methods.base import Phase
from dssl.methods.disentangled_ssl import disentangled_ssl_phases

if TYPE_CHECKING:
    from dssl.study.schema import MethodSpec

PhaseBuilder = Callable[["MethodSpec", int, int], list[Phase]]

_METHODS: dict[str, PhaseBuilder] = {
    "disentangled_ssl": disentangled_ssl_phases,
}


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
    try:
        builder = _METHODS[method.name]
    except KeyError:
        raise ValueError(f"unknown method {method.name!r}; expected one of {method_names()}") from None
    return builder(method, x1_dim, x2_dim)


def describe_phases(method: MethodSpec) -> list[Phase]:
    """Return the phases of ``method`` for naming metrics; their models are never built."""
    return build_phases(method, 1, 1)
