"""The code state a cached fingerprint belongs to: what FERBench's and every registered method's code say, not how
they are written.

Python files are hashed as their syntax tree without docstrings (`ast.dump`), YAML files as their parsed content, so
a comment, a docstring, a blank line or re-wrapped code is the same code state and reuses the cached fingerprints,
while any edit that could change behaviour (a renamed variable included) is a new state, probed once. The files are
FERBench's own (`bench/`, `methods/`) and the module of every registered method that lives elsewhere (entry-point
plugins, methods registered at run time), so a plugin's edit is seen like a built-in method's.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import json
import sys
from pathlib import Path

import yaml

#: bumped when what the probe measures changes (bench/engine/probe.py): every cached fingerprint is then recomputed
PROBE_VERSION = 2


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


def normalized_source(path: Path) -> bytes:
    """What a file says: a Python file's syntax tree without docstrings, a YAML file's parsed content; the bytes of
    a file that does not parse (its error then shows wherever it is imported)."""
    text = path.read_bytes()
    try:
        if path.suffix == ".py":
            return ast.dump(_strip_docstrings(ast.parse(text, filename=str(path)))).encode()
        if path.suffix in (".yaml", ".yml"):
            return json.dumps(yaml.safe_load(text), sort_keys=True, default=str).encode()
    except (SyntaxError, ValueError, yaml.YAMLError):
        pass
    return text


def _package_files() -> list[tuple[str, Path]]:
    import bench
    import methods

    out = []
    for package in (bench, methods):
        root = Path(package.__file__).parent
        for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts):
            out.append((f"{package.__name__}/{path.relative_to(root).as_posix()}", path))
    return out


def plugin_files() -> list[tuple[str, Path]]:
    """(module name, file) of every registered method's module outside FERBench's own packages."""
    from bench.registry import _REGISTRY, discover

    discover()
    out = {}
    for cls in _REGISTRY.values():
        module = cls.__module__
        if module.split(".")[0] in ("bench", "methods"):
            continue
        try:
            path = inspect.getsourcefile(sys.modules[module]) if module in sys.modules else inspect.getsourcefile(cls)
        except TypeError:  # defined where there is no file (an interactive session): named only
            path = None
        out[module] = Path(path) if path else None
    return sorted((m, p) for m, p in out.items() if p is not None)


def code_state() -> str:
    """sha256 of the code's normalized files (FERBench's and the registered plugins'), the probe version and the
    versions of torch and timm, whose kernels the probe runs. Not cached: methods may be registered at any time."""
    import timm
    import torch

    h = hashlib.sha256(f"probe {PROBE_VERSION} torch {torch.__version__} timm {timm.__version__}".encode())
    for name, path in _package_files() + plugin_files():
        h.update(f"\n{name}\n".encode())
        h.update(_cached_normalized(str(path), path.stat().st_mtime_ns, path.stat().st_size))
    return h.hexdigest()


@functools.lru_cache(maxsize=4096)
def _cached_normalized(path: str, mtime_ns: int, size: int) -> bytes:
    """Parsing every file on each call is the cost of a status; the same file, unchanged on disk, parses once."""
    return hashlib.sha256(normalized_source(Path(path))).digest()
