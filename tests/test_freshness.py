"""Results that know their code (issue 21): behavioural fingerprints in records, stale cells marked in status and
every leaderboard format, stale runs re-run with the old records archived, committed leaderboards kept current."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_overrides

from bench.cli import main
from bench.config import build_config
from bench.engine.fingerprint import (
    ATOL,
    RTOL,
    changed_values,
    config_of_fingerprint,
    current_fingerprints,
    digest,
    fingerprint_key,
    key_settings,
    probe,
    same_behaviour,
)
from bench.errors import FERBenchError
from bench.results.leaderboard import read_board_fingerprints

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.subprocess
def test_the_probe_is_deterministic_and_leaves_the_callers_state_alone() -> None:
    cfg = build_config(overrides=["method=flexmatch"])
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    before = torch.rand(3)
    torch.manual_seed(123)
    a = probe(cfg)
    after = torch.rand(3)
    b = probe(cfg)
    assert a["vector"] == b["vector"] and a["digest"] == b["digest"] == digest(a["vector"], a["exact"])
    assert torch.equal(before, after)  # the run's random stream is where it was
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
    # every part of the run it covers: each step's logged values, evaluations and the record's derived metrics,
    # weights, EMA, the method's state, the split and the synthfer generator
    labels = set(a["labels"])
    assert {"main.1.loss", "main.6.loss_u", "main.6.mask_rate", "main.eval2.accuracy", "main.eval6.macro_f1",
            "main.final.recall0", "main.final.confusion0.0", "main.derived.best_accuracy",
            "main.derived.last5_median_accuracy", "main.eval.logits.sum", "main.weights.sumsq", "main.ema.sum",
            "main.state.sum", "data.synthfer.train.class0.mean"} <= labels
    assert set(a["exact"]) == {"data.synthfer.identity", "data.split.manifest"}
    assert a["key"].startswith("flexmatch@harness#") and len(a["vector"]) == len(a["labels"])


def _key(*overrides: str) -> str:
    return fingerprint_key(build_config(overrides=list(overrides)))


def test_keys_name_the_protocol_and_the_arguments_and_stand_for_every_setting_but_scale() -> None:
    base = _key("method=fixmatch")
    assert _key("method=fixmatch", "method_args.threshold=0.95") == base  # a default spelled out is the default
    assert base.startswith("fixmatch@harness#")
    key = _key("method=fixmatch", "recipe=usb", "method_args.threshold=0.8")
    assert key.startswith('fixmatch@usb{"threshold": 0.8}#')
    vit = build_config(overrides=["method=frpretrain", "model.backbone=vit_base_patch16_224"])
    assert fingerprint_key(vit).startswith("frpretrain@harness/vit#")
    # scale is the probe's own: the same key
    for scale in ("seed=3", "split_seed=0", "data.budget=0.5", "train.iterations=50000", "train.batch_size=64",
                  "train.eval_every=7", "data.image_size=100", "data.synthfer.n_train=900", "data.root=/x",
                  "data.augment_on=cpu", "train.channels_last=true", "model.backbone=ferbench_cnn_tiny"):
        if scale.startswith(("split_seed", "data.image_size")):
            continue  # split_seed set and 100 px (probed at 48) differ from the default below
        assert _key("method=fixmatch", scale) == base, scale
    assert _key("method=fixmatch", "data.image_size=100") == _key("method=fixmatch", "data.image_size=224")
    assert _key("method=fixmatch", "seed=1", "split_seed=0") == _key("method=fixmatch", "seed=4", "split_seed=9")
    # everything else that changes numbers is another key
    for setting in ("optim.name=adam", "optim.lr=0.01", "optim.schedule=constant", "model.head=normalized",
                    "augment.crop_prob=0.5", "augment.crop=resized", "data.protocol=per_class", "split_seed=0",
                    "train.ema_decay=0.99", "train.forward=separate", "train.mixed_precision=bf16",
                    "data.synthfer.nuisance=0.3", "data.name=rafdb", "data.image_size=32", "preset=adacm",
                    "model.pretrained_file=/w.pth", "train.mu=1", "model.drop_rate=0.5"):
        assert _key("method=fixmatch", setting) != base, setting
    # a key's settings rebuild a config of the same key
    for overrides in (["method=fixmatch", "recipe=usb", "method_args.threshold=0.8"], ["method=dtasnl", "preset=adacm"],
                      ["method=frpretrain", "model.backbone=vit_base_patch16_224", "train.mixed_precision=bf16"],
                      ["method=sitfer", "data.name=affectnet8", "split_seed=2", "model.pretrained_file=/w.pth"]):
        cfg = build_config(overrides=overrides)
        assert fingerprint_key(config_of_fingerprint({"settings": key_settings(cfg)})) == fingerprint_key(cfg)


def test_sameness_is_within_the_stated_tolerance_and_a_new_logged_value_is_not_a_change() -> None:
    base = {"key": "k", "probe": 2, "vector": [1.0, 2.0], "labels": ["a", "b"], "exact": {"data": "x"}}
    near = {**base, "vector": [1.0 * (1 + RTOL / 2), 2.0]}
    far = {**base, "vector": [1.0, 2.0 * (1 + 4 * RTOL) + ATOL]}
    added = {**base, "vector": [1.0, 0.5, 2.0], "labels": ["a", "new", "b"]}
    dropped = {**base, "vector": [1.0], "labels": ["a"]}
    other_data = {**base, "exact": {"data": "y"}}
    for fp in (base, near, far, added, dropped, other_data):
        fp["digest"] = digest(fp["vector"], fp["exact"])
    assert same_behaviour(base, near) and same_behaviour(base, added)
    assert not same_behaviour(base, far) and not same_behaviour(base, dropped)
    assert not same_behaviour(base, other_data) and not same_behaviour(base, None)
    assert not same_behaviour(base, {**base, "key": "other"})
    assert changed_values(base, far) == ["b 2 -> 2.008"]
    assert changed_values(base, dropped) == ["b no longer produced"]
    assert changed_values(base, other_data) == ["data x -> y"]


@pytest.mark.subprocess
def test_a_cpu_run_carries_the_fingerprint_whatever_its_speed_settings_and_threads(shared_cache: Path,
                                                                                   tmp_path: Path) -> None:
    """The probe runs on the CPU in one thread with deterministic algorithms, whatever the run's device, data path
    or thread count: the fingerprint of a run is the probe's, and a fresh process with other threads agrees."""
    fps = []
    for path, extra in (("a", {"data.augment_on": "cpu", "data.workers": 1}),
                        ("b", {"train.channels_last": "true"})):
        args = tiny_overrides(shared_cache, tmp_path / path, method="softmatch", **extra)
        assert main(["run", "--quiet", *args]) == 0
        fps.append(json.loads(next((tmp_path / path / "records").glob("*.json")).read_text())["fingerprint"])
    assert fps[0] == fps[1]
    code = ("import json, sys; from bench.config import build_config; from bench.engine.fingerprint import probe; "
            f"print(json.dumps(probe(build_config(overrides={args!r}))))")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    fresh = json.loads(res.stdout.strip().splitlines()[-1])
    assert fresh["vector"] == fps[0]["vector"] and fresh["digest"] == fps[0]["digest"]


