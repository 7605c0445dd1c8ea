"""`ferbench status OUTPUT_DIR`: done / stale / running / pending / failed for every run of a sweep.

It joins what a sweep leaves on disk: records (done, or stale when the code installed now behaves differently
from the code that trained them: bench/results/freshness.py), the status files its jobs write (running,
requeued, failed with the error line), the submissions log and, for SLURM jobs, sacct's job states
(a job killed before it could write anything: cancelled, out of memory, time limit).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.errors import FERBenchError
from bench.launch.executor import LIVE_STATES, read_jobs, slurm_states
from bench.results.archive import settle
from bench.results.freshness import assess
from bench.results.record import scan_records

STATES = ("done", "stale", "running", "requeued", "pending", "failed")


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


def _read_statuses(out: Path) -> dict[str, dict]:
    """run id -> the status file its job keeps."""
    statuses = {}
    for p in (out / "status").glob("*.json"):
        try:
            status = json.loads(p.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            status, why = None, f"{type(e).__name__}: {e}"
        else:
            why = f"a {type(status).__name__}, not a mapping"
        if not isinstance(status, dict):
            raise FERBenchError(f"{p}: a truncated or damaged status file ({why}); delete it (its run's record or "
                                "job decides its state)")
        statuses[p.stem] = status
    return statuses


def sweep_status(output_dir: str | Path, probe: bool = True) -> list[RunStatus]:
    """Each run's state; `probe`: compute the current code's fingerprints that are not cached (else their records
    read unknown rather than done or stale)."""
    out = Path(output_dir)
    # The jobs' states before the records: a job writes its record before it ends (and before its "done" status),
    # so a job seen over whose record is not found afterwards did end without one. Read the other way round, a job
    # that finished between the two reads was "failed without a record".
    statuses = _read_statuses(out)
    jobs = read_jobs(out)
    sacct = slurm_states([j["job_id"] for j in jobs.values() if j["executor"] == "slurm"])
    if settle(out):
        _say("rolled back an interrupted archive of stale records (every record back in place)")
    scan = scan_records(out / "records") if (out / "records").is_dir() else None
    for note in scan.notes() if scan else []:
        _say(note)
    found = [rec for _, rec in scan.files] if scan else []
    records = {rec["run_id"] for rec in found}
    fresh = assess(found, probe=probe, announce=_say)
    result = []
    for rid in sorted(records | set(statuses) | set(jobs)):
        job, st = jobs.get(rid, {}), statuses.get(rid, {})
        job_id = st.get("job_id") or job.get("job_id")
        log = (st.get("logs") or {}).get("stderr") or (job.get("logs") or {}).get("stderr")
        if rid in records:
            f = fresh.get(rid)
            if f is not None and f.state == "stale":
                result.append(RunStatus(rid, "stale", job_id, "; ".join(f.changed) or "the code's behaviour changed"))
            elif f is not None and f.state == "unknown":  # done; whether it is current cannot be told
                result.append(RunStatus(rid, "done", job_id, f"fingerprint unknown: {'; '.join(f.changed)}"))
            else:
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


def _say(line: str) -> None:
    print(f"status: {line}", file=sys.stderr, flush=True)


def print_status(output_dir: str | Path, probe: bool = True) -> None:
    """The table of `sweep_status` and a line of counts (done, stale, running, requeued, pending, failed)."""
    from rich.console import Console
    from rich.table import Table

    if not Path(output_dir).is_dir():
        raise FERBenchError(f"{output_dir}: sweep output folder not found")
    rows = sweep_status(output_dir, probe=probe)
    if not rows:
        raise FERBenchError(f"{output_dir}: no runs found (no records, status files or submissions)")
    table = Table(title=f"sweep {output_dir}")
    for col in ("run", "state", "job", "error / log / what changed"):
        table.add_column(col, overflow="fold")
    colour = {"done": "green", "stale": "magenta", "failed": "red", "running": "cyan", "requeued": "yellow",
              "pending": "white"}
    for r in rows:
        detail = f"{r.error} ({r.log})" if r.error and r.log else r.error or (r.log or "" if r.state != "done" else "")
        table.add_row(r.run_id, f"[{colour[r.state]}]{r.state}[/]", r.job_id or "", detail)
    Console(width=200 if not sys.stdout.isatty() else None).print(table)
    counts = {s: sum(r.state == s for r in rows) for s in STATES}
    unknown = sum(r.state == "done" and (r.error or "").startswith("fingerprint unknown") for r in rows)
    print(", ".join(f"{n} {s}" for s, n in counts.items())
          + (f" ({unknown} of the done not assessed: fingerprint unknown)" if unknown else ""))
