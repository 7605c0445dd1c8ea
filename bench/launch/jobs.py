"""One sweep run as a submitit job, and the status file it keeps.

`RunJob` is `Checkpointable`: when SLURM signals a pre-emption or the time limit (SIGUSR2, sent
`signal_delay_s` before the end), training stops at its next agreement point (a log, evaluation or
checkpoint step, the same step on every process: `bench.launch.preemption`), saves a checkpoint, and
submitit requeues the job, which resumes there. A job killed outright (`scontrol requeue`,
a node failure) restarts from the run's last periodic checkpoint; resume is exact either way.

Every job writes `<output_dir>/status/<run_id>.json` (running / requeued / done / failed, with the
error line and log paths) so `ferbench status` works the same for every executor.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

import submitit

from bench.launch.preemption import Preemption
from bench.results.record import write_json_atomic
from bench.startup import allocated_cpus, configure  # allocated_cpus: also the pack's (bench.launch.pack)


def status_path(output_dir: str | Path, run_id: str) -> Path:
    return Path(output_dir) / "status" / f"{run_id}.json"


def _log_paths() -> dict[str, str]:
    try:
        paths = submitit.JobEnvironment().paths
    except (RuntimeError, KeyError):  # not inside a submitit job; the debug executor has no log folder
        return {}
    env = submitit.JobEnvironment()
    return {"stdout": str(paths.stdout).replace("%t", str(env.global_rank)),
            "stderr": str(paths.stderr).replace("%t", str(env.global_rank))}


def _job_id() -> str | None:
    try:
        return submitit.JobEnvironment().job_id
    except RuntimeError:
        return None


def job_info() -> dict[str, Any]:
    """This submitit job's id and log paths (empty outside a job)."""
    return {"job_id": _job_id(), "logs": _log_paths()}


def error_line(exc: BaseException) -> str:
    """The one line a user needs: the FERBench error message, or the exception's type and message."""
    from bench.errors import FERBenchError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, FERBenchError) else f"{type(exc).__name__}: {text}"


class RunJob(submitit.helpers.Checkpointable):
    """Train one run (resuming from its checkpoint), given its resolved config as a dict."""

    def __init__(self, config: dict[str, Any], threads: int | None = None,
                 job_info: dict[str, Any] | None = None) -> None:
        self.config = config
        self.threads = threads  # torch threads; SLURM_CPUS_PER_TASK when set (`allocated_cpus`)
        self.job_info = job_info  # {"job_id", "logs"} of the job this run is part of (a pack), else asked here

    def _status(self, run_id: str, state: str, **extra: Any) -> None:
        info = self.job_info if self.job_info is not None else job_info()
        write_json_atomic(status_path(self.config["output_dir"], run_id), {
            "run_id": run_id, "state": state, "job_id": info["job_id"], "host": socket.gethostname(),
            "logs": info["logs"], "updated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra})

    def run(self, should_stop: Any = None) -> dict[str, Any] | None:
        """Train with status files (running, then done or failed); None when stopped at a checkpoint."""
        from bench.config import config_from_dict, run_id
        from bench.engine.trainer import train

        cfg = config_from_dict(self.config)
        rid = run_id(cfg)
        rank = int(os.environ.get("RANK", "0"))
        if rank == 0:
            self._status(rid, "running")
        try:
            record = train(cfg, should_stop=should_stop)
        except BaseException as exc:
            if rank == 0:
                self._status(rid, "failed", error=error_line(exc), traceback=traceback.format_exc(limit=8))
            raise
        if record is not None and rank == 0:
            self._status(rid, "done", accuracy=record["metrics"]["final"]["accuracy"])
        return record

    def __call__(self) -> dict[str, Any]:
        from bench.config import config_from_dict, run_id

        configure(allocated_cpus(self.threads))  # first: before anything loads torch and its OpenMP runtime
        try:
            tasks = submitit.JobEnvironment().num_tasks
        except RuntimeError:  # not inside a submitit job
            tasks = 1
        if tasks > 1:  # ranks, world size and master address of a multi-task job, for the Accelerator; a
            # single-task job exports nothing, or Accelerate would set up a 1-process "distributed" CPU run with
            # one thread per core of the node, whatever the job was given
            submitit.helpers.TorchDistributedEnvironment().export()
        rid = run_id(config_from_dict(self.config))
        preemption = Preemption()  # defers submitit's requeue until a checkpoint is saved
        record = self.run(should_stop=preemption)
        if record is None and preemption():
            if int(os.environ.get("RANK", "0")) == 0:
                self._status(rid, "requeued")
            preemption.requeue()  # submitit pickles this job, requeues it and exits
        if record is None:
            raise RuntimeError(f"run {rid} stopped before its last iteration (train.stop_after?)")
        return {"run_id": rid, "accuracy": record["metrics"]["final"]["accuracy"]}
