"""Sweeps on a real SLURM cluster (slurm/cluster.sh: slurmctld, slurmd, munge, slurmdbd on this machine).

The cluster is started here when it is not running (CI starts it in .ci/run); these tests are skipped,
with the reason, only where it cannot be installed or started (not root, no apt, no Debian packages).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import skip_or_fail

from bench.cli import main
from bench.startup import SPIN_COUNT, default_threads

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[1]
TINY_DATA = {"image_size": 32, "synthfer": {"n_train": 280, "n_test": 140, "seed": 0, "size": 32}}


def _cluster_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return res.returncode == 0 and any(s in res.stdout for s in ("idle", "mixed", "allocated"))


@pytest.fixture(scope="session")
def slurm_cluster():
    if _cluster_answers():
        yield
        return
    if os.geteuid() != 0:
        skip_or_fail("no SLURM cluster running, and starting the local one (slurm/cluster.sh) needs root")
    res = subprocess.run(["bash", str(REPO / "slurm" / "cluster.sh"), "up"], capture_output=True, text=True,
                         timeout=600)
    if res.returncode != 0 or not _cluster_answers():
        tail = " | ".join((res.stderr or res.stdout).strip().splitlines()[-3:])
        skip_or_fail(f"the local SLURM cluster could not be started: {tail}")
    yield
    subprocess.run(["bash", str(REPO / "slurm" / "cluster.sh"), "down"], capture_output=True, timeout=120)


def _spec(path: Path, out: Path, cache: Path, methods: list, seeds: list[int], train: dict) -> Path:
    spec = {"name": path.stem, "output_dir": str(out),
            "base": {"data": {**TINY_DATA, "cache_dir": str(cache)}, "model": {"backbone": "ferbench_cnn_tiny"},
                     "train": {"batch_size": 8, "mu": 1, **train}},
            "methods": methods, "budgets": [0.1], "seeds": seeds,
            "cluster": {"cpus_per_task": 1, "mem_gb": 2, "time_min": 15, "array_parallelism": 2}}
    path.write_text(yaml.safe_dump(spec))
    return path


def _wait(predicate, timeout: float, what: str, poll: float = 1.0):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _job_ids(out: Path) -> dict[str, str]:
    return {json.loads(ln)["run_id"]: json.loads(ln)["job_id"] for ln in (out / "jobs.jsonl").read_text().splitlines()}


def test_array_sweep_status_failure_and_resubmission(slurm_cluster, shared_cache: Path, tmp_path: Path,
                                                     capsys) -> None:
    out = tmp_path / "out"
    methods = ["supervised", {"name": "fixmatch", "args": {"threshold": 0.5}}]
    spec = _spec(tmp_path / "six.yaml", out, shared_cache, methods, [0, 1, 2], {"iterations": 4, "eval_every": 2})
    assert main(["sweep", str(spec), "--executor", "slurm", "--wait"]) == 0
    assert "submitted 6 runs as job(s)" in capsys.readouterr().out
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert len(records) == 6
    # each single-task job uses the one CPU it was given, and is not set up as a distributed run
    assert {(r["host"]["torch_threads"], r["distributed"]["type"], r["world_size"]) for r in records} == {(1, "NO", 1)}
    # ... with FERBench's wait policy, set in the job before torch loaded; the thread count this process exported
    # to the jobs (its own, from conftest) gave way to the job's CPU
    assert os.environ["OMP_NUM_THREADS"] == str(default_threads())
    assert all(r["host"]["openmp"] == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": None,
                                       "GOMP_SPINCOUNT": str(SPIN_COUNT), "read_at_load": True,
                                       "set_by": {"OMP_NUM_THREADS": "ferbench", "GOMP_SPINCOUNT": "ferbench"}}
               for r in records)
    ids = set(_job_ids(out).values())
    assert len({i.split("_")[0] for i in ids}) == 1 and len(ids) == 6  # one array of 6 tasks
    # a run that fails at run time (the loss diverges), in the same folder
    bad = _spec(tmp_path / "bad.yaml", out, shared_cache, [{"name": "supervised", "config": {"optim": {"lr": 1e30}}}],
                [7], {"iterations": 4, "eval_every": 2})
    assert main(["sweep", str(bad), "--executor", "slurm", "--wait"]) == 1
    assert "loss became" in capsys.readouterr().err
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.strip().splitlines()[-1] == "6 done, 0 stale, 0 running, 0 requeued, 0 pending, 1 failed"
    assert "loss became" in text and "supervised_synthfer_fraction0.1_s7_" in text
    # resubmitting the first sweep finds every record: nothing is submitted
    assert main(["sweep", str(spec), "--executor", "slurm"]) == 0
    assert "6 already done, 0 already submitted and not over, 0 to submit" in capsys.readouterr().out
    assert len((out / "jobs.jsonl").read_text().splitlines()) == 7


def test_a_users_own_openmp_settings_reach_the_job(slurm_cluster, shared_cache: Path, tmp_path: Path) -> None:
    """OMP_WAIT_POLICY and OMP_NUM_THREADS exported where the sweep is submitted (sbatch passes them on) win over
    FERBench's policy and the job's CPU count; libgomp in the job prints what it read (OMP_DISPLAY_ENV)."""
    if default_threads() < 2:
        pytest.skip("needs 2 cores: the job is given 2 CPUs and the user asks for 1 thread")
    # the job is given 2 CPUs (FERBench would train it on 2 threads); the user's 1 must win (torch itself caps a
    # larger OMP_NUM_THREADS at the cores it finds, so a count below the job's CPUs is the one to test)
    out, threads = tmp_path / "out", "1"
    spec = _spec(tmp_path / "user.yaml", out, shared_cache, ["supervised"], [0], {"iterations": 2, "eval_every": 2})
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": threads, "OMP_DISPLAY_ENV": "VERBOSE",
           "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "bench.cli", "sweep", str(spec), "--executor", "slurm", "--wait",
                          "--cpus-per-task", "2"], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (record,) = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert record["host"]["torch_threads"] == int(threads)
    assert record["host"]["openmp"] == {"OMP_NUM_THREADS": threads, "OMP_WAIT_POLICY": "PASSIVE",
                                        "GOMP_SPINCOUNT": None, "read_at_load": True,
                                        "set_by": {"OMP_NUM_THREADS": "user", "OMP_WAIT_POLICY": "user"}}
    logs = "".join(p.read_text() for p in (out / "logs").rglob("*.err"))
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in logs and "GOMP_SPINCOUNT = '0'" in logs
    assert f"OMP_NUM_THREADS = '{threads}'" in logs


def _interrupted_equals_uninterrupted(tmp_path: Path, cache: Path, interrupt) -> dict:
    """Submit one run twice (two output folders, same run id): interrupt one with `interrupt(job_id)` once
    it has a checkpoint; both must end with one record each and equal metrics."""
    # long enough that the interruption lands mid-run: a single-thread job runs these tiny steps in ~20 ms
    train = {"iterations": 400, "eval_every": 50, "checkpoint_every": 50}
    outs = {k: tmp_path / k for k in ("plain", "interrupted")}
    for k, out in outs.items():
        spec = _spec(tmp_path / f"{k}.yaml", out, cache, ["fixmatch"], [0], train)
        assert main(["sweep", str(spec), "--executor", "slurm"]) == 0
    rid, job_id = next(iter(_job_ids(outs["interrupted"]).items()))
    checkpoint = outs["interrupted"] / "runs" / rid / "checkpoint"
    _wait(checkpoint.is_dir, 240, "the first checkpoint", poll=0.2)
    interrupt(job_id)

    seen: list[str] = []
    released: list[bool] = []

    def restarted() -> bool:
        state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"], capture_output=True,
                               text=True).stdout.strip()
        if not seen or seen[-1] != state:
            seen.append(state)
        # SLURM holds a requeued job back ~2 minutes (BeginTime) while the old credential is revoked. Release
        # it once, a few seconds on: slurmd compares whole seconds and kills a job relaunched in the second
        # its credential was revoked ("Job credential revoked"), so StartTime=now can lose the job.
        if "PENDING" in state and not released:
            res = subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now+3"], capture_output=True)
            if res.returncode == 0:
                released.append(True)
        return "RUNNING" in state and checkpoint.is_dir() or (outs["interrupted"] / "records").is_dir()

    time.sleep(2)
    try:
        _wait(restarted, 120, "the requeued job to run again")
    except AssertionError as e:
        raise AssertionError(f"{e}; squeue states seen: {seen}") from None
    records = {k: _wait(lambda o=o: list((o / "records").glob("*.json")), 300, f"the {k} record")
               for k, o in outs.items()}
    assert all(len(r) == 1 for r in records.values())
    a, b = (json.loads(records[k][0].read_text()) for k in ("plain", "interrupted"))
    assert a["run_id"] == b["run_id"] == rid
    assert b["metrics"] == a["metrics"] and b["history"] == a["history"]
    # the requeued job resumed at a checkpoint's step, not at 0, and ran the rest
    assert a["sessions"] == [{"start_step": 0, "steps": 400}]
    first, second = b["sessions"]
    assert second["start_step"] > 0 and first == {"start_step": 0, "steps": second["start_step"]}
    assert second["start_step"] + second["steps"] == 400
    def attempts() -> list[str] | None:  # every start of the job, once the last one has ended
        lines = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-o", "JobID,State", "-j", job_id],
                               capture_output=True, text=True).stdout.strip().splitlines()
        return lines if lines and lines[-1].endswith(("|COMPLETED", "|FAILED", "|CANCELLED")) else None

    starts = _wait(attempts, 120, "the job to end")
    return {"sacct": starts, "record": b, "out": outs["interrupted"]}


def test_scontrol_requeue_resumes_from_the_checkpoint(slurm_cluster, shared_cache: Path, tmp_path: Path) -> None:
    res = _interrupted_equals_uninterrupted(
        tmp_path, shared_cache, lambda job: subprocess.run(["scontrol", "requeue", job], check=True))
    assert [ln.split("|")[1] for ln in res["sacct"]] == ["REQUEUED", "COMPLETED"]


def test_preemption_signal_saves_and_requeues(slurm_cluster, shared_cache: Path, tmp_path: Path) -> None:
    res = _interrupted_equals_uninterrupted(
        tmp_path, shared_cache, lambda job: subprocess.run(["scancel", "--signal=USR2", job], check=True))
    logs = "".join(p.read_text() for p in (res["out"] / "logs").rglob("*.err"))
    assert "Caught signal SIGUSR2" in logs and "this job is preempted" in logs
    assert [ln.split("|")[1] for ln in res["sacct"]] == ["REQUEUED", "COMPLETED"]


def test_a_bad_last_cell_submits_nothing_to_the_cluster(slurm_cluster, tmp_path: Path, capsys) -> None:
    """Every cell is checked before data is prepared or anything is submitted: the sweep's last cell has a
    mistyped method argument, so no job is queued and no submitit folder, log or cache is made."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    methods = ["supervised", "fixmatch", {"name": "flexmatch", "args": {"threshold": "high"}}]
    spec = _spec(tmp_path / "lastbad.yaml", out, cache, methods, [0, 1], {"iterations": 2})
    assert main(["sweep", str(spec), "--executor", "slurm", "--wait"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines == ["ferbench: error: sweep lastbad, cell flexmatch budget=0.1 seed=0: method 'flexmatch': "
                     "method_args.threshold='high': expected a number in [0, 1]"]
    queued = subprocess.run(["squeue", "-h", "-n", "ferbench-lastbad", "-o", "%i"], capture_output=True, text=True,
                            check=True, timeout=60).stdout
    assert queued.strip() == ""
    assert not out.exists() and not cache.exists()  # no submitit folder, submission log, status or prepared data


def test_an_output_dir_override_moves_everything_the_sweep_writes(slurm_cluster, shared_cache: Path, tmp_path: Path,
                                                                  capsys) -> None:
    spec_out, moved = tmp_path / "spec_out", tmp_path / "moved"
    spec = _spec(tmp_path / "moving.yaml", spec_out, shared_cache, ["supervised"], [0, 1, 2],
                 {"iterations": 30, "eval_every": 30})
    try:
        assert main(["sweep", str(spec), "--executor", "slurm", "--array-parallelism", "1",
                     f"output_dir={moved}"]) == 0
        assert f"follow with: ferbench status {moved}" in capsys.readouterr().out
        assert main(["status", str(moved)]) == 0
        last = capsys.readouterr().out.strip().splitlines()[-1]
        counts = dict(reversed(part.split(" ", 1)) for part in last.split(", "))
        assert sum(int(n) for n in counts.values()) == 3 and int(counts["pending"]) >= 1, last
        assert (moved / "jobs.jsonl").is_file() and (moved / "logs").is_dir()
        assert not spec_out.exists()  # nothing under the spec's own folder
    finally:
        subprocess.run(["scancel", "-n", "ferbench-moving"], capture_output=True, timeout=60)
        _wait(lambda: not subprocess.run(["squeue", "-h", "-n", "ferbench-moving"], capture_output=True,
                                         text=True).stdout.strip(), 60, "the cancelled jobs to leave the queue")


def test_status_needs_a_sweep_folder(tmp_path: Path, capsys) -> None:
    assert main(["status", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'}: sweep output folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["status", str(tmp_path / "empty")]) == 2


def test_cluster_flags_are_checked_before_submitting(tmp_path: Path, shared_cache: Path, capsys) -> None:
    spec = _spec(tmp_path / "s.yaml", tmp_path / "out", shared_cache, ["supervised"], [0], {"iterations": 2})
    assert main(["sweep", str(spec), "--executor", "slurm", "--cpus-per-task", "0"]) == 2
    assert "sweep --cpus-per-task 0: expected an integer in [1, inf)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["sweep", str(spec), "--executor", "slurm", "--dry-run", "--partition", "gpu"]) == 0
    assert "1 to submit (slurm)" in capsys.readouterr().out


def test_local_executor_runs_subprocesses_with_the_same_status_files(shared_cache: Path, tmp_path: Path,
                                                                     capsys) -> None:
    out = tmp_path / "out"
    spec = _spec(tmp_path / "loc.yaml", out, shared_cache, ["supervised"], [0, 1], {"iterations": 3, "eval_every": 3})
    assert main(["sweep", str(spec), "--executor", "local", "--wait", "--array-parallelism", "2"]) == 0
    assert len(list((out / "records").glob("*.json"))) == 2
    statuses = [json.loads(p.read_text()) for p in (out / "status").glob("*.json")]
    assert sorted(s["state"] for s in statuses) == ["done", "done"]
    assert all(s["logs"]["stderr"].endswith("_0_log.err") and s["job_id"] for s in statuses)
    assert main(["status", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "2 done, 0 stale, 0 running, 0 requeued, 0 pending, 0 failed"


def test_concurrent_record_writers_never_overwrite_or_corrupt(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from bench.results.record import write_json_atomic

    path = tmp_path / "records" / "run.json"
    with ThreadPoolExecutor(8) as pool:
        wrote = list(pool.map(lambda i: write_json_atomic(path, {"writer": i, "pad": "x" * 100_000},
                                                          overwrite=False), range(32)))
    assert sum(wrote) == 1  # exactly one writer created the record; every other one left it alone
    assert json.loads(path.read_text())["writer"] == wrote.index(True)
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]  # no temp files left behind


def test_packed_sweep_runs_two_runs_per_array_task(slurm_cluster, shared_cache: Path, tmp_path: Path,
                                                   capsys) -> None:
    out = tmp_path / "out"
    spec = _spec(tmp_path / "packed.yaml", out, shared_cache, ["supervised"], [0, 1, 2, 3],
                 {"iterations": 3, "eval_every": 3})
    assert main(["sweep", str(spec), "--executor", "slurm", "--wait", "--runs-per-gpu", "2"]) == 0
    assert "submitted 4 runs as job(s)" in capsys.readouterr().out
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert sorted(r["seed"] for r in records) == [0, 1, 2, 3]
    jobs = set(_job_ids(out).values())
    assert len(jobs) == 2 and len({j.split("_")[0] for j in jobs}) == 1  # one array of 2 tasks, 2 runs each
    statuses = [json.loads(p.read_text()) for p in (out / "status").glob("*.json")]
    assert sorted(s["job_id"] for s in statuses) == sorted([*jobs, *jobs])
