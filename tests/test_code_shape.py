"""The code stays changeable (issues 19 and 30): every function of bench/ and methods/ is short (at most 80 lines) with
few positional parameters (at most 6 besides self/cls); the config modules form no import circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _files(area: str) -> list[Path]:
    """The .py files of an area: bench's own modules ("bench"), or one package of bench, or methods/."""
    folder = REPO / area
    return sorted(folder.glob("*.py") if area == "bench" else folder.rglob("*.py"))


def _areas() -> list[str]:
    """bench's own modules, each package of bench (found, so a new one is covered), and methods/: one test each,
    so a failure names its area."""
    packages = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "bench").iterdir()
                      if p.is_dir() and any(p.rglob("*.py")))
    return ["bench", *packages, "methods"]


def _functions(paths: list[Path]) -> list[tuple[str, int, int]]:
    """(where, lines, positional parameters besides self/cls) of every function in `paths`."""
    out = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                positional = [p.arg for p in a.posonlyargs + a.args if p.arg not in ("self", "cls")]
                out.append((f"{path.relative_to(REPO)}:{node.lineno} {node.name}",
                            node.end_lineno - node.lineno + 1, len(positional)))
    return out


def test_the_areas_cover_every_file_of_bench_and_methods() -> None:
    covered = [f for area in _areas() for f in _files(area)]
    assert sorted(covered) == sorted([*(REPO / "bench").rglob("*.py"), *(REPO / "methods").rglob("*.py")])
    assert len(_functions(covered)) > 500


@pytest.mark.parametrize("area", _areas())
def test_functions_are_short_with_few_positional_parameters(area: str) -> None:
    functions = _functions(_files(area))
    assert [f for f in functions if f[1] > 80] == [], "functions over 80 lines"
    assert [f for f in functions if f[2] > 6] == [], "functions with more than 6 positional parameters"


def test_config_bundles_and_yaml_modules_import_no_circle() -> None:
    def imports(module: str) -> set[str]:
        tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                and n.module.startswith("bench")}

    assert imports("bench.bundles") <= {"bench.errors", "bench.yamlfile"}
    assert "bench.config" not in imports("bench.bundles") | imports("bench.yamlfile") | imports("bench.checks")
