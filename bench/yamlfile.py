"""YAML files and strings read with one-line errors (`where:LINE:COLUMN: not valid YAML: ...`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bench.errors import FERBenchError


def parse_yaml(text: str, where: str) -> Any:
    """`text` parsed as YAML; a syntax error is one line: `where:LINE:COLUMN: not valid YAML: <problem>`."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        context = getattr(e, "context", None)
        cmark = getattr(e, "context_mark", None)
        if context and cmark is not None:
            context += f" at line {cmark.line + 1}, column {cmark.column + 1}"
        raise FERBenchError(f"{where}{at}: not valid YAML: {problem}" + (f" ({context})" if context else "")) from e


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping at its top level."""
    path = Path(path)
    if not path.is_file():
        raise FERBenchError(f"{path}: config file not found")
    data = parse_yaml(path.read_text(), str(path)) or {}
    if not isinstance(data, dict):
        raise FERBenchError(f"{path}: expected a mapping at the top level")
    return data
