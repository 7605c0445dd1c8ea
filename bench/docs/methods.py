"""The methods reference page: every registered method (built-in or a plugin's) with its sources, views, stages
and typed arguments, from the registry (bench/registry.py) and each method's `Args`."""

from __future__ import annotations

import inspect
import re
import sys

from bench.docs.markdown import cell, code, page, table
from bench.method import Method, describe_arguments


def _summary(cls: type[Method]) -> str:
    """The first paragraph of the method's module docstring (what the method is, and as in what)."""
    doc = inspect.getdoc(sys.modules[cls.__module__]) or inspect.getdoc(cls) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    return re.sub(r"docs/([\w/.-]+\.md(?:#[\w-]+)?)", r"[\g<0>](../\1)", first)  # pointers into the site: links


def method_section(name: str, cls: type[Method], origin: str) -> str:
    facts = [("source", cls.reference or "—"), ("from", origin),
             ("unlabeled views", ", ".join(cls.views) or "none (labeled data only)"),
             ("labeled views", ", ".join(cls.labeled_views)),
             ("labels", "every training label (a reference row)" if cls.labeled_source == "all" else
              "the labeled split of the budget"),
             ("stages", ", ".join(cls.stage_names)), ("keeps an EMA teacher", "yes" if cls.requires_ema else "no")]
    lines = [f"## `{name}` {{#{name}}}\n", cell(_summary(cls)) + "\n", table(["property", "value"], facts)]
    args = describe_arguments(cls.Args)
    if args:
        rows = [[f"`{a.name}`", a.type, code(a.default),
                 ("**reconstructed** (not from a source). " if a.reconstructed else "") + a.note] for a in args]
        lines.append(f"Arguments (`method_args.NAME=VALUE`):\n\n{table(['argument', 'type', 'default', 'note'], rows)}")
    else:
        lines.append("No arguments.\n")
    return "\n".join(lines)


def methods_page() -> str:
    """Every registered method, in name order."""
    from bench.registry import get_method_class, method_names, method_origin

    names = method_names()
    index = table(["method", "source", "from"],
                  [[f"[`{n}`](#{n})", get_method_class(n).reference or "—", method_origin(n)] for n in names])
    intro = ("Every method the registry holds when the site is built: the built-in ones (one module each in "
             "`methods/`) and those of installed plugins (the `ferbench.methods` entry point). `ferbench methods "
             "NAME` prints the same arguments; [adding a method](../guides/adding-a-method.md) says how a method "
             "gets here, and [methods and their sources](../concepts/methods.md) what each one reproduces.")
    return page("Methods", intro, [index, *(method_section(n, get_method_class(n), method_origin(n)) for n in names)])
