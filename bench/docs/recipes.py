"""The recipes reference page: the harness protocol, each reference recipe with its known differences, and each
preset, from the bundles in bench/configs/recipes and bench/configs/presets (bench/bundles.py)."""

from __future__ import annotations

import json

import yaml

from bench.bundles import Bundle, get_preset, get_recipe, names, recipe_names
from bench.docs.markdown import cell, page


def _settings(bundle: Bundle) -> str:
    """What the bundle sets, as the YAML a user would write (per-method parts under `methods:`)."""
    shown = {"config": bundle.config} | ({"methods": bundle.methods} if bundle.methods else {})
    text = yaml.safe_dump(json.loads(json.dumps(shown)), sort_keys=True, default_flow_style=False, width=100)
    return f"```yaml\n{text.rstrip()}\n```\n"


def recipe_section(bundle: Bundle) -> str:
    lines = [f"### `{bundle.name}` {{#{bundle.kind}-{bundle.name}}}\n", cell(bundle.title) + "\n",
             f"Source: {cell(bundle.source)}\n"]
    if bundle.reference_for:
        lines.append(f"Reference recipe for: {', '.join(f'`{m}`' for m in bundle.reference_for)}\n")
    if bundle.known_differences:
        lines.append("Known differences from the source:\n\n" +
                     "\n".join(f"- {cell(d)}" for d in bundle.known_differences) + "\n")
    lines.append(_settings(bundle))
    return "\n".join(lines)


def recipes_page() -> str:
    intro = ("The protocols a run may follow (`recipe=NAME`) and the presets it may start from (`preset=NAME`). "
             "The **harness** protocol (the default) trains every method on one substrate, the config defaults and "
             "the method's own: the fair comparison. A **reference recipe** reproduces one lineage's official "
             "training step as a whole; every way it differs from that code is listed under it. A **preset** is a "
             "named bundle of config values for any method. See [protocols](../concepts/protocols.md) for when "
             "to use which; `ferbench recipes` prints the same.")
    recipes = ["## Reference recipes\n", *(recipe_section(get_recipe(n)) for n in recipe_names())]
    presets = ["## Presets\n", *(recipe_section(get_preset(n)) for n in names("preset"))]
    return page("Recipes and presets", intro, [*recipes, *presets])
