"""Named bundles of config values, as data: presets (bench/configs/presets) and reference recipes
(bench/configs/recipes), both read here. A leaf module: it knows YAML files, not the config they apply to.

A bundle file holds:

    title, source           what it sets and where each value was read
    config                  a RunConfig mapping (as a YAML config file; a recipe's may name a preset)
    reference_for           recipes only: the methods whose official code it is (`ferbench recipes` lists them)
    methods                 recipes only: {method: RunConfig mapping} for one method only
                            (e.g. {meanteacher: {train: {mu: 1}}})
    known_differences       recipes only: what FERBench still does differently, named

How each kind applies (bench.config):
- a **preset** (`preset=NAME`) sets its values where it appears: first in a YAML mapping, in order among
  command-line overrides; the record keeps its name, and its values are in the run id like any other. A run has
  one preset: the last one named replaces any other (an earlier one's, the recipe's) wholly (bench.config.layered);
- a **recipe** (`recipe=NAME`) is a protocol, the official code's whole training step for a method: its values sit
  under everything the user writes (bench.config.layered); its name is part of the run id and the record, and
  leaderboards never put two protocols in one table. `harness` (the default) is the protocol of no recipe: one
  substrate for every method, the fair comparison.
A method's per-stage defaults (`Stage.defaults`) are RunConfig section mappings applied by the same
`bench.config.apply_mapping`.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bench.errors import FERBenchError
from bench.yamlfile import load_yaml

HARNESS = "harness"
CONFIG_DIR = Path(str(resources.files("bench") / "configs"))
KINDS = {"preset": CONFIG_DIR / "presets", "recipe": CONFIG_DIR / "recipes"}
_KEYS = {"preset": {"title", "source", "config"},
         "recipe": {"title", "source", "config", "reference_for", "methods", "known_differences"}}


@dataclass(frozen=True)
class Bundle:
    kind: str  # "preset" | "recipe"
    name: str
    title: str
    source: str
    config: dict[str, Any]
    reference_for: tuple[str, ...] = ()
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    known_differences: tuple[str, ...] = ()

    def mapping(self, method: str | None = None) -> dict[str, Any]:
        """The RunConfig mapping this bundle gives `method`: its config, then the method's own part on top."""
        out = copy.deepcopy(self.config)
        _merge(out, copy.deepcopy(self.methods.get(method, {})) if method else {})
        return out


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def names(kind: str) -> list[str]:
    return sorted(p.stem for p in KINDS[kind].glob("*.yaml"))


@functools.cache
def get_bundle(kind: str, name: str) -> Bundle:
    """The preset or recipe `name`; an unknown name is one line listing the known ones."""
    path = KINDS[kind] / f"{name}.yaml"
    known = names(kind)
    if name not in known:  # a plain name only: never a path that reaches another folder
        if kind == "recipe":
            raise FERBenchError(f"recipe={name!r}: unknown; expected {HARNESS!r} or one of {', '.join(known)}")
        raise FERBenchError(f"unknown preset {name!r}; known presets: {', '.join(known)}")
    d = load_yaml(path)
    unknown = sorted(set(d) - _KEYS[kind])
    missing = sorted({"title", "source", "config"} - set(d))
    if unknown or missing:
        raise FERBenchError(f"{path}: " + (f"unknown key(s) {', '.join(unknown)}" if unknown else
                                            f"missing {', '.join(missing)}"))
    if not isinstance(d["config"], dict) or not isinstance(d.get("methods", {}), dict):
        raise FERBenchError(f"{path}: config and methods must be mappings")
    return Bundle(kind, name, str(d["title"]), " ".join(str(d["source"]).split()), d["config"],
                  tuple(d.get("reference_for") or ()), dict(d.get("methods") or {}),
                  tuple(d.get("known_differences") or ()))


def get_recipe(name: str) -> Bundle:
    if name == HARNESS:
        raise FERBenchError(f"recipe={name!r} is the protocol of no recipe; it has no values of its own")
    return get_bundle("recipe", name)


def get_preset(name: str) -> Bundle:
    return get_bundle("preset", name)


def recipe_names() -> list[str]:
    return names("recipe")


def check_recipe(name: str) -> None:
    if name != HARNESS:
        get_recipe(name)
