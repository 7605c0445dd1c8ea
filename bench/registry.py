"""Method registry, in the manner of timm's `register_model` / `create_model`.

Built-in methods live one per module in the `methods` package and are found by walking it; third-party
packages add methods through the `ferbench.methods` entry-point group (each entry point names a
module, or a Method class, whose import registers it). No hand-kept import list.

A plugin never costs the other methods: one that fails to import, or that registers a name already taken, is left out
with one warning line on stderr naming its distribution and the error (said once, when another method is used or
listed); asking for the method it would have provided is one line instead (a FERBenchError, exit 2).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, TypeVar

from bench.errors import FERBenchError

if TYPE_CHECKING:
    from bench.method import Method

BUILTIN = "built-in"

_REGISTRY: dict[str, type[Method]] = {}
_ORIGINS: dict[str, str] = {}  # method name -> "built-in", a distribution ("my-plugin 0.1") or a module
_FAILED: dict[str, str] = {}  # entry-point name -> why its plugin was left out
_WARNINGS: list[str] = []  # one line a plugin left out, said once: when another method is used or listed
_DISCOVERED = False
_loading: str | None = None  # the distribution whose entry point is being imported
M = TypeVar("M", bound=type)


class _NameTaken(Exception):
    """A plugin registered a name that another method holds."""


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: make a Method subclass available under `name`."""

    def deco(cls: M) -> M:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            holder = _ORIGINS.get(name, existing.__module__)
            if _loading is not None:  # a plugin's clash is the plugin's failure, never the holder's
                raise _NameTaken(f"method name {name!r} is already registered by {holder}")
            raise ValueError(f"method {name!r} is registered twice: {existing} and {cls}")
        cls.name = name
        _REGISTRY[name] = cls
        _ORIGINS[name] = _loading or (BUILTIN if cls.__module__.split(".")[0] == "methods" else
                                      f"module {cls.__module__}")
        return cls

    return deco


def _distribution(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else f"entry point {ep.value}"


def _load_plugin(ep: EntryPoint) -> None:
    """Import one entry point; a failure is one warning line and the plugin is left out."""
    global _loading
    origin = _distribution(ep)
    before = set(_REGISTRY)
    _loading = origin
    try:
        ep.load()
    except Exception as e:  # noqa: BLE001 - whatever a third party's import raises, the other methods go on
        for name in set(_REGISTRY) - before:  # a half-imported plugin offers nothing
            _REGISTRY.pop(name)
            _ORIGINS.pop(name, None)
        why = (str(e) if isinstance(e, _NameTaken) else f"{type(e).__name__}: {e}").splitlines()[0]
        _FAILED[ep.name] = f"its package {origin} failed to load ({why})"
        _WARNINGS.append(f"ferbench: warning: method plugin {ep.name!r} ({ep.value}) from {origin} was not loaded: "
                         f"{why}; every other method works")
    finally:
        _loading = None


def discover() -> None:
    """Import every built-in method module and every `ferbench.methods` entry point, once."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    import methods as builtin

    for info in sorted(pkgutil.iter_modules(builtin.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"methods.{info.name}")
    for ep in sorted(entry_points(group="ferbench.methods"), key=lambda e: e.name):
        _load_plugin(ep)


def _warn() -> None:
    """Say, once, which plugins were left out (the run goes on with the methods that loaded)."""
    while _WARNINGS:
        print(_WARNINGS.pop(0), file=sys.stderr)


def method_names() -> list[str]:
    discover()
    _warn()
    return sorted(_REGISTRY)


def method_origin(name: str) -> str:
    """Where a registered method comes from: "built-in", its distribution ("name version"), or its module."""
    get_method_class(name)
    return _ORIGINS.get(name, BUILTIN)


def failed_plugins() -> dict[str, str]:
    """Entry-point name -> why that plugin was left out, for the plugins that failed to load."""
    discover()
    return dict(_FAILED)


def get_method_class(name: str) -> type[Method]:
    discover()
    if name not in _REGISTRY:
        if name in _FAILED:  # its own one line says why; no warning besides
            _WARNINGS.clear()
            raise FERBenchError(f"method {name!r} is not available: {_FAILED[name]}")
        _warn()
        raise FERBenchError(f"unknown method {name!r}; registered methods: {', '.join(sorted(_REGISTRY))}")
    _warn()
    return _REGISTRY[name]


def create_method(name: str, num_classes: int, args: dict[str, Any] | None = None) -> Method:
    """Instantiate a registered method with its defaults updated by `args`."""
    cls = get_method_class(name)
    return cls(num_classes=num_classes, **(args or {}))
