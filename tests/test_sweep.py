"""A small local sweep: expansion, skip-if-done on resubmission, and the leaderboard it renders."""

from __future__ import annotations

from pathlib import Path

import yaml

from bench.cli import main
from bench.launch.sweep import expand, load_sweep


def _spec(tmp_path: Path, cache: Path) -> Path:
    spec = {
        "name": "tiny",
        "output_dir": str(tmp_path / "out"),
        "base": {
            "data": {"cache_dir": str(cache), "image_size": 32,
                     "synthfer": {"n_train": 280, "n_test": 140, "seed": 0, "size": 32}},
            "model": {"backbone": "ferbench_cnn_tiny"},
            "train": {"iterations": 4, "batch_size": 8, "mu": 1, "eval_every": 2, "checkpoint_every": 100},
        },
        "methods": ["supervised", {"name": "fixmatch", "args": {"threshold": 0.5}}],
        "budgets": [0.1],
        "seeds": [0, 1],
        "references": ["fullysupervised"],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_expand_orders_and_counts(tmp_path: Path) -> None:
    runs = expand(load_sweep(_spec(tmp_path, tmp_path / "c")))
    assert [(r.method, r.data.budget, r.seed) for r in runs] == [
        ("fullysupervised", 1.0, 0), ("fullysupervised", 1.0, 1),
        ("supervised", 0.1, 0), ("supervised", 0.1, 1), ("fixmatch", 0.1, 0), ("fixmatch", 0.1, 1),
    ]
    assert runs[-1].method_args == {"threshold": 0.5}


def test_sweep_runs_skips_and_renders(shared_cache: Path, tmp_path: Path, capsys) -> None:
    spec = _spec(tmp_path, shared_cache)
    lb = tmp_path / "lb"
    assert main(["sweep", str(spec), "--leaderboard-dir", str(lb)]) == 0
    assert len(list((tmp_path / "out" / "records").glob("*.json"))) == 6
    md = (lb / "synthfer.md").read_text()
    assert "| fixmatch |" in md and "| supervised |" in md and "fullysupervised" in md
    assert (lb / "synthfer.png").stat().st_size > 1000
    capsys.readouterr()
    # Resubmitting runs nothing.
    assert main(["sweep", str(spec), "--dry-run"]) == 0
    assert "6 already done, 0 to run" in capsys.readouterr().out
    first = md
    assert main(["leaderboard", str(tmp_path / "out" / "records"), "-o", str(lb)]) == 0
    assert (lb / "synthfer.md").read_text() == first


def test_extends_inherits_and_overrides(tmp_path: Path) -> None:
    parent = _spec(tmp_path, tmp_path / "c")
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {parent.name}\nname: child\nmethods: [supervised]\nbudgets: [0.5]\n")
    spec = load_sweep(child)
    assert spec.name == "child" and spec.seeds == [0, 1] and spec.budgets == [0.5]
    assert [m["name"] for m in spec.methods] == ["supervised"]
    assert spec.base["train"]["iterations"] == 4


def test_references_use_every_label_whatever_the_budget_protocol(tmp_path: Path, capsys) -> None:
    spec = _spec(tmp_path, tmp_path / "c")
    runs = expand(load_sweep(spec), ["data.protocol=per_class"])
    assert [(r.method, r.data.protocol, r.data.budget) for r in runs[:2]] == [("fullysupervised", "fraction", 1.0)] * 2
    assert {r.data.protocol for r in runs[2:]} == {"per_class"}
    # dotted overrides may come after the flags
    assert main(["sweep", str(spec), "--dry-run", "data.protocol=total", "seeds_unused=1"]) == 2
    assert "unknown config key 'seeds_unused'" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--dry-run", "data.protocol=total", "data.budget=20"]) == 0
    assert "supervised total=20 seed=1" in capsys.readouterr().out
