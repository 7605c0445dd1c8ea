"""The core stays changeable (issue 19's measures): engine, launch and benchmark functions are short, with few
positional parameters; the config modules form no import circle."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _functions(*folders: str) -> list[tuple[str, int, int]]:
    """(where, lines, positional parameters besides self/cls) of every function under `folders`."""
    out = []
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    a = node.args
                    positional = [p.arg for p in a.posonlyargs + a.args if p.arg not in ("self", "cls")]
                    out.append((f"{path.relative_to(REPO)}:{node.lineno} {node.name}",
                                node.end_lineno - node.lineno + 1, len(positional)))
    return out


def test_engine_launch_and_benchmark_functions_are_short_with_few_positional_parameters() -> None:
    functions = _functions("bench/engine", "bench/launch", "bench/benchmarks")
    assert len(functions) > 100
    assert [f for f in functions if f[1] > 80] == []
    assert [f for f in functions if f[2] > 6] == []


def test_config_bundles_and_yaml_modules_import_no_circle() -> None:
    def imports(module: str) -> set[str]:
        tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                and n.module.startswith("bench")}

    assert imports("bench.bundles") <= {"bench.errors", "bench.yamlfile"}
    assert "bench.config" not in imports("bench.bundles") | imports("bench.yamlfile") | imports("bench.checks")
