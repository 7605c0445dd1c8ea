"""Experiment trackers (`train.trackers`): TensorBoard, Weights & Biases and MLflow, through Accelerate's own
tracker classes, held to what FERBench promises of everything it writes:

- **One tracker run per FERBench run.** The tracker run is named by the run id and found again when the run
  resumes (W&B: `id` derived from the run id with `resume="allow"`; MLflow: the run tagged `ferbench.run_id` in
  its experiment), so a run pre-empted and requeued three times is one tracker run whose steps continue.
- **Every logged value reaches a tracker once.** Logs wait in memory until the checkpoint that covers them is
  written (`release`), so a run killed between two checkpoints re-logs, once resumed, only what no tracker saw.
- **A tracker never costs a result.** Its first failure (a server that cannot be reached, a package that raises)
  is one warning line; the tracker is dropped and the run trains on. The record says which trackers received it
  (`trackers`). Only the main process logs, and nothing a tracker does enters the run id or the numerics.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.tracking import GeneralTracker, MLflowTracker, TensorBoardTracker, WandBTracker

from bench.errors import FERBenchError

#: the package each tracker imports, and how a user installs it
PACKAGES = {"tensorboard": ("tensorboard", "pip install tensorboard"),
            "wandb": ("wandb", "pip install -e '.[wandb]'"),
            "mlflow": ("mlflow", "pip install -e '.[mlflow]'")}
#: what a tracker run is tagged with, so a resumed run finds it
RUN_TAG = "ferbench.run_id"
RECEIVED = "received"


def check_trackers(names: list[str]) -> None:
    """Each asked-for tracker's package is installed: otherwise one line, before any work."""
    for name in names:
        module, install = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise FERBenchError(f"train.trackers: {name!r} is not installed ({install})")


@dataclass(frozen=True)
class TrackerRun:
    """What names a run's tracker runs."""

    run_id: str
    run_dir: Path
    project: str | None  # train.tracker_project
    group: str | None  # train.tracker_group (a sweep's name)

    def project_for(self, env: str) -> str:
        """The W&B project / MLflow experiment: the tracker's own environment variable (which MLflow puts before any
        argument), else the config's, else the group (a sweep's name), else "ferbench"."""
        return os.environ.get(env) or self.project or self.group or "ferbench"

    @property
    def wandb_id(self) -> str:
        """W&B run ids take letters, digits, '-' and '_' (at most 64): the run id with anything else replaced."""
        return re.sub(r"[^A-Za-z0-9_-]", "-", self.run_id)[:64]


def contained(name: str, what: str, call: Callable[[], Any]) -> str | None:
    """Run `call()`; None when it worked, else what failed (also said in one warning line): a tracker's failure is
    the tracker's, never the run's."""
    try:
        call()
        return None
    except Exception as e:  # noqa: BLE001 - whatever a tracker's package raises
        why = f"failed at {what}: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
        print(f"ferbench: warning: tracker {name!r} {why}; going on without it", file=sys.stderr, flush=True)
        return why


def quick_mlflow_failures() -> None:
    """MLflow retries a request to a server it cannot reach for minutes by default; a run waits for each of its
    tracker's calls, so FERBench asks for 2 retries, 1 s apart, 20 s each, unless the user's environment says
    otherwise (MLflow's own variables)."""
    for var, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                       ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")):
        os.environ.setdefault(var, value)


def _mlflow_run_of(run: TrackerRun, experiment: str) -> str | None:
    """The MLflow run an earlier session of this FERBench run logged to, found by its tag."""
    import mlflow

    found = mlflow.search_runs(experiment_names=[experiment], filter_string=f"tags.`{RUN_TAG}` = '{run.run_id}'",
                               output_format="list", max_results=1)
    return found[0].info.run_id if found else None


def _tensorboard(run: TrackerRun) -> GeneralTracker:
    return TensorBoardTracker(run.run_id, run.run_dir / "tb")


def _wandb(run: TrackerRun) -> GeneralTracker:
    return WandBTracker(run.project_for("WANDB_PROJECT"), id=run.wandb_id, name=run.run_id, resume="allow",
                        group=run.group, dir=str(run.run_dir))


class _MLflow(MLflowTracker):
    """Accelerate's MLflow tracker, continuing the run an earlier session of this FERBench run started."""

    def __init__(self, run: TrackerRun) -> None:
        quick_mlflow_failures()
        super().__init__(experiment_name=run.project_for("MLFLOW_EXPERIMENT_NAME"), run_name=run.run_id,
                         tags={RUN_TAG: run.run_id})
        self._run = run

    def start(self) -> None:
        self.run_id = self.run_id or _mlflow_run_of(self._run, self.experiment_name)
        super().start()


#: how each tracker is made for a run
MAKERS: dict[str, Callable[[TrackerRun], GeneralTracker]] = {
    "tensorboard": _tensorboard, "wandb": _wandb, "mlflow": _MLflow}


class GuardedTracker(GeneralTracker):
    """One tracker behind FERBench's guard: its calls cannot raise (the first failure is one warning and drops
    it), and its logs wait until `release` (a checkpoint covering them is on disk)."""

    requires_logging_directory = False
    main_process_only = False  # it is only ever made on the main process (`make_trackers`)

    def __init__(self, name: str, inner: GeneralTracker) -> None:
        self.name, self.inner = name, inner
        super().__init__()
        self.status = RECEIVED
        self._pending: list[tuple[dict[str, Any], int | None]] = []

    @property
    def tracker(self) -> Any:
        return self.inner.tracker if self.status == RECEIVED else None

    def guarded(self, what: str, call: Callable[[], Any]) -> None:
        """`call()`, unless this tracker already failed; its failure is one warning line, and drops the tracker."""
        if self.status == RECEIVED:
            self.status = contained(self.name, what, call) or RECEIVED

    def start(self) -> None:
        self.guarded("start", self.inner.start)

    def store_init_configuration(self, values: dict) -> None:
        self.guarded("storing the config", lambda: self.inner.store_init_configuration(values))

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        self._pending.append((dict(values), step))

    def release(self) -> None:
        """Hand the waiting logs to the tracker: called once a checkpoint covering them is written."""
        pending, self._pending = self._pending, []
        for values, step in pending:
            self.guarded(f"step {step}", lambda v=values, s=step: self.inner.log(v, step=s))

    def finish(self) -> None:
        self.guarded("finishing", self.inner.finish)


def make_trackers(names: list[str], run: TrackerRun) -> list[GuardedTracker]:
    """The run's trackers, each behind the guard (made on the main process only: the others log nothing)."""
    return [GuardedTracker(name, MAKERS[name](run)) for name in dict.fromkeys(names)]


def guarded_trackers(accelerator: Accelerator) -> list[GuardedTracker]:
    return [t for t in accelerator.trackers if isinstance(t, GuardedTracker)]


def release_logs(accelerator: Accelerator) -> None:
    """Every waiting log to its tracker (after a checkpoint is written, and at the end of a run)."""
    for tracker in guarded_trackers(accelerator):
        tracker.release()


@contextmanager
def closed_on_error(accelerator: Accelerator) -> Iterator[None]:
    """A run that fails leaves no tracker run open in this process, so the next run of an inline sweep starts its
    own (MLflow keeps one active run per process)."""
    try:
        yield
    except BaseException:
        for tracker in guarded_trackers(accelerator):
            tracker.finish()
        raise


def tracker_statuses(accelerator: Accelerator) -> dict[str, str]:
    """For the record: each tracker, "received" or what failed and when."""
    return {t.name: t.status for t in guarded_trackers(accelerator)}
