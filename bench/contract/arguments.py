"""The contract's static check of a method's arguments: a dataclass whose every argument has a checkable type and a
default of that type."""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Any

from bench.checks import check_value, describe
from bench.errors import FERBenchError
from bench.method import Method, MethodArgs

#: annotations that accept any value, so a run config could pass anything unchecked
_UNTYPED = (Any, object)


def _untyped(hint: Any) -> bool:
    base = typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint
    return base in _UNTYPED


def argument_problems(cls: type[Method]) -> list[str]:
    """Why `cls.Args` is not a checkable argument set (empty when it is): not a MethodArgs dataclass, a class attribute
    with no annotation (not an argument at all: `method_args` would refuse its name), an annotation that accepts
    anything or that the config checks cannot read, or a default that its own type refuses."""
    args = cls.Args
    if not (isinstance(args, type) and issubclass(args, MethodArgs)):
        return [f"Args is {args!r}, not a MethodArgs subclass"]
    if "__dataclass_fields__" not in vars(args):
        return [f"{args.__name__} is not a dataclass (decorate it with @dataclass), so its annotations are not "
                "arguments"]
    fields = {f.name: f for f in dataclasses.fields(args)}
    problems = [f"{name} = {value!r} has no type annotation, so it is not an argument"
                for name, value in vars(args).items()
                if not name.startswith("_") and name not in fields and not callable(value)
                and not isinstance(value, (classmethod, staticmethod, property))]
    try:
        hints = typing.get_type_hints(args, include_extras=True)
    except Exception as e:  # noqa: BLE001 - an annotation naming what is not there
        return [*problems, f"its annotations cannot be resolved ({type(e).__name__}: {e})"]
    for name, f in fields.items():
        hint = hints[name]
        if _untyped(hint):
            problems.append(f"{name}: annotated {getattr(hint, '__name__', hint)}, which accepts any value; give it "
                            "a type (e.g. Probability, NonNegative, int, Literal[...])")
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if default is dataclasses.MISSING:
            problems.append(f"{name}: no default (every argument needs one, so a run without it is defined)")
            continue
        try:
            describe(hint)
            check_value(default, hint, f"{name}'s default")
        except FERBenchError as e:
            problems.append(str(e))
        except Exception as e:  # noqa: BLE001 - a type the config checks do not know
            problems.append(f"{name}: its type {hint!r} cannot be checked ({type(e).__name__}: {e})")
    return problems


def describe_argument_set(cls: type[Method]) -> str:
    """One line: how many arguments, with their types in words."""
    hints = typing.get_type_hints(cls.Args, include_extras=True)
    fields = dataclasses.fields(cls.Args)
    if not fields:
        return "no arguments"
    return f"{len(fields)} typed, defaults valid: " + ", ".join(f"{f.name} ({describe(hints[f.name])})"
                                                                for f in fields)