# ---- end to end: a change of numerics marks exactly that method's cells stale -----------------------------------


def _code_copy(tmp: Path, name: str, change: tuple[str, str] | None = None) -> Path:
    """A copy of FERBench's code (bench/, methods/), with one text replacement in methods/fixmatch.py."""
    root = tmp / name
    for package in ("bench", "methods"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    if change is not None:
        path = root / "methods" / "fixmatch.py"
        text = path.read_text()
        assert change[0] in text
        path.write_text(text.replace(change[0], change[1], 1))
    return root


def _ferbench(code: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(code), "FERBENCH_CACHE": str(cache), "PYTHONWARNINGS": "ignore"}
    res = subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, env=env,
                         timeout=900, cwd=cache)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _status(code: Path, cache: Path, out: Path) -> tuple[dict[str, str], str]:
    res = _ferbench(code, cache, "status", str(out))
    states = {}
    for line in res.stdout.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 3 and cells[1].startswith(("supervised_", "fixmatch_")):
            states[cells[1]] = cells[2]
    return states, res.stdout.strip().splitlines()[-1]


def _board(code: Path, cache: Path, records: Path, out: Path, *extra: str) -> tuple[str, list[dict]]:
    _ferbench(code, cache, "leaderboard", str(records), "-o", str(out), "--format", "md,csv,tex", *extra)
    with (out / "synthfer.csv").open() as f:
        return (out / "synthfer.md").read_text(), list(csv.DictReader(f))


