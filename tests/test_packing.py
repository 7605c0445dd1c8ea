"""runs_per_gpu: K runs of a sweep share one job, each in its own process with its own record and status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bench.cli import main
from bench.launch.sweep import load_sweep

TINY_DATA = {"image_size": 32, "synthfer": {"n_train": 280, "n_test": 140, "seed": 0, "size": 32}}


def _spec(path: Path, out: Path, cache: Path, methods: list, seeds: list[int], **top) -> Path:
    spec = {"name": path.stem, "output_dir": str(out),
            "base": {"data": {**TINY_DATA, "cache_dir": str(cache)}, "model": {"backbone": "ferbench_cnn_tiny"},
                     "train": {"batch_size": 8, "mu": 1, "iterations": 2, "eval_every": 2}},
            "methods": methods, "budgets": [0.1], "seeds": seeds,
            "cluster": {"cpus_per_task": 2, "array_parallelism": 2}, **top}
    path.write_text(yaml.safe_dump(spec))
    return path


def _jobs(out: Path) -> dict[str, str]:
    lines = (out / "jobs.jsonl").read_text().splitlines()
    return {json.loads(ln)["run_id"]: json.loads(ln)["job_id"] for ln in lines}


@pytest.mark.subprocess
def test_local_executor_packs_four_runs_into_two_jobs(shared_cache: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    spec = _spec(tmp_path / "four.yaml", out, shared_cache, ["supervised"], [0, 1, 2, 3], runs_per_gpu=2)
    assert main(["sweep", str(spec), "--executor", "local", "--wait"]) == 0
    assert "submitted 4 runs as job(s)" in capsys.readouterr().out
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert sorted(r["seed"] for r in records) == [0, 1, 2, 3]
    jobs = _jobs(out)
    assert len(jobs) == 4 and len(set(jobs.values())) == 2  # 4 runs, 2 jobs of 2
    statuses = [json.loads(p.read_text()) for p in (out / "status").glob("*.json")]
    assert [s["state"] for s in statuses] == ["done"] * 4
    assert {s["job_id"] for s in statuses} == set(jobs.values())  # each run knows the job it ran in
    assert main(["status", str(out)]) == 0
    counts = capsys.readouterr().out.strip().splitlines()[-1]
    assert counts == "4 done, 0 stale, 0 running, 0 requeued, 0 pending, 0 failed"
    # resubmitting finds every record: nothing is submitted
    assert main(["sweep", str(spec), "--executor", "local"]) == 0
    assert "4 already done, 0 already submitted and not over, 0 to submit" in capsys.readouterr().out


@pytest.mark.subprocess
def test_a_failing_run_in_a_pack_keeps_the_others_record(shared_cache: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    methods = ["supervised", {"name": "supervised", "config": {"optim": {"lr": 1e30}}}]  # the second diverges
    spec = _spec(tmp_path / "pair.yaml", out, shared_cache, methods, [0])
    assert main(["sweep", str(spec), "--executor", "local", "--wait", "--runs-per-gpu", "2"]) == 1
    err = capsys.readouterr().err
    assert "1 of 2 runs in this pack did not finish" in err and "loss became" in err
    assert len(list((out / "records").glob("*.json"))) == 1
    assert len(set(_jobs(out).values())) == 1  # one job held both
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.strip().splitlines()[-1] == "1 done, 0 stale, 0 running, 0 requeued, 0 pending, 1 failed"
    assert "loss became" in text


def test_debug_executor_runs_a_pack_from_this_process(shared_cache: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    spec = _spec(tmp_path / "dbg.yaml", out, shared_cache, ["supervised"], [0, 1], runs_per_gpu=2)
    assert main(["sweep", str(spec), "--executor", "debug", "--wait"]) == 0
    assert len(list((out / "records").glob("*.json"))) == 2 and len(set(_jobs(out).values())) == 1
    statuses = [json.loads(p.read_text()) for p in (out / "status").glob("*.json")]
    assert [s["state"] for s in statuses] == ["done", "done"] and all(s["job_id"] for s in statuses)


@pytest.mark.parametrize("where, args", [("spec", []), ("flag", ["--runs-per-gpu", "0"])])
def test_runs_per_gpu_below_one_is_refused_before_anything_runs(tmp_path: Path, capsys, where: str,
                                                                args: list[str]) -> None:
    top = {"runs_per_gpu": 0} if where == "spec" else {}
    spec = _spec(tmp_path / "s.yaml", tmp_path / "out", tmp_path / "cache", ["supervised"], [0], **top)
    assert main(["sweep", str(spec), "--executor", "local", *args]) == 2
    err = capsys.readouterr().err.strip()
    expected = f"{spec}: runs_per_gpu=0: expected an integer >= 1 (runs sharing one GPU)" if where == "spec" \
        else "sweep --runs-per-gpu 0: expected an integer in [1, inf)"  # a flag: checked as parsed, like every number
    assert err == f"ferbench: error: {expected}"
    assert not (tmp_path / "out").exists()


def test_runs_per_gpu_is_read_from_the_spec(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "s.yaml", tmp_path / "out", tmp_path / "cache", ["supervised"], [0], runs_per_gpu=3)
    assert load_sweep(spec).runs_per_gpu == 3
    spec.write_text(spec.read_text().replace("runs_per_gpu: 3", "runs_per_gpu: two"))
    with pytest.raises(Exception, match="runs_per_gpu='two': expected an integer >= 1"):
        load_sweep(spec)
