"""Experiment trackers (train.trackers): one tracker run per FERBench run across interruptions, every logged value
exactly once, the run's identity, results and record in the tracker, and a tracker that fails costing nothing but a
warning line. Against a real MLflow tracking server (SQLite store, local artifacts) and W&B in offline mode, read
back from its run folders; the runs are real `ferbench` processes."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require, tiny_overrides

from bench.engine.trackers import TrackerRun

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MLflowServer:
    """`mlflow server` on localhost: a SQLite backend and a local artifact store under `root`."""

    def __init__(self, root: Path) -> None:
        require("mlflow", "the MLflow tests run a real tracking server (pip install -e '.[mlflow]')")
        root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = (root / "server.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"], stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return
            except OSError:
                assert self.proc.poll() is None, (root / "server.log").read_text()[-3000:]
                time.sleep(0.5)
        self.stop()
        raise AssertionError("mlflow server did not answer /health within 180 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(timeout=60)
        self.log.close()  # closing twice is harmless: the stop test and the fixture both stop it

    def client(self):  # noqa: ANN201 - an MlflowClient
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLflowServer]:
    server = MLflowServer(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


def ferbench(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=cwd, env={**os.environ, **env},
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr[-4000:]
    return res


def tiny_run(cache: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--quiet", *tiny_overrides(cache, out, method="fixmatch"), *extra]


def _record(out: Path) -> dict:
    (path,) = (out / "records").glob("*.json")
    return json.loads(path.read_text())


def _same_result(a: dict, b: dict) -> None:
    """Two records of one run agree in everything a tracker could have touched: id, numbers, curves, weights."""
    a, b = json.loads(json.dumps(a)), json.loads(json.dumps(b))  # as written: tuples are lists
    assert a["run_id"] == b["run_id"]
    for key in ("metrics", "history", "curves", "iterations", "fingerprint", "split"):
        assert a[key] == b[key], key
    assert a["artifacts"]["final_model"]["sha256"] == b["artifacts"]["final_model"]["sha256"]


# ---- MLflow -------------------------------------------------------------------------------------------------------

@pytest.mark.subprocess
def test_an_interrupted_run_is_one_mlflow_run_with_every_step_once(mlflow_server: MLflowServer, shared_cache: Path,
                                                                   tmp_path: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri, "MLFLOW_EXPERIMENT_NAME": "interrupted"}
    out = tmp_path / "out"
    ferbench(tiny_run(shared_cache, out, "train.trackers=[mlflow]", "train.stop_after=6"), env, tmp_path)
    ferbench(tiny_run(shared_cache, out, "train.trackers=[mlflow]"), env, tmp_path)
    record = _record(out)
    assert record["trackers"] == {"mlflow": "received"}
    client = mlflow_server.client()
    (experiment,) = [e for e in client.search_experiments() if e.name == "interrupted"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == record["run_id"] and run.info.status == "FINISHED"
    assert run.data.tags["ferbench.run_id"] == record["run_id"]
    params = run.data.params
    assert params["ferbench.run_id"] == record["run_id"]
    assert params["ferbench.fingerprint"] == record["fingerprint"]["digest"]
    assert params["ferbench.split_manifest_sha256"] == record["split"]["manifest_sha256"]
    assert params["config.method"] == "fixmatch" and params["config.train.iterations"] == "12"
    assert run.data.tags["git_commit"] and run.data.tags["host"]
    for key, field, steps in (("train/loss", "loss", [2, 4, 6, 8, 10, 12]), ("test/accuracy", "accuracy", [4, 8, 12])):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == steps, key  # once each, across the interruption at 6
        source = record["curves"] if key.startswith("train") else record["history"]
        assert [m.value for m in history] == pytest.approx([e[field] for e in source])
    assert run.data.metrics["final/accuracy"] == pytest.approx(record["metrics"]["final"]["accuracy"])
    assert f"final/recall/{record['class_names'][0]}" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confusion.png", f"{record['run_id']}.json"} <= artifacts
    kept = Path(client.download_artifacts(run.info.run_id, f"{record['run_id']}.json", str(tmp_path / "dl")))
    assert json.loads(kept.read_text()) == record

    # the leaderboard of those records, logged as a run of its own
    ferbench(["leaderboard", str(out / "records"), "-o", str(tmp_path / "boards"), "--format", "md,csv",
              "--log-to", "mlflow"], {**env, "MLFLOW_EXPERIMENT_NAME": "boards"}, tmp_path)
    (boards,) = [e for e in client.search_experiments() if e.name == "boards"]
    (board_run,) = client.search_runs([boards.experiment_id])
    assert board_run.info.run_name == "leaderboard-out"
    logged = {a.path for a in client.list_artifacts(board_run.info.run_id)}
    assert {"synthfer.md", "synthfer.csv", "synthfer.png"} <= logged


@pytest.mark.subprocess
def test_an_mlflow_server_that_stops_mid_run_costs_one_warning_and_nothing_else(mlflow_server: MLflowServer,
                                                                                shared_cache: Path,
                                                                                tmp_path: Path) -> None:
    """The module's last use of its server: it stops here, while the run is half done."""
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    try:
        ferbench(tiny_run(shared_cache, tmp_path / "out", "train.trackers=[mlflow]", "train.stop_after=6"), env,
                 tmp_path)
    finally:
        mlflow_server.stop()
    resumed = ferbench(tiny_run(shared_cache, tmp_path / "out", "train.trackers=[mlflow]"), env, tmp_path)
    warnings = [ln for ln in resumed.stderr.splitlines() if ln.startswith("ferbench: warning:")]
    assert len(warnings) == 1 and "tracker 'mlflow' failed at start" in warnings[0], resumed.stderr[-3000:]
    with_tracker = _record(tmp_path / "out")
    assert with_tracker["trackers"]["mlflow"].startswith("failed at start: ")
    ferbench(tiny_run(shared_cache, tmp_path / "plain", "train.trackers=[]"), {}, tmp_path)
    plain = _record(tmp_path / "plain")
    assert plain["trackers"] == {}
    _same_result(with_tracker, plain)


