"""Sweeps through submitit: SLURM job arrays, or local subprocesses, with the same job and status files.

    slurm  one array job (`executor.batch()`), at most `array_parallelism` tasks at a time, one task per
           GPU (`tasks_per_node = gpus_per_node`), SIGUSR2 `signal_delay_s` before the time limit so a run
           checkpoints and is requeued (see `bench.launch.jobs.RunJob`)
    local  submitit's LocalExecutor: real subprocesses, at most `array_parallelism` at a time
    debug  submitit's DebugExecutor: every run in this process, for debugging

With `runs_per_gpu` K > 1, each job is a pack of K runs sharing its GPU (`bench.launch.pack.PackJob`).

Submissions are logged in `<output_dir>/jobs.jsonl`. A run is submitted again only if it has no record
and no job that is still pending or running, so resubmitting a sweep is always safe.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import submitit

from bench.config import RunConfig, run_id
from bench.errors import FERBenchError
from bench.launch.jobs import RunJob
from bench.launch.pack import PackJob, check_runs_per_gpu

EXECUTORS = ("slurm", "local", "debug")
#: sacct states of a job that is not over yet
LIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "CONFIGURING", "COMPLETING",
               "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


@dataclass
class ClusterParams:
    """Resources of one run's job (from the spec's `cluster:` mapping, then command-line flags)."""

    partition: str | None = None
    time_min: int = 60
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    mem_gb: float = 4.0
    array_parallelism: int = 8
    signal_delay_s: int = 120

    @classmethod
    def from_mapping(cls, mapping: dict[str, Any], where: str) -> ClusterParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise FERBenchError(f"{where}: unknown cluster key(s) {', '.join(unknown)}; expected "
                                f"{', '.join(sorted(known))}")
        params = cls(**{k: v for k, v in mapping.items() if v is not None})
        for name in ("time_min", "cpus_per_task", "array_parallelism"):
            if int(getattr(params, name)) < 1:
                raise FERBenchError(f"{where}: cluster {name}={getattr(params, name)} must be at least 1")
        return params


def jobs_log(output_dir: str | Path) -> Path:
    return Path(output_dir) / "jobs.jsonl"


def read_jobs(output_dir: str | Path) -> dict[str, dict[str, Any]]:
    """run_id -> its latest submission."""
    path = jobs_log(output_dir)
    latest: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                latest[entry["run_id"]] = entry
    return latest


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """job id -> SLURM state (first word: "CANCELLED by 0" -> CANCELLED), from one sacct call."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, timeout=60)
    states = {}
    for line in out.stdout.splitlines():
        jid, _, state = line.partition("|")
        states[jid.strip()] = state.split()[0] if state.strip() else "UNKNOWN"
    return states


def queued_jobs() -> set[str]:
    """Ids of the jobs (array tasks one by one) SLURM's controller still holds: pending, running, requeued.

    Asked of squeue, not sacct: a job accounting has not recorded yet (just submitted) or no longer knows
    (a purged database) must not count as over, or as live forever, respectively.
    """
    if shutil.which("squeue") is None:
        return set()
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise FERBenchError(f"squeue failed ({out.stderr.strip()}): cannot tell which runs are still queued")
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


def _executor(kind: str, folder: Path, name: str, params: ClusterParams) -> submitit.Executor:
    ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=kind)
    tasks = max(1, params.gpus_per_node)  # one task (one process) per GPU
    common: dict[str, Any] = {"name": name, "timeout_min": params.time_min, "cpus_per_task": params.cpus_per_task,
                              "mem_gb": params.mem_gb, "tasks_per_node": tasks, "nodes": 1}
    if params.gpus_per_node:
        common["gpus_per_node"] = params.gpus_per_node
    if kind == "slurm":
        common.update(slurm_array_parallelism=params.array_parallelism,
                      slurm_signal_delay_s=params.signal_delay_s)
        if params.partition:
            common["slurm_partition"] = params.partition
    ex.update_parameters(**common)
    return ex