@pytest.mark.subprocess
def test_a_change_of_numerics_marks_exactly_that_methods_cells_stale_and_rerun_stale_repairs_them(
        shared_cache: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"  # fingerprints of each code copy, in a cache of this test's own
    cache.mkdir()
    out = tmp_path / "sweep"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "fresh", "output_dir": str(out), "methods": ["supervised", "fixmatch"], "budgets": [0.1],
        "seeds": [0, 1],
        "base": {"data": {"cache_dir": str(shared_cache), "image_size": 32,
                          "synthfer": {"n_train": 280, "n_test": 140, "seed": 0, "size": 32}},
                 "model": {"backbone": "ferbench_cnn_tiny"},
                 "train": {"iterations": 4, "batch_size": 8, "mu": 1, "eval_every": 2, "checkpoint_every": 100}}}))
    original = _code_copy(tmp_path, "original")
    _ferbench(original, cache, "sweep", str(spec))
    states, counts = _status(original, cache, out)
    assert set(states.values()) == {"done"} and counts.startswith("4 done, 0 stale")

    scaled = _code_copy(tmp_path, "scaled", ("loss = loss_x + self.args.lambda_u * loss_u",
                                             "loss = loss_x + 2.0 * self.args.lambda_u * loss_u"))
    states, counts = _status(scaled, cache, out)
    assert {rid.split("_")[0]: s for rid, s in states.items()} == {"supervised": "done", "fixmatch": "stale"}
    assert counts.startswith("2 done, 2 stale")
    md, rows = _board(scaled, cache, out / "records", tmp_path / "lb_stale")
    fixmatch_rows = [ln for ln in md.splitlines() if ln.startswith("| fixmatch |")]
    # every table's fixmatch row: accuracy, MCA, macro-F1, the Δ vs supervised, per-class recall, best-on-test
    assert len(fixmatch_rows) == 6 and all(ln.rstrip(" |").endswith("stale") for ln in fixmatch_rows)
    assert not any("stale" in ln for ln in md.splitlines() if ln.startswith("| supervised |"))
    assert "`fixmatch@harness#" in md and "`: its records (commit unknown, fingerprint" in md and "loss_u" in md
    assert {r["method"]: r["freshness"] for r in rows} == {"supervised": "current", "fixmatch": "stale"}
    assert r"\textsuperscript{stale}" in (tmp_path / "lb_stale" / "synthfer.tex").read_text()

    res = _ferbench(scaled, cache, "sweep", str(spec), "--rerun-stale")
    assert "archived 2 stale record(s)" in res.stdout and "2 to run" in res.stdout
    states, counts = _status(scaled, cache, out)
    assert set(states.values()) == {"done"} and counts.startswith("4 done, 0 stale")
    md, rows = _board(scaled, cache, out / "records", tmp_path / "lb_current")
    table_rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert not any("stale" in ln for ln in table_rows) and {r["freshness"] for r in rows} == {"current"}
    assert "- records: 4 current, 0 stale, 0 unknown" in md
    archives = [p for p in (out / "archive").iterdir() if not p.name.startswith(".")]  # not its lock file
    assert len(archives) == 1 and len(list((archives[0] / "records").glob("fixmatch_*.json"))) == 2
    assert len(list((archives[0] / "runs").iterdir())) == 2  # their final weights and curves too
    md, rows = _board(scaled, cache, out / "records", tmp_path / "lb_all", "--include-archived")
    archived = [r for r in rows if r["method"].startswith("fixmatch+archived-")]
    assert len(archived) == 1 and archived[0]["freshness"] == "stale" and archived[0]["n"] == "2"

    # a change that does not alter numerics (a comment, a rename): nothing is stale
    comment = _code_copy(tmp_path, "comment", ("class FixMatch(Method):",
                                               "class FixMatch(Method):  # renamed nothing, said something"))
    shutil.copy(scaled / "methods" / "fixmatch.py", comment / "methods" / "fixmatch.py")
    path = comment / "methods" / "fixmatch.py"
    path.write_text(path.read_text().replace("def unlabeled_loss(", "def masked_pseudo_label_loss(").replace(
        "self.unlabeled_loss(", "self.masked_pseudo_label_loss(") + "\n# a comment\n")
    states, counts = _status(comment, cache, out)
    assert set(states.values()) == {"done"} and counts.startswith("4 done, 0 stale")