# ---- W&B, offline ---------------------------------------------------------------------------------------------------

def wandb_records(path: Path) -> list:
    """The records of a W&B run file (`run-<id>.wandb`): W&B's header, then LevelDB-log blocks of protobufs."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block, pos, parts, out = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B", path
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:  # a whole record; 2, 3, 4: its first, middle and last fragments
            out.append(chunk)
        elif kind in (2, 3):
            parts += chunk
        elif kind == 4:
            out.append(parts + chunk)
            parts = b""
    return [Record.FromString(c) for c in out]


def _items(items) -> dict:  # noqa: ANN001 - W&B's protobuf items (key or nested key, JSON value)
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


def wandb_runs(run_dir: Path) -> list[dict]:
    """Each offline session's run id, group, config, history rows and summary, from its folder."""
    sessions = []
    for folder in sorted((run_dir / "wandb").glob("offline-run-*")):
        found = {"folder": folder, "history": [], "config": {}, "summary": {}}
        for rec in wandb_records(next(folder.glob("run-*.wandb"))):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                found["id"], found["group"] = rec.run.run_id, rec.run.run_group
            elif kind == "history":
                found["history"].append(_items(rec.history.item))
            elif kind == "config":
                found["config"] |= _items(rec.config.update)
            elif kind == "summary":
                found["summary"] |= _items(rec.summary.update)
        sessions.append(found)
    return sessions


WANDB_ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}


