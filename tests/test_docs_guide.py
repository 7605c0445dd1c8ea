"""The method author's guide (docs/guides/adding-a-method.md) is run as a reader follows it.

Every file the page shows (a fenced block with `title="path"`) is written where the title says, and every command
(`$ ...` in a `console` block) is run in order, in a folder that stands for the reader's checkout: a copy of
FERBench's `methods/` package, first on PYTHONPATH so the page's new file joins the built-in methods. The one
liberty taken: `pip install X` installs into a folder of the test's own (`--target`) rather than the suite's
environment, which every other test shares. Lines a console block shows under a command are expected in its output,
in order. Editing the page's code or commands changes what this test runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "guides" / "adding-a-method.md"
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```\n", re.M | re.S)


@dataclass(frozen=True)
class FileBlock:
    path: str
    text: str


@dataclass(frozen=True)
class Command:
    line: str
    expected: tuple[str, ...]  # lines shown under it, expected in its output in this order


def guide_steps(page: str) -> list[FileBlock | Command]:
    """The page's files and commands, in the order a reader meets them."""
    steps: list[FileBlock | Command] = []
    for lang, info, body in FENCE.findall(page):
        title = re.search(r'title="([^"]+)"', info)
        if title:
            steps.append(FileBlock(title.group(1), body))
        elif lang == "console":
            for chunk in re.split(r"^\$ ", body, flags=re.M)[1:]:
                command, *shown = chunk.rstrip("\n").split("\n")
                steps.append(Command(command, tuple(shown)))
    return steps


def _install_isolated(command: str, site: Path) -> str:
    return command.replace("pip install ", f"{sys.executable} -m pip install --quiet --no-deps "
                                           f"--no-build-isolation --target {site} ", 1)


def _assert_in_order(expected: tuple[str, ...], output: str, command: str) -> None:
    lines, at = output.splitlines(), 0
    for want in expected:
        found = next((i for i in range(at, len(lines)) if lines[i].startswith(want)), None)
        assert found is not None, f"`{command}`: {want!r} not in its output (in order):\n{output}"
        at = found + 1


def test_the_guide_shows_files_and_commands_through_to_a_leaderboard() -> None:
    steps = guide_steps(GUIDE.read_text())
    files = [s.path for s in steps if isinstance(s, FileBlock)]
    commands = [s.line.split()[:2] for s in steps if isinstance(s, Command)]
    assert files == ["methods/pseudolabel.py", "ferbench-pseudolabel/pyproject.toml", "pseudolabel_sweep.yaml"]
    assert ["ferbench", "check-method"] in commands and ["pip", "install"] in commands
    assert commands[-2:] == [["ferbench", "sweep"], ["ferbench", "leaderboard"]]


@pytest.mark.subprocess
def test_the_method_authors_guide_runs_as_written(shared_cache: Path, tmp_path: Path) -> None:
    checkout, site = tmp_path / "checkout", tmp_path / "site"
    shutil.copytree(REPO / "methods", checkout / "methods", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "FERBENCH_CACHE": str(shared_cache), "PYTHONPATH": os.pathsep.join([str(site), str(checkout)]),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    outputs: dict[str, str] = {}
    for step in guide_steps(GUIDE.read_text()):
        if isinstance(step, FileBlock):
            target = checkout / step.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(step.text)
            continue
        line = _install_isolated(step.line, site) if step.line.startswith("pip install ") else step.line
        res = subprocess.run(["bash", "-c", line], cwd=checkout, env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, f"`{step.line}` exited {res.returncode}:\n{res.stdout}\n{res.stderr[-3000:]}"
        _assert_in_order(step.expected, res.stdout, step.line)
        outputs.setdefault(step.line, "")
        outputs[step.line] += res.stdout
    # the file in methods/ was a built-in method; the package's is its distribution's
    assert "threshold" in outputs["ferbench methods pseudolabel"]
    assert "ferbench-pseudolabel 0.1.0" in outputs["ferbench methods"].replace("\n", " ")
    assert not (checkout / "methods" / "pseudolabel.py").exists()
    board = (checkout / "boards" / "synthfer.md").read_text()
    rows = [ln for ln in board.splitlines() if ln.startswith("| pseudolabel |")]
    assert rows and "(n=2)" in rows[0], board[:3000]  # its accuracy over the spec's 2 seeds
    assert "Δ accuracy vs `supervised`" in board
