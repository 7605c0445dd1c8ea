"""`ferbench status OUTPUT_DIR`: done / running / pending / failed for every run of a sweep.

It joins what a sweep leaves on disk: records (done), the status files its jobs write (running,
requeued, failed with the error line), the submissions log and, for SLURM jobs, sacct's job states
(a job killed before it could write anything: cancelled, out of memory, time limit).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bench.errors import FERBenchError
from bench.launch.executor import LIVE_STATES, read_jobs, slurm_states
from bench.results.record import scan_records

STATES = ("done", "running", "requeued", "pending", "failed")


@dataclass
class RunStatus:
    run_id: str
    state: str
    job_id: str | None = None
    error: str | None = None
    log: str | None = None


def _last_line(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else None


def sweep_status(output_dir: str | Path) -> list[RunStatus]:
    out = Path(output_dir)
    records = {rec["run_id"] for _, rec in scan_records(out / "records").files} if (out / "records").is_dir() \
        else set()
    statuses = {}
    for p in (out / "status").glob("*.json"):
        try:
            statuses[p.stem] = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise FERBenchError(f"{p}: a truncated or damaged status file ({e.msg} at line {e.lineno}); delete it "
                                "(its run's record or job decides its state)") from e
    jobs = read_jobs(out)
    sacct = slurm_states([j["job_id"] for j in jobs.values() if j["executor"] == "slurm"])
    result = []
    for rid in sorted(records | set(statuses) | set(jobs)):
        job, st = jobs.get(rid, {}), statuses.get(rid, {})
        job_id = st.get("job_id") or job.get("job_id")
        log = (st.get("logs") or {}).get("stderr") or (job.get("logs") or {}).get("stderr")
        if rid in records:
            result.append(RunStatus(rid, "done", job_id))
            continue
        if st.get("state") == "failed":
            result.append(RunStatus(rid, "failed", job_id, st.get("error"), log))
            continue
        slurm_state = sacct.get(job.get("job_id", "")) if job.get("executor") == "slurm" else None
        if slurm_state is not None and slurm_state not in LIVE_STATES:
            error = f"job {job['job_id']} ended {slurm_state} without a record"
            last = _last_line(log)
            result.append(RunStatus(rid, "failed", job_id, f"{error}; last log line: {last}" if last else error, log))
            continue
        if slurm_state in ("PENDING", "REQUEUED") or (not st and job):
            state = "requeued" if st.get("state") == "requeued" else "pending"
        else:
            state = st.get("state", "pending")
        result.append(RunStatus(rid, state if state in STATES else "running", job_id, None, log))
    return result
