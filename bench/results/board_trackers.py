"""`ferbench leaderboard --log-to wandb,mlflow`: the rendered boards into the trackers a lab watches, as one
tracker run per rendering (named `leaderboard-<name>`, in the sweep's W&B group or MLflow experiment): every file
as an artifact, each figure as an image, each CSV as a table. A tracker that fails is one warning; the boards are
written before any tracker is asked."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from bench.engine.trackers import contained, quick_mlflow_failures

#: the trackers a rendering can go to (TensorBoard holds numbers and pictures of runs, not files)
BOARD_TRACKERS = ("wandb", "mlflow")


def _to_wandb(paths: list[Path], name: str) -> None:
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "ferbench", group=name, job_type="leaderboard",
                     name=f"leaderboard-{name}", dir=str(paths[0].parent), reinit="create_new")
    try:
        for p in paths:
            if p.suffix == ".png":
                run.log({f"figures/{p.stem}": wandb.Image(str(p))})
            elif p.suffix == ".csv":
                run.log({f"tables/{p.stem}": wandb.Table(dataframe=_csv(p))})
            run.save(str(p), base_path=str(p.parent), policy="now")
    finally:
        run.finish()


def _to_mlflow(paths: list[Path], name: str) -> None:
    import mlflow

    quick_mlflow_failures()
    mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or name)
    with mlflow.start_run(run_name=f"leaderboard-{name}", tags={"ferbench.kind": "leaderboard"}):
        for p in paths:
            mlflow.log_artifact(str(p))


def _csv(path: Path):  # noqa: ANN202 - a pandas DataFrame; pandas comes with the trackers, not with FERBench
    import pandas

    return pandas.read_csv(path, dtype=str, keep_default_na=False)


SENDERS: dict[str, Callable[[list[Path], str], None]] = {"wandb": _to_wandb, "mlflow": _to_mlflow}


def log_boards(paths: list[Path], trackers: list[str], name: str) -> dict[str, str]:
    """Each tracker's outcome: "received", or what failed."""
    return {t: contained(t, f"logging the leaderboards of {name}", lambda t=t: SENDERS[t](paths, name)) or "received"
            for t in trackers}