@pytest.mark.subprocess
def test_an_interrupted_run_is_one_wandb_run_with_every_step_once(shared_cache: Path, tmp_path: Path) -> None:
    require("wandb", "the W&B tests log offline (pip install -e '.[wandb]')")
    env = {**WANDB_ENV, "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}
    out = tmp_path / "out"
    ferbench(tiny_run(shared_cache, out, "train.trackers=[wandb]", "train.stop_after=6"), env, tmp_path)
    ferbench(tiny_run(shared_cache, out, "train.trackers=[wandb]"), env, tmp_path)
    record = _record(out)
    assert record["trackers"] == {"wandb": "received"}
    sessions = wandb_runs(out / "runs" / record["run_id"])
    assert len(sessions) == 2  # `wandb sync` makes them one run: one id, resumed
    assert {s["id"] for s in sessions} == {TrackerRun(record["run_id"], out, None, None).wandb_id}
    steps = [row["_step"] for s in sessions for row in s["history"] if "train/loss" in row]
    assert steps == [2, 4, 6, 8, 10, 12]  # once each, across the interruption at 6
    accuracy = [row["test/accuracy"] for s in sessions for row in s["history"] if "test/accuracy" in row]
    assert accuracy == pytest.approx([h["accuracy"] for h in record["history"]])
    config = sessions[0]["config"]
    assert config["ferbench.run_id"] == record["run_id"]
    assert config["ferbench.fingerprint"] == record["fingerprint"]["digest"]
    assert sessions[-1]["config"]["git_commit"]
    assert sessions[-1]["summary"]["final/accuracy"] == pytest.approx(record["metrics"]["final"]["accuracy"])
    kept = sessions[-1]["folder"] / "files" / f"{record['run_id']}.json"
    assert json.loads(kept.read_text()) == record
    assert list((sessions[-1]["folder"] / "files" / "media").rglob("*.png"))  # the confusion figure


@pytest.mark.subprocess
def test_a_sweep_of_three_runs_is_three_wandb_runs_in_one_group(shared_cache: Path, tmp_path: Path) -> None:
    require("wandb", "the W&B tests log offline (pip install -e '.[wandb]')")
    spec = tmp_path / "grouped.yaml"
    base = {k: v for k, v in (o.split("=", 1) for o in tiny_overrides(shared_cache, tmp_path / "x", method="x"))
            if k not in ("output_dir", "method")}
    spec.write_text("name: grouped\noutput_dir: " + str(tmp_path / "sweep") + "\nmethods: [supervised]\n"
                    "budgets: [0.1]\nseeds: [0, 1, 2]\n")
    overrides = [f"{k}={v}" for k, v in base.items() if k != "data.budget"] + ["train.trackers=[wandb]"]
    ferbench(["sweep", str(spec), *overrides], {**WANDB_ENV, "WANDB_CONFIG_DIR": str(tmp_path / "cfg")}, tmp_path)
    runs = [s for d in sorted((tmp_path / "sweep" / "runs").iterdir()) for s in wandb_runs(d)]
    assert len(runs) == 3 and len({r["id"] for r in runs}) == 3
    assert {r["group"] for r in runs} == {"grouped"}


# ---- before any work, and what a tracker may not change ------------------------------------------------------------

def test_a_tracker_that_is_not_installed_is_one_line_before_any_work(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path, capsys) -> None:
    from bench import cli
    from bench.engine import trackers

    monkeypatch.setitem(trackers.PACKAGES, "wandb", ("ferbench_no_such_package", "pip install -e '.[wandb]'"))
    code = cli.main(["run", "method=fixmatch", "train.trackers=[tensorboard, wandb]", f"output_dir={tmp_path / 'o'}",
                     f"data.cache_dir={tmp_path / 'cache'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["ferbench: error: train.trackers: 'wandb' is not installed "
                                 "(pip install -e '.[wandb]')"]
    assert not (tmp_path / "o").exists() and not (tmp_path / "cache").exists()


def test_a_tracker_that_raises_mid_run_is_one_warning_and_the_run_finishes(monkeypatch: pytest.MonkeyPatch,
                                                                            shared_cache: Path, tmp_path: Path,
                                                                            capsys) -> None:
    from accelerate.tracking import TensorBoardTracker

    from bench.config import build_config
    from bench.engine.trainer import train

    calls = []

    def broken_log(self, values, step=None, **kwargs):  # the tracker's package fails at its third log
        calls.append(step)
        if len(calls) == 3:
            raise RuntimeError("disk quota exceeded")

    monkeypatch.setattr(TensorBoardTracker, "log", broken_log)
    record = train(build_config(None, tiny_overrides(shared_cache, tmp_path / "tb", method="fixmatch")))
    # the first checkpoint (4) hands over the logs of steps 2 and 4 and the evaluation at 4: the third call fails
    assert record["trackers"]["tensorboard"] == "failed at step 4: RuntimeError: disk quota exceeded"
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("ferbench: warning:")]
    assert warnings == ["ferbench: warning: tracker 'tensorboard' failed at step 4: RuntimeError: disk quota "
                        "exceeded; going on without it"]
    assert calls == [2, 4, 4]  # dropped at its failure: never called again
    plain = train(build_config(None, tiny_overrides(shared_cache, tmp_path / "plain", method="fixmatch",
                                                    **{"train.trackers": "[]"})))
    _same_result(record, plain)


def test_a_tracker_run_is_named_by_the_run_id() -> None:
    run = TrackerRun("fixmatch_rafdb_fraction0.1_s0_abc", Path("x"), None, "sweep")
    assert run.wandb_id == "fixmatch_rafdb_fraction0-1_s0_abc"
    assert TrackerRun("m" * 80, Path("x"), None, None).wandb_id == "m" * 64
    assert run.project_for("FERBENCH_TEST_UNSET_VARIABLE") == "sweep"
    assert TrackerRun("r", Path("x"), "mine", "sweep").project_for("FERBENCH_TEST_UNSET_VARIABLE") == "mine"


def test_a_run_that_fails_leaves_no_tracker_run_open_for_the_next(monkeypatch: pytest.MonkeyPatch, shared_cache: Path,
                                                                  tmp_path: Path) -> None:
    """An inline sweep trains its runs in one process, where MLflow keeps one active run: a run that raises must
    close its tracker run, or the next run's tracker could not start."""
    mlflow = require("mlflow", "the MLflow tests need mlflow (pip install -e '.[mlflow]')")
    from bench.config import build_config
    from bench.engine.trainer import train
    from methods.fixmatch import FixMatch

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # MLflow keeps a SQLite store's artifacts under ./mlruns
    original, calls = FixMatch.training_step, []

    def failing_step(self, model, batch, ctx):
        calls.append(ctx.step)
        if len(calls) == 5:
            raise RuntimeError("a bug in the method")
        return original(self, model, batch, ctx)

    monkeypatch.setattr(FixMatch, "training_step", failing_step)
    with pytest.raises(RuntimeError, match="a bug in the method"):
        train(build_config(None, tiny_overrides(shared_cache, tmp_path / "a", method="fixmatch",
                                                **{"train.trackers": "[mlflow]"})))
    assert mlflow.active_run() is None
    monkeypatch.setattr(FixMatch, "training_step", original)
    record = train(build_config(None, tiny_overrides(shared_cache, tmp_path / "b", method="fixmatch",
                                                     **{"train.trackers": "[mlflow]", "seed": 1})))
    assert record["trackers"] == {"mlflow": "received"}
