"""Crash-safe checkpoints: written beside the current one, marked complete, then swapped in; resumed from the
newest complete one.

A checkpoint is `accelerator.save_state` into `<name>.tmp`, then a `complete.json` marker with its step, then two
renames: the current `<name>` to `<name>.old`, and `<name>.tmp` to `<name>`. A process may die anywhere in that
sequence. Whatever it leaves, `load_checkpoint` finds the newest checkpoint that is complete among the three
folders (a `.tmp` counts only with its marker) and resumes from it; a run resumes from step 0 only when no
complete checkpoint exists at all, and a checkpoint that exists but cannot be read stops the run with one line.
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


def save_checkpoint(accelerator: Accelerator, path: Path, step: int) -> None:
    """Save the run's state at `step` as `path`, never leaving `path` and its predecessor both unusable."""
    tmp, old = _sibling(path, ".tmp"), _sibling(path, ".old")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / MARKER, {"step": step})
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


def load_checkpoint(accelerator: Accelerator, path: Path) -> Path | None:
    """Restore the newest complete checkpoint of `path` (falling back to the previous one when it cannot be
    read); None when there is none. Every checkpoint unreadable: one line naming them, exit 2 at the CLI."""
    errors = []
    for folder, _ in complete_checkpoints(path):
        try:
            accelerator.load_state(str(folder))
            return folder
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
