"""The contract's seconds-long runs: one config (a tiny generated synthfer, a tiny CNN, 12 iterations with evaluations,
logs and checkpoints every few), trained straight, interrupted and resumed, and launched on two processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.config import RunConfig, build_config
from bench.method import Method
from bench.results.record import Record

#: the settings of every contract run (and of the test suite's tiny runs): small enough to train in seconds on a CPU,
#: with several evaluations (4, 8, 12), logs (every 2) and checkpoints (4, 8) to compare
TINY_RUN: dict[str, Any] = {
    "data.image_size": 32,
    "data.synthfer": "{n_train: 280, n_test: 140, seed: 0, size: 32}",
    "data.budget": 0.1,
    "model.backbone": "ferbench_cnn_tiny",
    "train.iterations": 12,
    "train.batch_size": 8,
    "train.mu": 2,
    "train.eval_every": 4,
    "train.log_every": 2,
    "train.checkpoint_every": 4,
}


def tiny_settings(cache_dir: Path | str, output_dir: Path | str | None, **extra: Any) -> list[str]:
    """Dotted overrides for a tiny run: `TINY_RUN`, then `extra` (a method's `check_settings`, a user's own); without
    `output_dir` when it is None (the caller adds one per run)."""
    where = {"output_dir": str(output_dir)} if output_dir is not None else {}
    base = {"data.cache_dir": str(cache_dir), **TINY_RUN, **where, **extra}
    return [f"{k}={v}" for k, v in base.items()]


@dataclass(frozen=True)
class Interruption:
    """Where a resumed run is stopped: `key` (a stage's `train.stop_after`) at iteration `at` of that stage."""

    stage: str
    key: str
    at: int


def interruptions(cls: type[Method], cfg: RunConfig) -> list[Interruption]:
    """One stop in the middle of every stage of at least two iterations, in stage order."""
    from bench.data.datasets import get_dataset
    from bench.engine.stage import stage_config

    num_classes = get_dataset(cfg.data.name).num_classes_for(cfg.data.label_protocol)
    stages = cls(num_classes=num_classes, **cfg.method_args).stages()
    out = []
    for stage in stages:
        iterations = stage_config(cfg, stage).train.iterations
        key = "train.stop_after" if len(stages) == 1 else f"stages.{stage.name}.train.stop_after"
        if iterations >= 2:
            out.append(Interruption(stage.name, key, iterations // 2))
    return out


def train_tiny(settings: list[str]) -> Record | None:
    """Train (or resume) the run `settings` describe, in this process, quietly."""
    from bench.engine.trainer import train

    return train(build_config(overrides=settings))


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    """The final model weights of the one run under `output_dir`."""
    (path,) = (output_dir / "runs").glob("*/final_model.pt")
    return torch.load(path, map_location="cpu", weights_only=True)


def free_port() -> int:
    """A TCP port free on this host now, for a launch's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Launched:
    returncode: int
    stderr: str


def launch_two_processes(settings: list[str], timeout_s: float = 900) -> Launched:
    """`accelerate launch` of the run on two CPU processes (gloo), as a user's multi-process run starts. The
    processes import methods from this process's import path, so a plugin found here is found there."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "bench.train", "--quiet", *settings]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return Launched(124, f"the two processes did not finish within {timeout_s:g} s")
    return Launched(res.returncode, res.stderr)
