"""Method registry, in the manner of timm's `register_model` / `create_model`.

Built-in methods live one per module in the `methods` package and are found by walking it; third-party
packages add methods through the `ferbench.methods` entry-point group (each entry point names a
module, or a Method class, whose import registers it). No hand-kept import list.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, TypeVar

from bench.errors import FERBenchError

if TYPE_CHECKING:
    from bench.method import Method

_REGISTRY: dict[str, type[Method]] = {}
_DISCOVERED = False
M = TypeVar("M", bound=type)


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: make a Method subclass available under `name`."""

    def deco(cls: M) -> M:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"method {name!r} is registered twice: {existing} and {cls}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def discover() -> None:
    """Import every built-in method module and every `ferbench.methods` entry point, once."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    import methods as builtin

    for info in sorted(pkgutil.iter_modules(builtin.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"methods.{info.name}")
    for ep in entry_points(group="ferbench.methods"):
        ep.load()
    _DISCOVERED = True


def method_names() -> list[str]:
    discover()
    return sorted(_REGISTRY)


def get_method_class(name: str) -> type[Method]:
    discover()
    if name not in _REGISTRY:
        raise FERBenchError(f"unknown method {name!r}; registered methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_method(name: str, num_classes: int, args: dict[str, Any] | None = None) -> Method:
    """Instantiate a registered method with its defaults updated by `args`."""
    cls = get_method_class(name)
    return cls(num_classes=num_classes, **(args or {}))
