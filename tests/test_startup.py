"""Threads and the OpenMP wait policy (bench/startup.py): what the OpenMP runtime of each process that trains read.

libgomp prints the settings it read when it is loaded if OMP_DISPLAY_ENV=VERBOSE: the tests read them from the real
processes (a run, the launcher entry point, submitit jobs, pack members) and from the run's record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_overrides

from bench.cli import main
from bench.startup import MARKER, SPIN_COUNT, VARIABLES, default_threads, physical_cores, users_own

pytestmark = pytest.mark.subprocess

REPO = Path(__file__).resolve().parents[1]
CORES = default_threads()
SHORT = {"train.iterations": 2, "train.eval_every": 2, "train.checkpoint_every": 2, "train.log_every": 2}


def _env(inherit: bool = False, **extra: str) -> dict[str, str]:
    """A user's shell (no OpenMP variables, nothing FERBench set) or, with `inherit`, this FERBench process's
    environment; libgomp asked to print what it reads; this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if inherit or k not in (*VARIABLES, MARKER)}
    return {**env, "PYTHONPATH": str(REPO), "OMP_DISPLAY_ENV": "VERBOSE", **extra}


def _displayed(stderr: str) -> list[dict[str, str]]:
    """Each OMP_DISPLAY_ENV block printed (one per process that loaded libgomp): NAME -> value."""
    blocks, current = [], None
    for line in stderr.splitlines():
        if "OPENMP DISPLAY ENVIRONMENT BEGIN" in line:
            current = {}
        elif "OPENMP DISPLAY ENVIRONMENT END" in line and current is not None:
            blocks.append(current)
            current = None
        elif current is not None and " = " in line:
            name, _, value = line.strip().partition(" = ")
            current[name] = value.strip("'")
    return blocks


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _record(out: Path) -> dict:
    (path,) = (out / "records").glob("*.json")
    return json.loads(path.read_text())


def test_a_run_trains_with_a_bounded_spin_on_its_cores(shared_cache: Path, tmp_path: Path) -> None:
    # what libgomp does on its own, which FERBench replaces: spin 300,000 times before sleeping
    plain = _run(["-c", "import torch"], _env())
    assert [(d["GOMP_SPINCOUNT"], d["OMP_WAIT_POLICY"]) for d in _displayed(plain.stderr)] == [("300000", "PASSIVE")]
    out = tmp_path / "out"
    res = _run(["-m", "bench.cli", "run", "--quiet", *tiny_overrides(shared_cache, out, method="fixmatch", **SHORT)],
               _env())
    shown = _displayed(res.stderr)
    assert len(shown) == 1  # the process that trains loaded the runtime once, with FERBench's settings
    assert (shown[0]["GOMP_SPINCOUNT"], shown[0]["OMP_NUM_THREADS"]) == (str(SPIN_COUNT), str(CORES))
    host = _record(out)["host"]
    assert host["torch_threads"] == CORES
    assert host["openmp"] == {"OMP_NUM_THREADS": str(CORES), "OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": str(SPIN_COUNT),
                              "set_by": {"OMP_NUM_THREADS": "ferbench", "GOMP_SPINCOUNT": "ferbench"},
                              "read_at_load": True}


@pytest.mark.parametrize("inherit, user, spins, threads", [
    (False, {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}, "0", "1"),
    (False, {"GOMP_SPINCOUNT": "1000"}, "1000", str(CORES)),
    # started by a FERBench process (its GOMP_SPINCOUNT inherited) with the user's policy: FERBench's is dropped,
    # or libgomp would take its spin count over the policy's
    (True, {"OMP_WAIT_POLICY": "PASSIVE"}, "0", str(CORES)),
], ids=["passive-1-thread", "spincount", "passive-under-ferbench"])
def test_the_users_own_settings_win(shared_cache: Path, tmp_path: Path, inherit: bool, user: dict[str, str],
                                    spins: str, threads: str) -> None:
    assert (MARKER in os.environ) is True  # the suite's own processes run with FERBench's settings (conftest)
    out = tmp_path / "out"
    res = _run(["-m", "bench.train", "--quiet", *tiny_overrides(shared_cache, out, **SHORT)],  # the launchers' entry
               _env(inherit, **user))
    (shown,) = _displayed(res.stderr)
    assert (shown["GOMP_SPINCOUNT"], shown["OMP_NUM_THREADS"]) == (spins, threads)
    host = _record(out)["host"]
    assert host["torch_threads"] == int(threads)
    assert {k: host["openmp"][k] for k in user} == user
    assert {k: host["openmp"]["set_by"][k] for k in user} == dict.fromkeys(user, "user")
    assert host["openmp"]["read_at_load"] is True


