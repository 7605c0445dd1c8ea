"""The configuration reference page: every key of the run config, from its dataclasses (bench/config.py).

A key's type and range, default and part in the run id come from the field itself; its description from the
comments written beside or above the field, so the page says what the code's reader sees.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import typing
from collections.abc import Iterator
from typing import Any

from bench.checks import describe
from bench.config import RUN_ID, RunConfig
from bench.docs.markdown import code, page, table

#: what each run-id role means for a user choosing a value
ROLES = {"hashed": "yes", "hashed_when_set": "when not the default", "unhashed": "no"}


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment: the block of comment lines right above it, then the one on its own line(s)."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#:").strip()
    cls_node = ast.parse(source).body[0]
    out, previous_end = {}, cls_node.lineno  # the `class` line (its decorators are above it)
    for node in cls_node.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above, line = [], node.lineno - 1
            while line > previous_end and line in comments:
                above.insert(0, comments[line])
                line -= 1
            beside = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
            out[node.target.id] = " ".join(above + beside)
        previous_end = node.end_lineno
    return out


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _rows(cls: type, prefix: str) -> Iterator[list[str]]:
    hints, notes = typing.get_type_hints(cls, include_extras=True), field_comments(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            continue  # a section: its own table
        yield [f"`{prefix}{f.name}`", describe(hints[f.name]), code(_default(f)),
               ROLES[f.metadata.get(RUN_ID, "hashed")], notes.get(f.name, "")]


def config_page(root: type = RunConfig) -> str:
    """One table per config section: key, type and range, default, whether it enters the run id, what it does."""
    header = ["key", "type and range", "default", "in the run id", "what it does"]
    sections = [f"## Run\n\n{table(header, _rows(root, ''))}"]
    hints = typing.get_type_hints(root, include_extras=True)
    for f in dataclasses.fields(root):
        section = hints[f.name]
        if dataclasses.is_dataclass(section):
            doc = inspect.getdoc(section) or ""
            doc = "" if doc.startswith(section.__name__ + "(") else doc + "\n\n"  # dataclasses' generated doc
            sections.append(f"## `{f.name}` {{#{f.name}}}\n\n{doc}{table(header, _rows(section, f.name + '.'))}")
    intro = ("Every key a config file, a sweep spec or a dotted override (`ferbench run data.budget=0.05`) may set, "
             "with its type and range (checked before anything runs: a bad value is one line and exit 2), its "
             "default, and whether it takes part in the run id. *When not the default*: keys added after results "
             "were published, so earlier runs keep their ids. Presets and recipes set some of these keys for you "
             "([recipes](recipes.md)); a method's own arguments go under `method_args` ([methods](methods.md)).")
    return page("Configuration", intro, sections)
