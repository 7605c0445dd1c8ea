"""Reference recipes: each code lineage's whole training step, as data (bench/configs/recipes/<name>.yaml).

The harness protocol (`recipe: harness`, the default) runs every method on one substrate: the fair comparison.
A recipe is another protocol: the config values (head, forward batching, views and their order, op semantics,
optimiser, EMA, channel order, evaluation cadence) and method arguments with which a method's official code
trains it, so a paper's number can be reproduced and shown next to the reported one. A recipe file holds:

    title, source           what it reproduces and where each value was read
    reference_for           the methods whose official code it is (`ferbench recipes` lists them)
    config                  a RunConfig mapping (as a YAML config file)
    methods                 {method: RunConfig mapping} for one method only (e.g. {meanteacher: {train: {mu: 1}}})
    known_differences       what FERBench still does differently, named

A recipe sits under everything the user writes: the recipe's values first, then the config files and
overrides (bench.config.layered). Its name is part of the run id and the record; leaderboards never put two
protocols in one table.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bench.errors import FERBenchError

HARNESS = "harness"
RECIPE_DIR = Path(str(resources.files("bench") / "configs" / "recipes"))
_KEYS = {"title", "source", "reference_for", "config", "methods", "known_differences"}


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    source: str
    reference_for: tuple[str, ...]
    config: dict[str, Any]
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    known_differences: tuple[str, ...] = ()

    def mapping(self, method: str) -> dict[str, Any]:
        """The RunConfig mapping this recipe gives `method`: its config, then the method's own part on top."""
        out = copy.deepcopy(self.config)
        _merge(out, copy.deepcopy(self.methods.get(method, {})))
        return out


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


@functools.cache
def get_recipe(name: str) -> Recipe:
    from bench.config import load_yaml

    path = RECIPE_DIR / f"{name}.yaml"
    if name == HARNESS or not path.is_file():
        raise FERBenchError(f"recipe={name!r}: unknown; expected {HARNESS!r} or one of {', '.join(recipe_names())}")
    d = load_yaml(path)
    unknown = sorted(set(d) - _KEYS)
    missing = sorted({"title", "source", "config"} - set(d))
    if unknown or missing:
        raise FERBenchError(f"{path}: " + (f"unknown key(s) {', '.join(unknown)}" if unknown else
                                            f"missing {', '.join(missing)}"))
    if not isinstance(d["config"], dict) or not isinstance(d.get("methods", {}), dict):
        raise FERBenchError(f"{path}: config and methods must be mappings")
    return Recipe(name, str(d["title"]), " ".join(str(d["source"]).split()), tuple(d.get("reference_for") or ()),
                  d["config"], dict(d.get("methods") or {}), tuple(d.get("known_differences") or ()))


def check_recipe(name: str) -> None:
    if name != HARNESS:
        get_recipe(name)
