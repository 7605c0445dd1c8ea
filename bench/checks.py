"""Type and range checks of config values and method arguments, each failure one line `key=value: expected ...`.

A value's type is its dataclass field's annotation (bool, int, float, str, `X | None`, `Literal[...]`,
`tuple[...]`, list, dict, Any); its range is an `Interval` inside `Annotated`, e.g.
`lr: Annotated[float, Interval("(0, inf)")]`. Method arguments follow the same rules: each method's `Args`
dataclass is annotated with the same types (bench/method.py).

Why not pydantic or OmegaConf's structured configs: OmegaConf checks types but not ranges, and pydantic
reports one bad value of an `X | None` field as one error per member of the union, with its own wording.
Walking the dataclasses FERBench already has keeps every message one line in one voice, and lets method
arguments, dataclasses too, use the very same checks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from bench.errors import FERBenchError

_INTERVAL = re.compile(r"^\s*([\[(])\s*(-?inf|[-+0-9.e]+)\s*,\s*(-?inf|[-+0-9.e]+)\s*([\])])\s*$")


@dataclass(frozen=True)
class Interval:
    """A range in interval notation: "[0, 1]", "(0, inf)", "[0, 1)"; brackets include the end, parentheses don't."""

    spec: str
    bounds: tuple[str, float, float, str] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:  # parsed once: intervals are checked for every value of every config built
        m = _INTERVAL.match(self.spec)
        if not m:
            raise ValueError(f"interval {self.spec!r}: expected e.g. '[0, 1]' or '(0, inf)'")
        left, lo, hi, right = m.groups()
        object.__setattr__(self, "bounds", (left, float(lo), float(hi), right))

    def __contains__(self, x: float) -> bool:
        left, lo, hi, right = self.bounds
        if isinstance(x, float) and math.isnan(x):
            return False
        above = x >= lo if left == "[" else x > lo
        below = x <= hi if right == "]" else x < hi
        return above and below

    def __str__(self) -> str:
        return self.spec


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _conform(value: Any, hint: Any) -> tuple[bool, Any]:
    """(whether `value` fits `hint`, the value in its canonical form: int -> float, list -> tuple)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        ok, value = _conform(value, args[0])
        return ok and all(value in m for m in args[1:] if isinstance(m, Interval)), value
    if hint is Any:
        return True, value
    if origin in (Union, types.UnionType):
        for member in args:
            ok, conformed = _conform(value, member)
            if ok:
                return True, conformed
        return False, value
    if hint is type(None):
        return value is None, value
    if origin is Literal:  # `True in (1,)` is true in Python: compare types too
        return any(value == a and type(value) is type(a) for a in args), value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        return _is_number(value), float(value) if _is_number(value) else value
    if hint is str:
        return isinstance(value, str), value
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False, value
        if not args:  # a bare list / tuple: any items
            items = [Any] * len(value)
        elif origin is list or args[-1] is Ellipsis:  # list[X], tuple[X, ...]
            items = [args[0]] * len(value)
        elif len(args) == len(value):  # tuple[X, Y]
            items = list(args)
        else:
            return False, value
        conformed = [_conform(v, a) for v, a in zip(value, items, strict=True)]
        kind = tuple if tuple in (origin, hint) else list
        return all(ok for ok, _ in conformed), kind(v for _, v in conformed)
    if origin is dict or hint is dict:
        return isinstance(value, dict), value
    raise TypeError(f"no check for type {hint!r}")


def describe(hint: Any) -> str:
    """What a value of `hint` is, in words: 'a number in (0, inf)', 'one of 'sgd', 'adam'', ..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        ranges = " ".join(f"in {m}" for m in args[1:] if isinstance(m, Interval))
        return f"{describe(args[0])} {ranges}".strip()
    if origin in (Union, types.UnionType):
        return " or ".join(sorted((describe(a) for a in args), key=lambda s: s != "null"))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list) and args:
        if origin is tuple and args[-1] is not Ellipsis:
            parts = {describe(a) for a in args}
            return f"a list of {len(args)} values, each {parts.pop()}" if len(parts) == 1 else \
                f"a list of {len(args)} values ({', '.join(describe(a) for a in args)})"
        return f"a list, each item {describe(args[0])}"
    words = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string",
             Any: "any value", dict: "a mapping", list: "a list", tuple: "a list"}
    return words.get(origin or hint, str(hint))


def check_value(value: Any, hint: Any, where: str) -> Any:
    """`value` in its canonical form, or a FERBenchError `where=value: expected <describe(hint)>`."""
    ok, conformed = _conform(value, hint)
    if not ok:
        raise FERBenchError(f"{where}={value!r}: expected {describe(hint)}")
    return conformed


@functools.cache
def _field_hints(cls: type) -> dict[str, Any]:
    """A dataclass's resolved field annotations (resolved once per class, not per config built)."""
    return typing.get_type_hints(cls, include_extras=True)


def check_fields(obj: Any, prefix: str = "") -> None:
    """Check (and canonicalise in place) every field of dataclass `obj`, recursing into nested dataclasses."""
    hints = _field_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_fields(value, f"{prefix}{f.name}.")
        else:
            setattr(obj, f.name, check_value(value, hints[f.name], prefix + f.name))
