"""`accelerate launch` with two processes, as a real subprocess: one record, world size 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require, tiny_overrides

from bench.contract.runs import Launched, free_port, launch_two_processes

pytestmark = pytest.mark.subprocess


def test_two_process_launch_writes_one_record(shared_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _launch(shared_cache, out, "fixmatch")
    assert res.returncode == 0, res.stderr[-3000:]
    records = list((out / "records").glob("*.json"))
    assert len(records) == 1
    rec = json.loads(records[0].read_text())
    assert rec["world_size"] == 2
    assert rec["global_batch"] == {"labeled": 8, "unlabeled": 16}  # global, split 4 + 4 over the processes
    assert [h["step"] for h in rec["history"]] == [4, 8, 12]
    assert sum(map(sum, rec["metrics"]["final"]["confusion_matrix"])) == 140  # every test image, once
    assert rec["distributed"] == {"type": "MULTI_CPU", "backend": "gloo", "zero_stage": None,
                                  "method_state_checks": 2}  # the checkpoints at iterations 4 and 8
    assert rec["sessions"] == [{"start_step": 0, "steps": 12}]


def _launch(shared_cache: Path, out: Path, method: str, *extra: str) -> Launched:
    """The tiny run of `method` on two CPU processes, as `ferbench check-method` launches it."""
    return launch_two_processes([*tiny_overrides(shared_cache, out, method=method), *extra])


def test_a_two_process_run_with_method_state_resumes_exactly(shared_cache: Path, tmp_path: Path) -> None:
    """FlexMatch's class-wise state, updated from every process's batch, agrees at each checkpoint (4 and 8; every
    method's agreement is checked by the contract, tests/test_method_contract.py), and a two-process run stopped at 6
    and relaunched ends as an uninterrupted one."""
    args = ("method_args.threshold=0.3",)
    full = _launch(shared_cache, tmp_path / "full", "flexmatch", *args)
    assert full.returncode == 0, full.stderr[-3000:]
    assert _launch(shared_cache, tmp_path / "cut", "flexmatch", *args, "train.stop_after=6").returncode == 0
    resumed = _launch(shared_cache, tmp_path / "cut", "flexmatch", *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (json.loads(next((tmp_path / d / "records").glob("*.json")).read_text()) for d in ("full", "cut"))
    assert a["world_size"] == b["world_size"] == 2
    assert a["distributed"]["method_state_checks"] == 2 and b["distributed"]["method_state_checks"] == 3  # + at 6
    assert b["sessions"] == [{"start_step": 0, "steps": 6}, {"start_step": 6, "steps": 6}]
    assert a["metrics"] == b["metrics"] and a["history"] == b["history"]


def test_a_summed_state_is_saved_as_the_total_and_resumed_on_the_first_process(shared_cache: Path,
                                                                               tmp_path: Path) -> None:
    """A state declared reduce='sum' (what each process saw) may differ between processes; a checkpoint keeps the sum
    over them, restored on the first process and as zeros on the others, so the run's total carries on."""
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "sumcounts.py").write_text(
        "import torch\n"
        "from bench.registry import register_method\n"
        "from methods.supervised import Supervised\n\n\n"
        "@register_method('sumcounts')\n"
        "class SumCounts(Supervised):\n"
        "    def __init__(self, num_classes, **h):\n"
        "        super().__init__(num_classes, **h)\n"
        "        self.add_state('seen', torch.zeros(()), reduce='sum')\n\n"
        "    def training_step(self, model, batch, ctx):\n"
        "        self.seen = self.seen + len(batch.labeled['y'])  # this process's images\n"
        "        return super().training_step(model, batch, ctx)\n\n"
        "    def info(self):\n"
        "        return {'seen_here': float(self.seen)}\n")
    (plugin / "sitecustomize.py").write_text("import sumcounts  # noqa: F401\n")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")])}

    def launch(out: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()),
               "-m", "bench.train", "--quiet", *tiny_overrides(shared_cache, out, method="sumcounts"), *extra]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]

    launch(tmp_path / "full")
    launch(tmp_path / "cut", "train.stop_after=6")
    launch(tmp_path / "cut")
    full, cut = (json.loads(next((tmp_path / d / "records").glob("*.json")).read_text()) for d in ("full", "cut"))
    # 4 labeled images per process and step (B = 8 over 2): the first process counted 12 x 4 on its own; resumed,
    # it holds the total at 6 (6 x 8) and adds its own 6 x 4
    assert full["method_info"] == {"seen_here": 48.0} and cut["method_info"] == {"seen_here": 72.0}
    assert cut["distributed"]["method_state_checks"] == 3  # checkpoints at 4, 6 and 8: no disagreement raised