def pending_runs(runs: list[RunConfig], output_dir: str | Path) -> tuple[list[RunConfig], int, int]:
    """(runs to submit, number already done, number with a live job)."""
    from bench.engine.trainer import run_paths

    jobs = read_jobs(output_dir)
    queued = queued_jobs() if any(j["executor"] == "slurm" for j in jobs.values()) else set()
    todo, done, live = [], 0, 0
    for cfg in runs:
        rid = run_id(cfg)
        if run_paths(cfg).record.exists():
            done += 1
            continue
        job = jobs.get(rid)
        if job and job["executor"] == "slurm" and job["job_id"] in queued:
            live += 1  # submitted earlier and not over: submitting it again would run it twice
            continue
        todo.append(cfg)
    return todo, done, live


def _job_for(pack: list[RunConfig], params: ClusterParams, runs_per_gpu: int) -> RunJob | PackJob:
    if runs_per_gpu == 1:
        return RunJob(pack[0].to_dict(), params.cpus_per_task)
    return PackJob([cfg.to_dict() for cfg in pack], params.cpus_per_task)


def submit_runs(runs: list[RunConfig], kind: str, output_dir: str | Path, name: str,
                params: ClusterParams, runs_per_gpu: int = 1) -> list[submitit.Job]:
    """Submit the runs, `runs_per_gpu` to a job (one array on SLURM); returns the jobs, in the order of `runs`
    (one job per pack of consecutive runs)."""
    check_runs_per_gpu(runs_per_gpu, "")
    if runs_per_gpu > 1 and params.gpus_per_node > 1:
        raise FERBenchError(f"runs_per_gpu={runs_per_gpu} packs single-process runs onto one GPU; "
                            f"it cannot be combined with gpus_per_node={params.gpus_per_node}")
    if kind not in EXECUTORS:
        raise FERBenchError(f"--executor {kind!r}: expected one of {', '.join(EXECUTORS)}")
    if kind == "slurm" and shutil.which("sbatch") is None:
        raise FERBenchError("--executor slurm: sbatch not found; run on a SLURM login node "
                            "(or start the local test cluster: bash slurm/cluster.sh up)")
    out = Path(output_dir)
    ex = _executor(kind, out / "logs", f"ferbench-{name}", params)
    packs = [runs[i : i + runs_per_gpu] for i in range(0, len(runs), runs_per_gpu)]
    if kind == "local":  # the local executor has no array throttle: submit in waves
        return _submit_in_waves(ex, packs, out, params, runs_per_gpu)
    with ex.batch():
        jobs = [ex.submit(_job_for(pack, params, runs_per_gpu)) for pack in packs]
    for pack, job in zip(packs, jobs):
        _log_submissions(out, kind, pack, [job] * len(pack))
    return jobs


def _log_submissions(out: Path, kind: str, runs: list[RunConfig], jobs: list[submitit.Job]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(jobs_log(out), "a") as f:  # one writer: the submitting process
        for cfg, job in zip(runs, jobs):
            f.write(json.dumps({"run_id": run_id(cfg), "job_id": str(job.job_id), "executor": kind,
                                "method": cfg.method, "budget": cfg.data.budget, "seed": cfg.seed,
                                "logs": {"stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)},
                                "submitted_utc": stamp}) + "\n")


def _submit_in_waves(ex: submitit.Executor, packs: list[list[RunConfig]], out: Path,
                     params: ClusterParams, runs_per_gpu: int) -> list[submitit.Job]:
    width = params.array_parallelism
    jobs: list[submitit.Job] = []
    running: list[submitit.Job] = []
    for pack in packs:
        while len(running) >= width:
            running = [j for j in running if not j.done()]
            time.sleep(0.5)
        job = ex.submit(_job_for(pack, params, runs_per_gpu))
        _log_submissions(out, "local", pack, [job] * len(pack))
        jobs.append(job)
        running.append(job)
    return jobs


def wait_for(jobs: list[submitit.Job], poll_s: float = 2.0) -> list[tuple[submitit.Job, str | None]]:
    """Block until every job ends; (job, None) for a success, (job, error line) for a failure."""
    out = []
    for job in jobs:
        while not job.done():
            time.sleep(poll_s)
        exc = job.exception()
        out.append((job, None if exc is None else _last_line(exc)))
    return out


def _last_line(exc: BaseException) -> str:
    """submitit wraps a job's exception in its traceback and log paths: keep the last 'SomeError: ...' line."""
    lines = [ln.strip() for ln in str(exc).splitlines()]
    errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b.*: ", ln)]
    return errors[-1] if errors else (lines[0] if lines else type(exc).__name__)
