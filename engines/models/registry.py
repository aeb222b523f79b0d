"""The model registry: ``create(name, **kwargs)`` and ``available()``.

Each architecture module registers its constructors with ``@register("name")``;
importing :mod:`engines.models` imports them all, so the registry is complete.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from dicom_node.errors import DicomNodeError

_Factory = TypeVar("_Factory", bound=Callable[..., nn.Module])
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


class DuplicateModelError(DicomNodeError, ValueError):
    """Two constructors were registered under one name."""


class UnknownModelError(DicomNodeError, KeyError):
    """No model is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def register(name: str) -> Callable[[_Factory], _Factory]:
    """Register a model constructor under ``name`` (names are unique)."""

    def add(factory: _Factory) -> _Factory:
        if name in _REGISTRY:
            raise DuplicateModelError(f"model name {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return add


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` with its keyword arguments."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; available: {', '.join(available())}"
        ) from None
    return factory(**kwargs)


def available() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)