def test_deepspeed_zero2_launch_on_cpu_and_exact_resume(shared_cache: Path, tmp_path: Path) -> None:
    require("deepspeed", "DeepSpeed is not installed (pip install -e '.[deepspeed]')")
    repo = Path(__file__).resolve().parents[1]
    config = repo / "bench" / "configs" / "accelerate" / "deepspeed_zero2.yaml"
    # the first DeepSpeed run JIT-compiles its CPU communication op; keep it with the other caches
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(shared_cache / "torch_extensions"))}

    def launch(out: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--main_process_port", str(free_port()),
               "-m", "bench.train", "--quiet", *tiny_overrides(shared_cache, out, method="fixmatch"), *extra]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=repo)
        assert res.returncode == 0, res.stderr[-3000:]

    launch(tmp_path / "full")
    rec = json.loads(next((tmp_path / "full" / "records").glob("*.json")).read_text())
    assert rec["world_size"] == 2 and rec["distributed"] == {"type": "DEEPSPEED", "backend": "gloo", "zero_stage": 2,
                                                            "method_state_checks": 2}
    assert [h["step"] for h in rec["history"]] == [4, 8, 12]
    assert sum(map(sum, rec["metrics"]["final"]["confusion_matrix"])) == 140
    # interrupted at iteration 6 (checkpointed through DeepSpeed's engine), then resumed: the same run
    launch(tmp_path / "resumed", "train.stop_after=6")
    assert not (tmp_path / "resumed" / "records").exists()
    launch(tmp_path / "resumed")
    resumed = json.loads(next((tmp_path / "resumed" / "records").glob("*.json")).read_text())
    assert resumed["history"] == rec["history"] and resumed["curves"] == rec["curves"]
    # the relaunched processes started at the checkpoint's step 6 and ran the other 6, not all 12
    assert rec["sessions"] == [{"start_step": 0, "steps": 12}]
    assert resumed["sessions"] == [{"start_step": 0, "steps": 6}, {"start_step": 6, "steps": 6}]


def _pids_with(tag: str, rank: str) -> list[int]:
    """Processes whose environment carries FERBENCH_TEST_TAG=tag and RANK=rank (a launched worker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(v.split("=", 1) for v in (entry / "environ").read_bytes().decode(errors="replace").split("\0")
                       if "=" in v)
        except OSError:
            continue
        if env.get("FERBENCH_TEST_TAG") == tag and env.get("RANK") == rank:
            found.append(int(entry.name))
    return found


def test_sigusr2_to_one_rank_stops_every_rank_at_one_step_and_the_resume_is_exact(shared_cache: Path,
                                                                                    tmp_path: Path) -> None:
    import signal
    import time

    extra = {"train.iterations": 300, "train.eval_every": 100, "train.log_every": 5, "train.checkpoint_every": 1000}

    def launch(out: Path, tag: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()),
               "-m", "bench.train", "--quiet", *tiny_overrides(shared_cache, out, method="fixmatch", **extra)]
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "FERBENCH_TEST_TAG": tag}
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    out = tmp_path / "signalled"
    proc = launch(out, str(tmp_path))
    deadline = time.time() + 300
    while not (out / "runs").is_dir() or not any((out / "runs").glob("*/tb")):  # training has started
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.5)
    time.sleep(3)
    rank1 = _pids_with(str(tmp_path), "1")
    assert len(rank1) == 1
    os.kill(rank1[0], signal.SIGUSR2)  # one rank only: both must stop at the same, agreed step
    stdout, stderr = proc.communicate(timeout=120)  # bounded: no rank waits alone at a barrier
    assert proc.returncode == 0, stderr[-3000:]
    assert "stopped on a pre-emption signal" in stdout
    assert not (out / "records").exists()
    checkpoint = next((out / "runs").glob("*/checkpoint"))
    stopped_at = json.loads((checkpoint / "complete.json").read_text())["step"]
    assert 0 < stopped_at < 300 and stopped_at % 5 == 0  # an agreement point (log_every 5)
    proc = launch(out, str(tmp_path) + "-resume")
    assert proc.wait(timeout=600) == 0, proc.communicate()[1][-3000:]
    plain = launch(tmp_path / "plain", str(tmp_path) + "-plain")
    assert plain.wait(timeout=600) == 0, plain.communicate()[1][-3000:]
    a = json.loads(next((tmp_path / "plain" / "records").glob("*.json")).read_text())
    b = json.loads(next((out / "records").glob("*.json")).read_text())
    assert b["sessions"] == [{"start_step": 0, "steps": stopped_at}, {"start_step": stopped_at,
                                                                      "steps": 300 - stopped_at}]
    assert a["metrics"] == b["metrics"] and a["history"] == b["history"]
