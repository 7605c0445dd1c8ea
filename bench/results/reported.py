"""Published accuracies as data (`reported.yaml` beside this module), for the reference-recipe leaderboards.

Each entry names the paper and where the number was read (table, README, issue), the cell it belongs to in
FERBench's terms (dataset key as in run records, budget protocol and value as in run records, method, recipe),
the metric in percent, and whether the paper selected it on the test set (`best`: best over epochs) or took the
last checkpoint (`final`); that decides which reproduced number it is comparable with. Loading validates every
entry and fails on the first malformed one with one line naming the file and the entry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.bundles import HARNESS  # the fair-comparison protocol; every other recipe reproduces a paper
from bench.config import BUDGET_PROTOCOLS
from bench.errors import FERBenchError
from bench.results.record import NAME, is_number, short_repr  # names as run records give them

DEFAULT_PATH = Path(__file__).with_name("reported.yaml")
SELECTIONS = ("final", "best")  # last checkpoint | best over epochs on the test set
METRICS = ("accuracy",)
FIELDS = ("paper", "source", "dataset", "budget_protocol", "budget", "method", "recipe", "metric", "value",
          "selection")


@dataclass(frozen=True)
class Reported:
    """One published number; `value` in percent."""

    paper: str
    source: str
    dataset: str
    budget_protocol: str
    budget: float
    method: str
    recipe: str
    metric: str
    value: float
    selection: str

    def cell(self) -> tuple[str, str, str, float, str, str]:
        return self.dataset, self.recipe, self.budget_protocol, self.budget, self.method, self.metric


def _parse_entry(raw: object, where: str) -> Reported:
    def bad(name: str, expected: str) -> FERBenchError:
        return FERBenchError(f"{where}: field {name} is {short_repr(raw[name])}; expected {expected}")

    if not isinstance(raw, Mapping):
        raise FERBenchError(f"{where}: is {type(raw).__name__}; expected a mapping of {', '.join(FIELDS)}")
    missing = [k for k in FIELDS if k not in raw]
    if missing:
        raise FERBenchError(f"{where}: missing field {', '.join(missing)}")
    unknown = sorted(str(k) for k in raw if k not in FIELDS)
    if unknown:  # a misspelt field would otherwise be dropped silently
        raise FERBenchError(f"{where}: unknown field {', '.join(unknown)}; expected {', '.join(FIELDS)}")
    for name in ("paper", "source"):
        if not isinstance(raw[name], str) or not raw[name].strip():
            raise bad(name, "a non-empty string")
    for name in ("dataset", "method", "recipe"):
        if not isinstance(raw[name], str) or not NAME.match(raw[name]):
            raise bad(name, "a name as run records write it (letters, digits, '_', '.', '+', '-')")
    if raw["recipe"] == HARNESS:  # a paper's number never comes from this harness's protocol
        raise bad("recipe", "a reference recipe (adacm, leaf, sitfer, ssfer, usb, ...), not 'harness'")
    protocol = raw["budget_protocol"]
    if protocol not in BUDGET_PROTOCOLS:
        raise bad("budget_protocol", f"one of {', '.join(BUDGET_PROTOCOLS)}")
    budget = raw["budget"]
    if protocol == "fraction":
        if not is_number(budget) or not 0 < budget <= 1:  # records hold 0.05 for 5 %, not 5
            raise bad("budget", "a per-class fraction in (0, 1], as records hold it (0.05 for 5%)")
    elif not is_number(budget) or budget != int(budget) or budget < 1:
        raise bad("budget", f"a whole number of labels ({protocol}), at least 1")
    if raw["metric"] not in METRICS:
        raise bad("metric", f"one of {', '.join(METRICS)}")
    value = raw["value"]
    if not is_number(value) or not 1 < value <= 100:  # a fraction (0.84) would compare 100x off
        raise bad("value", "a percentage in (1, 100]")
    if raw["selection"] not in SELECTIONS:
        raise bad("selection", f"one of {', '.join(SELECTIONS)} (best = best over epochs on the test set)")
    return Reported(paper=raw["paper"].strip(), source=raw["source"].strip(), dataset=raw["dataset"],
                    budget_protocol=protocol, budget=float(budget), method=raw["method"], recipe=raw["recipe"],
                    metric=raw["metric"], value=float(value), selection=raw["selection"])


def _label(raw: object) -> str:
    if not isinstance(raw, Mapping):
        return ""
    parts = [str(raw.get(k)) for k in ("method", "dataset", "budget_protocol", "budget") if k in raw]
    return f" ({' '.join(parts)})" if parts else ""


def parse_reported(data: object, origin: str = "reported") -> list[Reported]:
    """Validated entries of a parsed reported file: `{"entries": [...]}`; `origin` names it in errors."""
    if not isinstance(data, Mapping) or not isinstance(data.get("entries"), list):
        raise FERBenchError(f"{origin}: expected a mapping with a list under 'entries'")
    out: list[Reported] = []
    seen: dict[tuple, int] = {}
    for i, raw in enumerate(data["entries"], start=1):
        where = f"{origin}: entry {i}{_label(raw)}"
        entry = _parse_entry(raw, where)
        key = entry.cell()
        if key in seen:  # two numbers for one cell: which one a gap is against would be arbitrary
            raise FERBenchError(f"{where}: the same cell as entry {seen[key]}; keep one number per cell")
        seen[key] = i
        out.append(entry)
    return out


def load_reported(path: str | Path | None = None) -> list[Reported]:
    """The entries of a reported file (default: the one shipped beside this module)."""
    path = Path(path) if path is not None else DEFAULT_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise FERBenchError(f"{path}: cannot read the reported-numbers file ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise FERBenchError(f"{path}:{where} not valid YAML ({getattr(e, 'problem', None) or 'parse error'})") \
            from None
    return parse_reported(data, str(path))


def lookup(entries: Sequence[Reported], *, dataset: str, recipe: str, protocol: str, method: str, budget: float,
           metric: str = "accuracy") -> Reported | None:
    """The published number for one cell, if any (budgets match up to float noise: 0.1 vs 0.1000000001)."""
    for e in entries:
        if (e.dataset, e.recipe, e.budget_protocol, e.method, e.metric) == (dataset, recipe, protocol, method, metric) \
                and math.isclose(e.budget, budget, rel_tol=1e-9):
            return e
    return None
