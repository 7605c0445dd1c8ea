"""Run ids are results' keys: a change that alters one makes every sweep re-run its cells (GPU-days). These are the
ids of the default config, of each recipe and preset, and of every cell of every shipped sweep spec, as computed
before the core redesign of issue 19; any change to them must be deliberate (and regenerate this file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.config import build_config, run_id
from bench.launch.sweep import cells, load_sweep

REPO = Path(__file__).resolve().parents[1]
PINNED = json.loads((REPO / "tests" / "data" / "run_ids.json").read_text())


def _spec_ids(path: str) -> list[str]:
    spec = load_sweep(REPO / path)
    names = {e["name"] for e in spec.methods + spec.references}
    needs_files = bool(spec.requires) or any(e["requires"] for e in spec.methods + spec.references)
    overrides = [o for o in PINNED["overrides"]["paper and harness sweeps"] if needs_files
                 and (":" not in o.split("=")[0] or o.split(":")[0] in names)]
    return [run_id(cfg) for _, cfg in cells(spec, overrides)]


@pytest.mark.parametrize("path", sorted(p for p in PINNED["sweeps"] if not p.endswith("frpretrain_synthfer.yaml")))
def test_every_shipped_sweep_cell_keeps_its_run_id(path: str) -> None:
    assert _spec_ids(path) == PINNED["sweeps"][path]


def test_shipped_configs_and_specs_are_all_pinned() -> None:
    shipped = {str(p.relative_to(REPO)) for d in ("bench/configs", "bench/configs/datasets", "bench/configs/papers",
                                                  "slurm/specs") for p in (REPO / d).glob("*.yaml")}
    assert shipped == set(PINNED["sweeps"])


def test_default_config_recipes_presets_and_run_config_keep_their_run_ids() -> None:
    assert run_id(build_config()) == PINNED["default"]
    assert {r: run_id(build_config(overrides=[f"recipe={r}"])) for r in PINNED["recipes"]} == PINNED["recipes"]
    assert {p: run_id(build_config(overrides=[f"preset={p}"])) for p in PINNED["presets"]} == PINNED["presets"]
    path = "bench/configs/frpretrain_synthfer.yaml"
    assert [run_id(build_config([REPO / path]))] == PINNED["sweeps"][path]