def test_jobs_and_pack_members_train_on_their_share_with_the_policy(shared_cache: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """submitit's local executor: real job processes started from this one (OMP_NUM_THREADS=CORES from conftest,
    which each job decides again for the CPUs it was given): a 2-CPU job of 2 packed runs gives each 1 thread."""
    monkeypatch.setenv("OMP_DISPLAY_ENV", "VERBOSE")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    out = tmp_path / "out"
    spec = tmp_path / "pack.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "pack", "output_dir": str(out), "methods": ["supervised"], "budgets": [0.1], "seeds": [0, 1],
        "base": {"data": {"image_size": 32, "synthfer": {"n_train": 280, "n_test": 140, "seed": 0, "size": 32},
                          "cache_dir": str(shared_cache)}, "model": {"backbone": "ferbench_cnn_tiny"},
                 "train": {"batch_size": 8, "mu": 1, "iterations": 2, "eval_every": 2}},
        "cluster": {"cpus_per_task": 2}, "runs_per_gpu": 2}))
    assert main(["sweep", str(spec), "--executor", "local", "--wait"]) == 0
    hosts = [json.loads(p.read_text())["host"] for p in (out / "records").glob("*.json")]
    assert len(hosts) == 2
    for host in hosts:
        assert host["torch_threads"] == 1
        assert host["openmp"] == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": str(SPIN_COUNT),
                                  "set_by": {"OMP_NUM_THREADS": "ferbench", "GOMP_SPINCOUNT": "ferbench"},
                                  "read_at_load": True}
    logs = "".join(p.read_text() for p in (out / "logs").rglob("*.err"))
    members = [d for d in _displayed(logs) if d["OMP_NUM_THREADS"] == "1"]
    assert len(members) == 2 and {d["GOMP_SPINCOUNT"] for d in members} == {str(SPIN_COUNT)}


def test_a_gpu_host_keeps_its_previous_settings(tmp_path: Path) -> None:
    """No wait policy and torch's own thread count where a GPU may train (not measured there); a job still gets its
    CPUs. Values set by a FERBench parent on a CPU host are taken back; a GPU hidden by CUDA_VISIBLE_DEVICES is no
    GPU."""
    probe = ("import json, os, bench.startup as s; s.gpu_host = lambda: True; s.usable_cpus = lambda: 8; "
             "a = s.configure(); "
             "b = s.configure(3); print(json.dumps([a, b, {k: os.environ.get(k) for k in s.VARIABLES}]))")
    res = _run(["-c", probe], _env(inherit=True))
    cli, job, env = json.loads(res.stdout)
    assert {k: cli[k] for k in VARIABLES} == dict.fromkeys(VARIABLES) and cli["set_by"] == {}
    assert {k: job[k] for k in VARIABLES} == {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}
    assert env == {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}
    hidden = "import json, bench.startup as s; print(json.dumps(s.gpu_host()))"
    assert _run(["-c", hidden], _env(CUDA_VISIBLE_DEVICES="")).stdout.strip() == "false"


def test_threads_count_cores_not_smt_siblings(tmp_path: Path) -> None:
    siblings = {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3", 4: "4", 5: "5"}  # 2 cores with 2 threads each, 2 without
    for cpu, text in siblings.items():
        (tmp_path / f"cpu{cpu}" / "topology").mkdir(parents=True)
        (tmp_path / f"cpu{cpu}" / "topology" / "thread_siblings_list").write_text(text + "\n")
    assert physical_cores({0, 1, 2, 3}, tmp_path) == 2
    assert physical_cores({0, 2, 4, 5}, tmp_path) == 3
    assert physical_cores({0, 7}, tmp_path) == 2  # no topology for cpu7: every CPU counted


class _SeenSettings(torch.utils.data.Dataset):
    """Each item: the OpenMP variables of the process that produced it."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> dict[str, str | None]:
        return {name: os.environ.get(name) for name in VARIABLES}


def _seen_in_pool(_: int) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in VARIABLES}


def test_workers_and_preparation_processes_inherit_the_policy() -> None:
    """DataLoader workers (the CPU data path) and the forkserver pools that prepare caches run with the
    settings this process decided (conftest called `configure()`, as the CLI does)."""
    import multiprocessing

    if any(map(users_own, VARIABLES)):
        pytest.skip("your own OpenMP settings are in the environment; they, not FERBench's, reach every process")
    expected = {"OMP_NUM_THREADS": str(CORES), "OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": str(SPIN_COUNT)}
    assert {name: os.environ.get(name) for name in VARIABLES} == expected
    loader = torch.utils.data.DataLoader(_SeenSettings(), batch_size=None, num_workers=1)
    assert list(loader) == [expected, expected]
    with multiprocessing.get_context("forkserver").Pool(1) as pool:
        assert pool.map(_seen_in_pool, [0]) == [expected]


def test_the_wait_policy_changes_how_fast_not_what(shared_cache: Path, tmp_path: Path) -> None:
    """Two runs of one config on the same threads, one sleeping at once (GOMP_SPINCOUNT=0) and one spinning long
    (libgomp's default): the same final weights, byte for byte, and the same metrics."""
    if CORES < 2:
        pytest.skip("one thread never waits for another")
    records = []
    for spins in ("0", "300000"):
        out = tmp_path / spins
        args = tiny_overrides(shared_cache, out, method="fixmatch", **{**SHORT, "train.iterations": 6})
        _run(["-m", "bench.cli", "run", "--quiet", *args], _env(GOMP_SPINCOUNT=spins))
        records.append(_record(out))
    assert [r["host"]["openmp"]["GOMP_SPINCOUNT"] for r in records] == ["0", "300000"]
    assert records[0]["host"]["torch_threads"] == records[1]["host"]["torch_threads"] == CORES
    assert records[0]["artifacts"]["final_model"]["sha256"] == records[1]["artifacts"]["final_model"]["sha256"]
    assert records[0]["metrics"] == records[1]["metrics"]
