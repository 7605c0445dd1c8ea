"""`accelerate launch` with two processes, as a real subprocess: one record, world size 2."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_launch_writes_one_record(shared_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           "-m", "bench.train", "--quiet", *tiny_overrides(shared_cache, out, method="fixmatch")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    records = list((out / "records").glob("*.json"))
    assert len(records) == 1
    rec = json.loads(records[0].read_text())
    assert rec["world_size"] == 2
    assert rec["global_batch"] == {"labeled": 8, "unlabeled": 16}  # global, split 4 + 4 over the processes
    assert [h["step"] for h in rec["history"]] == [4, 8, 12]
    assert sum(map(sum, rec["metrics"]["final"]["confusion_matrix"])) == 140  # every test image, once
    assert rec["distributed"] == {"type": "MULTI_CPU", "backend": "gloo", "zero_stage": None}


def test_deepspeed_zero2_launch_on_cpu_and_exact_resume(shared_cache: Path, tmp_path: Path) -> None:
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install -e '.[deepspeed]')")
    repo = Path(__file__).resolve().parents[1]
    config = repo / "bench" / "configs" / "accelerate" / "deepspeed_zero2.yaml"
    # the first DeepSpeed run JIT-compiles its CPU communication op; keep it with the other caches
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(shared_cache / "torch_extensions"))}

    def launch(out: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--main_process_port", str(_free_port()),
               "-m", "bench.train", "--quiet", *tiny_overrides(shared_cache, out, method="fixmatch"), *extra]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=repo)
        assert res.returncode == 0, res.stderr[-3000:]

    launch(tmp_path / "full")
    rec = json.loads(next((tmp_path / "full" / "records").glob("*.json")).read_text())
    assert rec["world_size"] == 2 and rec["distributed"] == {"type": "DEEPSPEED", "backend": "gloo", "zero_stage": 2}
    assert [h["step"] for h in rec["history"]] == [4, 8, 12]
    assert sum(map(sum, rec["metrics"]["final"]["confusion_matrix"])) == 140
    # interrupted at iteration 6 (checkpointed through DeepSpeed's engine), then resumed: the same run
    launch(tmp_path / "resumed", "train.stop_after=6")
    assert not (tmp_path / "resumed" / "records").exists()
    launch(tmp_path / "resumed")
    resumed = json.loads(next((tmp_path / "resumed" / "records").glob("*.json")).read_text())
    assert resumed["history"] == rec["history"] and resumed["curves"] == rec["curves"]
