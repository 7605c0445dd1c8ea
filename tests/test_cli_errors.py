"""Bad input: one clear line on stderr, exit status 2, and no record written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides

from bench.cli import main
from bench.data.replicas import write_rafdb_replica


def _ferbench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def _assert_one_line(stderr: str, expected: str) -> None:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("ferbench: error: ") and expected in lines[0], lines[0]


@pytest.mark.subprocess
def test_unknown_method_as_a_real_subprocess(tmp_path: Path) -> None:
    res = _ferbench("run", "method=nosuch", f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert res.returncode == 2
    _assert_one_line(res.stderr, "unknown method 'nosuch'; registered methods: adacm, dtasnl, fixmatch, flexmatch")
    assert not (tmp_path / "out").exists()


@pytest.mark.subprocess
def test_missing_data_root_as_a_real_subprocess(tmp_path: Path) -> None:
    res = _ferbench("run", "data.name=rafdb", f"data.root={tmp_path / 'nowhere'}", f"output_dir={tmp_path / 'out'}",
                    f"data.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert res.returncode == 2
    _assert_one_line(res.stderr, f"dataset root {tmp_path / 'nowhere'}: folder not found")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.name=affectnet9",
         "unknown dataset 'affectnet9'; known datasets: affectnet7, affectnet8, ferplus, rafdb, synthfer"),
        ("data.budget=1.5", "budget 1.5 out of range for protocol 'fraction': expected 0 < budget <= 1"),
        ("data.budget=0", "budget 0.0 out of range for protocol 'fraction'"),
        ("data.protocol=percent", "data.protocol='percent': expected one of 'fraction', 'total', 'per_class'"),
        ("train.iteratons=3", "unknown config key 'train.iteratons'"),
        ("method_args.treshold=0.9", "method 'fixmatch': unknown argument(s) treshold"),
        ("data.protocol=per_class", "budget 0.1 out of range for protocol 'per_class': expected a whole number"),
        ("data.label_protocol=majority8", "dataset 'synthfer': unknown label protocol 'majority8'; known: basic"),
        ("data.options={images: original}", "data.options: synthfer takes its generator parameters in data.synthfer"),
    ],
)
def test_bad_values(shared_cache: Path, tmp_path: Path, capsys, override: str, expected: str) -> None:
    args = tiny_overrides(shared_cache, tmp_path / "out", method="fixmatch") + [override]
    assert main(["run", "--quiet", *args]) == 2
    _assert_one_line(capsys.readouterr().err, expected)
    assert not (tmp_path / "out" / "records").exists()


def test_malformed_label_file(shared_cache: Path, tmp_path: Path, capsys) -> None:
    basic = write_rafdb_replica(tmp_path / "raf", [1, 2, 3, 4, 5, 6, 7] * 2, [1, 2, 3, 4, 5, 6, 7], size=32)
    label_file = basic / "EmoLabel" / "list_patition_label.txt"
    lines = label_file.read_text().splitlines()
    lines[2] = "train_00003.jpg nine"
    label_file.write_text("\n".join(lines) + "\n")
    args = tiny_overrides(shared_cache, tmp_path / "out", method="supervised")
    args += ["data.name=rafdb", f"data.root={basic}"]
    assert main(["run", "--quiet", *args]) == 2
    err = capsys.readouterr().err
    _assert_one_line(err, f"{label_file}:3")
    assert not (tmp_path / "out" / "records").exists()


def test_corrupt_image_fails_with_its_path_or_is_skipped(shared_cache: Path, tmp_path: Path, capsys) -> None:
    basic = write_rafdb_replica(tmp_path / "raf", [1, 2, 3, 4, 5, 6, 7] * 3, [1, 2, 3, 4, 5, 6, 7], size=32)
    bad = basic / "Image" / "aligned" / "train_00002_aligned.jpg"
    bad.write_bytes(b"not a jpeg")
    args = tiny_overrides(shared_cache, tmp_path / "out", method="supervised") + [
        "data.name=rafdb", f"data.root={basic}", "data.budget=1.0"]
    assert main(["run", "--quiet", *args]) == 2
    _assert_one_line(capsys.readouterr().err, f"{bad}: unreadable image")
    assert not (tmp_path / "out" / "records").exists()
    assert main(["run", "--quiet", *args, "data.on_bad_image=skip"]) == 0
    import json

    rec = json.loads(next((tmp_path / "out" / "records").glob("*.json")).read_text())
    assert rec["split"]["n_labeled"] == 20  # 21 train images, one unreadable and skipped


def test_teacher_methods_need_an_ema(shared_cache: Path, tmp_path: Path, capsys) -> None:
    args = tiny_overrides(shared_cache, tmp_path / "out", method="meanteacher") + ["train.ema_decay=0"]
    assert main(["run", "--quiet", *args]) == 2
    _assert_one_line(capsys.readouterr().err, "method 'meanteacher' trains against an EMA teacher")


def test_methods_lists_every_plugin(capsys) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("supervised", "fullysupervised", "fixmatch", "flexmatch", "freematch", "softmatch",
                 "meanteacher", "adacm"):
        assert f" {name} " in out
    assert "weak, weak2, strong" in out  # Ada-CM's views
    assert "threshold=0.95" in out  # FixMatch's default
    assert main(["methods", "adacm"]) == 0  # one method: each argument's type, range, default and note
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "initial_threshold" in ln]
    assert len(lines) == 1 and "a number in [0, 1]" in lines[0] and "0.8" in lines[0] and "floor" in lines[0]
    assert main(["methods", "nope"]) == 2


# ---- one line for every mistake, and no silent acceptance (issue 20) --------------------------------------------


def _write_spec(path: Path, **keys: object) -> Path:
    import yaml

    spec = {"name": "s", "output_dir": str(path.parent / "out"), "methods": ["supervised"], "budgets": [0.1],
            "seeds": [0], **keys}
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("keys, expected", [
    ({"methods": []}, "sweep spec has no methods: it would run nothing"),
    ({"seeds": []}, "sweep spec has no seeds: it would run nothing"),
    ({"seeds": [0, 0]}, "cell supervised budget=0.1 seed=0 is the same run as cell supervised budget=0.1 seed=0"),
    ({"methods": ["supervised", "supervised"]}, "is the same run as cell supervised budget=0.1 seed=0"),
    ({"methods": [{"name": "supervised", "config": {"output_dir": "elsewhere"}}]},
     "entry 'supervised' sets output_dir in its config; a sweep keeps all it writes in one folder"),
    ({"base": {"output_dir": "elsewhere"}}, "base sets output_dir; a sweep keeps all it writes in one folder"),
])
def test_sweep_spec_mistakes_are_one_line(tmp_path: Path, capsys, keys: dict, expected: str) -> None:
    spec = _write_spec(tmp_path / "spec.yaml", **keys)
    assert main(["sweep", str(spec), "--dry-run"]) == 2
    _assert_one_line(capsys.readouterr().err, expected)
    assert not (tmp_path / "out").exists() and not (tmp_path / "elsewhere").exists()


def test_a_sweep_extends_cycle_is_one_line(tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    _write_spec(a, extends="b.yaml")
    _write_spec(b, extends="a.yaml")
    assert main(["sweep", str(a), "--dry-run"]) == 2
    _assert_one_line(capsys.readouterr().err, f"`extends` forms a cycle ({a} -> {b} -> {a})")
    _write_spec(a, extends="a.yaml")
    assert main(["sweep", str(a), "--dry-run"]) == 2
    _assert_one_line(capsys.readouterr().err, f"`extends` forms a cycle ({a} -> {a})")


def test_sweep_command_line_mistakes_are_one_line(tmp_path: Path, capsys) -> None:
    spec = _write_spec(tmp_path / "spec.yaml", methods=["supervised", "fixmatch"])
    assert main(["sweep", str(spec), "--wait"]) == 2
    _assert_one_line(capsys.readouterr().err, "--wait waits for submitted jobs: it needs --executor slurm or local")
    assert main(["sweep", str(spec), "--dry-run", "fixmatch:=3"]) == 2
    _assert_one_line(capsys.readouterr().err, "override 'fixmatch:=3': no config key after 'fixmatch:'")
    assert main(["sweep", str(spec), "--dry-run", "=3"]) == 2
    _assert_one_line(capsys.readouterr().err, "override '=3': no config key before '='")
    assert not (tmp_path / "out").exists()


def test_leaderboard_mistakes_are_one_line(tmp_path: Path, capsys) -> None:
    import json

    from test_leaderboard import make_record
    from test_reported import write_records

    records = write_records([make_record("supervised", seed, 0.6) for seed in (0, 1)], tmp_path / "records")
    taken = tmp_path / "taken.md"
    taken.write_text("mine")
    assert main(["leaderboard", str(records), "-o", str(taken)]) == 2
    _assert_one_line(capsys.readouterr().err, f"{taken}: exists and is not a folder")
    assert taken.read_text() == "mine"
    assert main(["leaderboard", str(records), "-o", str(tmp_path / "lb"), "--baseline", "fixmatch"]) == 2
    _assert_one_line(capsys.readouterr().err, "--baseline fixmatch: no record of that method in")
    assert main(["leaderboard", str(records), "-o", str(tmp_path / "lb"), "--reported", str(tmp_path / "no.yaml")]) == 2
    _assert_one_line(capsys.readouterr().err, f"--reported {tmp_path / 'no.yaml'}: file not found")
    broken = {k: v for k, v in make_record("fixmatch", 0, 0.7).items() if k != "run_id"}
    (records / "broken.json").write_text(json.dumps(broken))
    assert main(["leaderboard", str(records), "-o", str(tmp_path / "lb")]) == 2
    _assert_one_line(capsys.readouterr().err, f"{records / 'broken.json'}: not a complete run record: no run_id")
    assert not (tmp_path / "lb").exists()


def test_status_of_a_folder_with_a_truncated_status_file_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "status").mkdir()
    (tmp_path / "status" / "fixmatch_x.json").write_text('{"state": "runn')
    assert main(["status", str(tmp_path)]) == 2
    _assert_one_line(capsys.readouterr().err, f"{tmp_path / 'status' / 'fixmatch_x.json'}: a truncated or damaged "
                                              "status file")


@pytest.mark.subprocess
def test_a_pickle_that_is_not_a_checkpoint_is_one_line_without_torchs_warning(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=4))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # warnings shown, as a user sees them
    res = subprocess.run([sys.executable, "-m", "bench.cli", "run", f"model.pretrained_file={path}",
                          f"output_dir={tmp_path / 'out'}"], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 2
    _assert_one_line(res.stderr, f"model.pretrained_file {path}: not a readable checkpoint")


@pytest.mark.subprocess
def test_a_training_command_prints_no_deepspeed_accelerator_line(shared_cache: Path, tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")  # the line came from importing DeepSpeed, which is only there when installed
    res = _ferbench("run", "--quiet", *tiny_overrides(shared_cache, tmp_path / "out", method="supervised",
                                                      **{"train.iterations": 2, "train.eval_every": 2}), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Setting accelerator to CPU" not in res.stderr and "[WARNING]" not in res.stderr, res.stderr
