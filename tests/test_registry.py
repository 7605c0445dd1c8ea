"""The method registry: built-ins found by walking `methods/`, third-party ones through entry points."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import write_dist_info

from bench import registry
from bench.errors import FERBenchError
from bench.method import describe_arguments


def test_builtin_methods_are_discovered() -> None:
    names = registry.method_names()
    assert {"supervised", "fullysupervised", "fixmatch"} <= set(names)
    fm = registry.get_method_class("fixmatch")
    assert fm.views == ("weak", "strong")
    assert {a.name: a.default for a in describe_arguments(fm.Args)} == {"threshold": 0.95, "lambda_u": 1.0}
    assert registry.get_method_class("fullysupervised").labeled_source == "all"


def test_unknown_method() -> None:
    with pytest.raises(FERBenchError, match="unknown method 'nope'; registered methods: "):
        registry.get_method_class("nope")


def test_entry_point_plugin_registers_without_touching_the_repo(tmp_path: Path, monkeypatch) -> None:
    # A third-party distribution on sys.path: a module and an entry point in the ferbench.methods group.
    (tmp_path / "my_plugin.py").write_text(
        "from dataclasses import dataclass\n"
        "from bench.method import Method, MethodArgs, Probability, arg\n"
        "from bench.registry import register_method\n\n"
        "@dataclass\n"
        "class MyArgs(MethodArgs):\n"
        "    alpha: Probability = arg(0.5, 'a weight')\n\n"
        "@register_method('my_method')\n"
        "class MyMethod(Method):\n"
        "    Args = MyArgs\n"
    )
    write_dist_info(tmp_path, "my-plugin", {"my_method": "my_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_DISCOVERED", False)
    try:
        assert "my_method" in registry.method_names()
        m = registry.create_method("my_method", num_classes=7, args={"alpha": 0.1})
        assert m.hparams == {"alpha": 0.1} and m.name == "my_method"
        with pytest.raises(FERBenchError, match=r"'my_method': method_args.alpha=2: expected a number in \[0, 1\]"):
            registry.create_method("my_method", num_classes=7, args={"alpha": 2})
    finally:
        registry._REGISTRY.pop("my_method", None)
        sys.modules.pop("my_plugin", None)