# ---- committed leaderboards stay current --------------------------------------------------------------------------


def _committed_fingerprints() -> list[tuple[Path, dict]]:
    """Each committed board's fingerprints, checked against the board (whole, unedited, its own)."""
    return [(p, read_board_fingerprints(p)) for p in sorted((REPO / "leaderboards").rglob("*.fingerprints.json"))]


def test_committed_leaderboards_list_the_fingerprints_they_were_built_from() -> None:
    boards = _committed_fingerprints()
    md_files = sorted((REPO / "leaderboards").rglob("*.md"))
    assert md_files and len(boards) == len(md_files)  # every committed board has its fingerprints beside it
    for path, entries in boards:
        assert entries and all(e["vector"] and e["digest"] and e["settings"] for e in entries.values()), path


@pytest.mark.subprocess
@pytest.mark.parametrize("board", [p.relative_to(REPO).as_posix() for p, _ in _committed_fingerprints()])
def test_committed_leaderboards_are_current(board: str) -> None:
    """A change that alters a method's numerics must come with regenerated leaderboards
    (docs/concepts/runs-and-records.md)."""
    entries = read_board_fingerprints(REPO / board)
    current = current_fingerprints([config_of_fingerprint(e) for e in entries.values()])
    stale = [f"{key} ({'; '.join(changed_values(e, current[key]))})" for key, e in sorted(entries.items())
             if not same_behaviour(e, current[key])]
    assert not stale, f"{board} was built from code that behaved differently: {', '.join(stale)}; regenerate it"


def test_a_boards_fingerprints_file_edited_or_swapped_is_refused(tmp_path: Path) -> None:
    """The committed-board check reads what the board was built from: a fingerprints file copied from another board,
    a value changed under its old digest, or an entry filed under another key is one line naming the file."""
    boards = sorted((REPO / "leaderboards").rglob("*.fingerprints.json"))
    assert len(boards) >= 2
    own, other = tmp_path / "own", tmp_path / "other"
    for folder, src in ((own, boards[0]), (other, boards[1])):
        folder.mkdir()
        shutil.copy(src, folder / src.name)
        shutil.copy(src.with_name(src.name.replace(".fingerprints.json", ".md")), folder)
    fp_file = own / boards[0].name
    assert read_board_fingerprints(fp_file)  # a copy of the pair is fine

    def refused(entries: object, match: str) -> None:
        fp_file.write_text(json.dumps(entries))
        with pytest.raises(FERBenchError, match=match):
            read_board_fingerprints(fp_file)

    original = json.loads(boards[0].read_text())
    refused(json.loads(boards[1].read_text()), "does not belong to its board")  # another board's file
    key = sorted(original)[0]
    edited = json.loads(json.dumps(original))
    edited[key]["vector"][-1] += 1.0
    refused(edited, f"entry '{re.escape(key)}': digest: .* does not name its values")
    swapped = json.loads(json.dumps(original))
    if len(swapped) >= 2:
        a, b = sorted(swapped)[:2]
        swapped[a], swapped[b] = swapped[b], swapped[a]
        refused(swapped, "key: the fingerprint of")
    refused({key: {**original[key], "vector": ["1.0"] * len(original[key]["vector"])}}, "vector.0: input should be")
    refused([original[key]], "expected a non-empty mapping")
    fp_file.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(FERBenchError, match="not a text file"):
        read_board_fingerprints(fp_file)
