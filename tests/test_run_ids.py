"""Run ids are results' keys: a change that alters one makes every sweep re-run its cells (GPU-days). These are the
ids of the default config, of each recipe and preset, and of every cell of every shipped sweep spec, as computed
before the core redesign of issue 19; any change to them must be deliberate (and regenerate this file). Changed on
purpose since: the reference recipes' cells (paper sweeps) at issue 20, when the recipes took the official codes'
EMA start and BatchNorm statistics, unlabeled pool, USB's crop padding and evaluation cadence (no recipe run had
been published); every harness cell kept its id."""

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


def test_every_config_field_declares_whether_it_is_part_of_the_run_id() -> None:
    """A new field must say how it takes part in the run id (bench.config: hashed, hashed_when_set, unhashed)."""
    import dataclasses

    from bench.config import RUN_ID, RunConfig, _sections

    def walk(cls: type) -> list[tuple[str, str | None]]:
        out = [(f"{cls.__name__}.{f.name}", f.metadata.get(RUN_ID)) for f in dataclasses.fields(cls)]
        return out + [x for sub in _sections(cls).values() for x in walk(sub)]

    declared = walk(RunConfig)
    assert len(declared) > 60 and all(how in ("hashed", "hashed_when_set", "unhashed") for _, how in declared)
    unhashed = {name for name, how in declared if how == "unhashed"}
    assert unhashed == {"RunConfig.output_dir", "DataConfig.root", "DataConfig.cache_dir", "DataConfig.augment_on",
                        "DataConfig.device_cache_gb", "DataConfig.workers", "TrainConfig.log_every",
                        "TrainConfig.checkpoint_every", "TrainConfig.channels_last", "TrainConfig.compile",
                        "TrainConfig.fused_optimizer", "TrainConfig.stop_after",
                        # how a run is watched (bench/engine/trackers.py): never what it computes
                        "TrainConfig.trackers", "TrainConfig.tracker_project", "TrainConfig.tracker_group"}


def test_a_new_field_at_its_default_leaves_run_ids_alone_and_changes_them_when_set() -> None:
    """`hashed_when_set`: how fields added after results were published keep every earlier id."""
    cfg = build_config()
    base = run_id(cfg)
    cfg.augment.channels = "bgr"
    assert run_id(cfg) != base
    cfg.augment.channels = "rgb"
    cfg.train.log_every, cfg.output_dir = 1, "elsewhere"  # unhashed: watch settings and paths
    assert run_id(cfg) == base
    cfg.stages = {"finetune": {"train": {"log_every": 5, "forward": "joint"}}}  # inside stages too
    assert run_id(cfg) == base
    cfg.stages = {"finetune": {"train": {"iterations": 5}}}
    assert run_id(cfg) != base
