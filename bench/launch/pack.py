"""Packing: K runs of a sweep share one job (one GPU), each in its own process (`runs_per_gpu: K`).

Small-batch SS-FER steps are bound by kernel launches, not arithmetic, so one run leaves most of a GPU
idle; K concurrent processes fill it. `PackJob` starts every run of its pack as a subprocess
(`python -m bench.launch.pack`), each with its own single-process Accelerator and its share of the job's
CPUs, and waits for all of them. Each run keeps its own status file and record, exactly as a job of its
own would, so skip-if-done and `ferbench status` work unchanged; a failing run does not stop the others.
A pre-emption signal (SIGUSR2) is passed on to every run still going: each saves a checkpoint and stops,
and the pack is requeued; on restart, finished runs find their records and return at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import submitit

from bench.errors import FERBenchError
from bench.launch.jobs import RunJob, allocated_cpus, error_line, job_info, status_path
from bench.launch.preemption import Preemption
from bench.results.record import read_record_file
from bench.startup import configure

#: exit status of a pack member that saved a checkpoint and stopped on a pre-emption signal
STOPPED = 3
#: a pack member is one process on its own: it must not take the job's distributed settings
_DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                    "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def check_runs_per_gpu(value: Any, where: str) -> int:
    """`where` prefixes the message: "spec.yaml: " or "--"."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FERBenchError(f"{where}runs_per_gpu={value!r}: expected an integer >= 1 (runs sharing one GPU)")
    return value


class PackJob(submitit.helpers.Checkpointable):
    """Run several sweep runs (resolved configs as dicts) concurrently inside one job."""

    def __init__(self, configs: list[dict[str, Any]], threads: int | None = None) -> None:
        self.configs = configs
        self.threads = threads  # the job's CPUs; SLURM_CPUS_PER_TASK when set

    def __call__(self) -> list[dict[str, Any]]:
        from bench.config import config_from_dict, run_id
        from bench.engine.trainer import run_paths

        cpus = allocated_cpus(self.threads)
        share = max(1, cpus // len(self.configs))
        env = {k: v for k, v in os.environ.items() if k not in _DISTRIBUTED_ENV}
        preemption = Preemption()  # forwarded to the runs first; the pack is requeued once they have checkpointed
        info = job_info()  # asked here: a member's own environment may not describe the job fully (debug)
        procs = []
        for cfg in self.configs:
            p = subprocess.Popen([sys.executable, "-m", "bench.launch.pack", "--threads", str(share)],
                                 stdin=subprocess.PIPE, env=env, text=True)
            p.stdin.write(json.dumps({"config": cfg, "job": info}))
            p.stdin.close()
            procs.append(p)
        forwarded = False
        while any(p.poll() is None for p in procs):
            if preemption() and not forwarded:
                preemption.forward(procs)
                forwarded = True
            time.sleep(0.2)

        results, failures, stopped = [], [], False
        for cfg, p in zip(self.configs, procs):
            run = config_from_dict(cfg)
            rid = run_id(run)
            if p.returncode == 0 and run_paths(run).record.exists():
                record = read_record_file(run_paths(run).record)
                results.append({"run_id": rid, "accuracy": record["metrics"]["final"]["accuracy"]})
            elif p.returncode == STOPPED:
                stopped = True
            else:
                failures.append(f"{rid}: {_failure(RunJob(cfg, job_info=info), rid, p.returncode)}")
        if stopped and preemption():
            preemption.requeue()  # submitit pickles this pack, requeues it and exits
        if failures or stopped:
            raise RuntimeError(f"{len(failures) + stopped} of {len(procs)} runs in this pack did not finish: "
                               + "; ".join(failures or ["stopped before the last iteration"]))
        return results


def _failure(job: RunJob, rid: str, code: int) -> str:
    """The run's error line from its status file; a run killed before it could write one gets one here."""
    path = status_path(job.config["output_dir"], rid)
    status = json.loads(path.read_text()) if path.is_file() else {}
    if status.get("state") == "failed" and status.get("error"):
        return status["error"]
    error = f"run process exited with status {code} before writing its result"
    job._status(rid, "failed", error=error)
    return error


def main(argv: list[str] | None = None) -> int:
    """One pack member: {"config": the run's config, "job": its pack's job info} as JSON on stdin."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.launch.pack")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    payload = json.loads(sys.stdin.read())
    config = payload["config"]
    stop = Preemption()  # forwarded by the pack
    configure(args.threads)
    job = RunJob(config, args.threads, job_info=payload["job"])
    try:
        record = job.run(should_stop=stop)
    except Exception as exc:  # the status file holds the error; the job's log gets the line too
        print(f"ferbench: run failed: {error_line(exc)}", file=sys.stderr)
        return 1
    if record is None:
        from bench.config import config_from_dict, run_id

        rid = run_id(config_from_dict(config))
        if not stop():
            error = f"run {rid} stopped before its last iteration (train.stop_after?)"
            job._status(rid, "failed", error=error)
            print(f"ferbench: {error}", file=sys.stderr)
            return 1
        job._status(rid, "requeued")
        return STOPPED
    return 0


if __name__ == "__main__":
    sys.exit(main())
