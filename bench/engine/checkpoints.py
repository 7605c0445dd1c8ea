"""Crash-safe checkpoints, bound to their run: written beside the current one, marked complete, then swapped in;
resumed from the newest complete one, and only by the run that wrote it.

A checkpoint is `accelerator.save_state` into `<name>.tmp`, then a `complete.json` marker with its step and the
identity of the run and stage that wrote it (run id, sha256 of the resolved config, stage), then two renames: the
current `<name>` to `<name>.old`, and `<name>.tmp` to `<name>`. A process may die anywhere in that sequence.
Whatever it leaves, `load_checkpoint` finds the newest checkpoint that is complete among the three folders (a
`.tmp` counts only with its marker) and resumes from it; a run resumes from step 0 only when no complete
checkpoint exists at all, a checkpoint that exists but cannot be read stops the run with one line, and so does a
checkpoint of another run or stage (its marker names both). A checkpoint written before markers named their run
is resumed, and the session that resumed it says it could not be verified.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from accelerate import Accelerator

from bench.errors import FERBenchError
from bench.results.record import write_json_atomic

MARKER = "complete.json"


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def save_checkpoint(accelerator: Accelerator, path: Path, step: int, identity: dict[str, str]) -> None:
    """Save the run's state at `step` as `path`, never leaving `path` and its predecessor both unusable; `identity`
    ({"run_id", "config_sha256", "stage"}) goes into its marker."""
    tmp, old = _sibling(path, ".tmp"), _sibling(path, ".old")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
    except Exception as e:  # noqa: BLE001 - torch's writers report a full disk as RuntimeError; no marker is written
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FERBenchError(f"could not write the checkpoint {tmp} ({first[:160]}); the previous checkpoint, if "
                            "any, is kept and a rerun resumes from it") from e
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / MARKER, {"step": step, **identity})
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def complete_checkpoints(path: Path) -> list[tuple[Path, int | None]]:
    """(folder, step) of every complete checkpoint of `path`, newest first. A folder without a marker counts as
    complete unless it is the `.tmp` one (checkpoints written before markers existed are only ever renamed into
    place once whole); its step is then unknown and it ranks after the marked ones, `path` before `.old`."""
    found = []
    for rank, folder in enumerate((_sibling(path, ".tmp"), path, _sibling(path, ".old"))):
        if not folder.is_dir():
            continue
        marker = folder / MARKER
        if marker.is_file():
            try:
                step = int(json.loads(marker.read_text())["step"])
            except (ValueError, KeyError, TypeError) as e:
                raise FERBenchError(f"{marker}: unreadable checkpoint marker ({e}); delete {folder} to drop it") from e
            found.append((folder, step, rank))
        elif folder.name != _sibling(path, ".tmp").name:
            found.append((folder, None, rank))
    found.sort(key=lambda f: (f[1] is None, -(f[1] or 0), f[2]))
    return [(folder, step) for folder, step, _ in found]


def check_identity(folder: Path, identity: dict[str, str]) -> bool:
    """Whether the checkpoint in `folder` is this run's (True), or unverifiable: written before markers named their
    run (False); a checkpoint of another run or stage is one line naming both."""
    marker = folder / MARKER
    if not marker.is_file():
        return False
    theirs = json.loads(marker.read_text())
    if not any(k in theirs for k in identity):
        return False
    if {k: theirs.get(k) for k in identity} != identity:
        def name(d: dict) -> str:
            return f"run {d.get('run_id')} (stage {d.get('stage')}, config {str(d.get('config_sha256'))[:12]})"
        raise FERBenchError(f"{folder}: a checkpoint of {name(theirs)}, not of this {name(identity)}; it will not be "
                            f"resumed: delete {folder} to start this run over")
    return True


def check_owner(path: Path, identity: dict[str, str]) -> None:
    """Refuse, in one line, a checkpoint of `path` written by another run or stage, without loading anything: a
    run checks this before it writes anything of its own (trackers' event files), so a refusal leaves no trace."""
    for folder, _ in complete_checkpoints(path):
        check_identity(folder, identity)


def load_checkpoint(accelerator: Accelerator, path: Path, identity: dict[str, str]) -> tuple[Path, bool] | None:
    """Restore the newest complete checkpoint of `path` (falling back to the previous one when it cannot be
    read): (its folder, whether its marker names this run), or None when there is none. Every checkpoint
    unreadable: one line naming them, exit 2 at the CLI; a checkpoint of another run: one line naming both."""
    errors = []
    for folder, _ in complete_checkpoints(path):
        verified = check_identity(folder, identity)  # before anything of it is loaded
        try:
            accelerator.load_state(str(folder))
            return folder, verified
        except FERBenchError:
            raise
        except Exception as e:  # noqa: BLE001 - a damaged checkpoint is reported, then the previous one is tried
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            errors.append(f"{folder.name}: {first[:160]}")
    if errors:
        raise FERBenchError(f"{path}: no readable checkpoint to resume from ({'; '.join(errors)}); delete "
                            f"{path.parent} to start the run over")
    return None


def remove_checkpoints(path: Path) -> None:
    """Drop `path` and its `.tmp` / `.old` siblings (the run or stage is finished)."""
    for folder in (path, _sibling(path, ".tmp"), _sibling(path, ".old")):
        shutil.rmtree(folder, ignore_errors=True)
