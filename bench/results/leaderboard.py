"""Markdown (and PNG) leaderboards regenerated from run records, one pair of files per dataset.

Layout follows reference/harness.md Part 3: methods as rows, label budgets as columns, cells
`mean ± 95% t half-width (n)` over seeds, best mean bolded, statistical ties (paired CI vs the best
includes 0) marked †, the fully supervised run as a single reference column, paired deltas against
a baseline, and a provenance footer. Output depends only on the records (no timestamps, records
sorted first), so the same records always give byte-identical files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.errors import FERBenchError
from bench.results.plots import budget_label, plot_budget_curves
from bench.results.stats import Summary, paired_difference, summarize

__all__ = ["REFERENCE_METHOD", "budget_label", "render_leaderboards"]

# Trained on all labels: its budget is meaningless, so it is one reference column per dataset.
REFERENCE_METHOD = "fullysupervised"
ALL_LABELS = "all labels"
DASH = "—"
TIE_MARK = "†"
SIG_MARK = "*"

# (key under metrics.final, label in headers, required in every record)
_FINAL_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("accuracy", "top-1 accuracy", True),
    ("mean_class_accuracy", "mean class accuracy", True),
    ("macro_f1", "macro-F1", False),
)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class _Run:
    run_id: str
    method: str
    dataset: str
    protocol: str
    budget: float
    seed: int
    metrics: Mapping[str, float]  # final metrics present in the record, plus "best_accuracy"
    record: Mapping


# ---------------------------------------------------------------------------------------------
# validation


def _short(v: object) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _field(record: Mapping, dotted: str, run_id: str) -> object:
    cur: object = record
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            raise FERBenchError(f"run {run_id}: missing field {dotted}")
        cur = cur[part]
    return cur


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fraction(v: object, dotted: str, run_id: str) -> float:
    # Records hold fractions; a percent (85.3) here would silently inflate every table.
    if not _is_number(v) or not 0.0 <= float(v) <= 1.0:
        raise FERBenchError(f"run {run_id}: field {dotted} is {_short(v)}; expected a fraction in [0, 1]")
    return float(v)


def _parse(record: object, index: int) -> _Run:
    if not isinstance(record, Mapping):
        raise FERBenchError(f"record #{index}: is {type(record).__name__}; expected a run record object")
    run_id = record.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise FERBenchError(f"record #{index}: missing field run_id (got {_short(run_id)}); expected a string")

    strings = {}
    for name in ("method", "dataset", "protocol"):
        v = _field(record, name, run_id)
        if not isinstance(v, str) or not _SAFE_NAME.match(v):
            raise FERBenchError(f"run {run_id}: field {name} is {_short(v)}; expected a non-empty name "
                                "of letters, digits, '_', '.', '+' or '-'")
        strings[name] = v
    budget = _field(record, "budget", run_id)
    if not _is_number(budget) or budget <= 0:
        raise FERBenchError(f"run {run_id}: field budget is {_short(budget)}; expected a positive number")
    seed = _field(record, "seed", run_id)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise FERBenchError(f"run {run_id}: field seed is {_short(seed)}; expected an integer")

    metrics: dict[str, float] = {}
    for key, _, required in _FINAL_METRICS:
        dotted = f"metrics.final.{key}"
        if required:
            metrics[key] = _fraction(_field(record, dotted, run_id), dotted, run_id)
        else:
            final = _field(record, "metrics.final", run_id)
            if isinstance(final, Mapping) and key in final:
                metrics[key] = _fraction(final[key], dotted, run_id)
    if "best_accuracy" in record["metrics"]:
        metrics["best_accuracy"] = _fraction(record["metrics"]["best_accuracy"], "metrics.best_accuracy", run_id)
    return _Run(run_id=run_id, budget=float(budget), seed=seed, metrics=metrics, record=record, **strings)


def _check_unique(runs: Iterable[_Run], key: Callable[[_Run], tuple], what: str) -> None:
    # Two runs of one cell with the same seed would be counted as independent seeds and break pairing.
    seen: dict[tuple, str] = {}
    for r in runs:
        k = key(r)
        if k in seen:
            raise FERBenchError(f"runs {seen[k]} and {r.run_id}: two records for {what} {k[:-1]} with seed "
                                f"{r.seed}; keep one record per seed")
        seen[k] = r.run_id


# ---------------------------------------------------------------------------------------------
# formatting


def _pct(x: float, signed: bool = False) -> str:
    v = round(x * 100.0, 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{v:+.1f}" if signed else f"{v:.1f}"


def _cell(s: Summary, signed: bool = False) -> str:
    if s.ci95 is None:
        return f"{_pct(s.mean, signed)} (n={s.n})"
    return f"{_pct(s.mean, signed)} ± {_pct(s.ci95)} (n={s.n})"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [_md_row(header), "|" + "---|" * len(header), *(_md_row(r) for r in rows)]


# ---------------------------------------------------------------------------------------------
# one dataset


def _by_seed(runs: Iterable[_Run], metric: str) -> dict[int, float]:
    return {r.seed: r.metrics[metric] for r in runs if metric in r.metrics}


class _Protocol:
    """The runs of one (dataset, protocol) plus the dataset's reference runs."""

    def __init__(self, dataset: str, protocol: str, runs: list[_Run], ref_runs: list[_Run], baseline: str):
        self.dataset, self.protocol, self.runs, self.ref_runs = dataset, protocol, runs, ref_runs
        self.budgets = sorted({r.budget for r in runs})
        names = sorted({r.method for r in runs})
        self.baseline = baseline if baseline in names else None
        self.methods = ([baseline] if self.baseline else []) + [m for m in names if m != baseline]
        self.cells: dict[tuple[str, float], list[_Run]] = {}
        for r in runs:
            self.cells.setdefault((r.method, r.budget), []).append(r)

    def seeds(self, method: str, budget: float, metric: str) -> dict[int, float]:
        return _by_seed(self.cells.get((method, budget), []), metric)

    def heading(self, what: str) -> str:
        return f"### {self.dataset} — protocol {self.protocol} — {what}"

    def header(self, with_ref: bool) -> list[str]:
        return ["Method", *(budget_label(self.protocol, b) for b in self.budgets)] + (
            [ALL_LABELS] if with_ref else [])

    def metric_table(self, metric: str, label: str) -> list[str]:
        ref = _by_seed(self.ref_runs, metric)
        grid: dict[str, list[str]] = {m: [] for m in self.methods}
        for b in self.budgets:
            col = {m: v for m in self.methods if (v := self.seeds(m, b, metric))}
            summ = {m: summarize(list(v.values())) for m, v in col.items()}
            best = max(summ, key=lambda m: summ[m].mean, default=None)  # first in row order on equal means
            for m in self.methods:
                if m not in summ:
                    grid[m].append(DASH)
                    continue
                text = _cell(summ[m])
                if summ[m].mean == summ[best].mean:
                    text = f"**{text}**"
                elif len(set(col[m]) & set(col[best])) >= 2 and not paired_difference(
                        col[best], col[m]).excludes_zero:
                    text = f"{text} {TIE_MARK}"
                grid[m].append(text)
        rows = [[m, *grid[m]] + ([DASH] if ref else []) for m in self.methods]
        if ref:
            rows.append([REFERENCE_METHOD, *(DASH for _ in self.budgets), _cell(summarize(list(ref.values())))])
        return [
            self.heading(f"{label} (%), final checkpoint, mean ± 95% t-CI over seeds"),
            "",
            *_table(self.header(bool(ref)), rows),
            "",
            (f"**Bold**: best mean in the column (the `{REFERENCE_METHOD}` reference excluded). "
             f"{TIE_MARK}: the paired 95% t-CI of the difference to the bold method, over shared seeds, "
             "includes 0 (statistically tied; needs ≥ 2 shared seeds). Best-on-test is not used for ranking."),
            "",
        ]

    def delta_table(self) -> list[str]:
        others = [m for m in self.methods if m != self.baseline]
        if self.baseline is None or not others:
            return []
        rows = []
        for m in others:
            row = [m]
            for b in self.budgets:
                a, base = self.seeds(m, b, "accuracy"), self.seeds(self.baseline, b, "accuracy")
                if not set(a) & set(base):
                    row.append(DASH)
                    continue
                d = paired_difference(a, base)
                row.append(_cell(d, signed=True) + (f" {SIG_MARK}" if d.excludes_zero else ""))
            rows.append(row)
        return [
            self.heading(f"Δ accuracy vs `{self.baseline}` (paired over shared seeds, percentage points)"),
            "",
            *_table(self.header(False), rows),
            "",
            (f"`{SIG_MARK}`: the paired 95% t-CI of the difference excludes 0 (uncorrected for multiple "
             "comparisons). n = seeds shared with the baseline."),
            "",
        ]

    def best_on_test_table(self) -> list[str]:
        ref = _by_seed(self.ref_runs, "best_accuracy")
        if not ref and not any("best_accuracy" in r.metrics for r in self.runs):
            return []
        rows = []
        for m in self.methods:
            row = [m]
            for b in self.budgets:
                v = self.seeds(m, b, "best_accuracy")
                row.append(f"{_pct(summarize(list(v.values())).mean)} (n={len(v)})" if v else DASH)
            rows.append(row + ([DASH] if ref else []))
        if ref:
            rows.append([REFERENCE_METHOD, *(DASH for _ in self.budgets),
                         f"{_pct(summarize(list(ref.values())).mean)} (n={len(ref)})"])
        return [
            self.heading("best-on-test accuracy (%), mean over seeds — optimistic, NOT used for ranking"),
            "",
            *_table(self.header(bool(ref)), rows),
            "",
            ("Best-on-test is the maximum test accuracy over all evaluations of a run, i.e. a checkpoint "
             "chosen on the test set; it is shown for comparison with papers that report it."),
            "",
        ]

    def provenance(self) -> list[str]:
        runs = self.runs + self.ref_runs
        lines = [(f"#### Provenance — {self.dataset}, protocol {self.protocol} "
                 f"({len(self.runs)} runs + {len(self.ref_runs)} `{REFERENCE_METHOD}` runs)"), ""]
        commits = _distinct(runs, _short_commit)
        lines.append(f"- git commit: {', '.join(f'`{c}`' for c in commits)}")
        lines.append("- split manifests (sha256, first 12 hex) by budget, `seed: sha`:")
        mismatch = False
        groups = [(budget_label(self.protocol, b), [r for r in self.runs if r.budget == b]) for b in self.budgets]
        if self.ref_runs:
            groups.append((f"{ALL_LABELS} ({REFERENCE_METHOD})", self.ref_runs))
        for label, group in groups:
            per_seed: dict[int, set[str]] = {}
            for r in group:
                sha = _get(r.record, "split.manifest_sha256")
                per_seed.setdefault(r.seed, set()).add(sha[:12] if isinstance(sha, str) else "unknown")
            mismatch |= any(len(v) > 1 for v in per_seed.values())
            parts = [f"{s}: `{'/'.join(sorted(v))}`" for s, v in sorted(per_seed.items())]
            lines.append(f"  - {label}: {', '.join(parts)}")
        if mismatch:
            lines.append("- **warning**: runs with the same budget and seed used different split manifests; "
                         "the paired comparisons above assume they share one.")

        def batch(rec: Mapping) -> str:
            gb = rec.get("global_batch")
            if not isinstance(gb, Mapping):
                return "unknown"
            return f"{gb.get('labeled', '?')}/{gb.get('unlabeled', '?')}"

        def host(rec: Mapping) -> str:
            h = rec.get("host")
            if not isinstance(h, Mapping):
                return "unknown"
            return f"{h.get('platform', '?')}, {h.get('cpus', '?')} CPUs, {h.get('device', '?')}"

        def show(values: list[str]) -> str:
            return ", ".join(values)

        lines.append(f"- iterations: {show(_distinct(runs, lambda r: r.get('iterations')))}; "
                     f"global batch (labeled/unlabeled): {show(_distinct(runs, batch))}; "
                     f"world size: {show(_distinct(runs, lambda r: r.get('world_size')))}")
        lines.append(f"- backbone: {show(_distinct(runs, lambda r: r.get('backbone')))}; "
                     f"image size: {show(_distinct(runs, lambda r: r.get('image_size')))}")
        lines.append(f"- host: {'; '.join(_distinct(runs, host))}; torch "
                     f"{show(_distinct(runs, lambda r: _get(r, 'versions.torch')))}")
        walls = [float(w) for r in runs if _is_number(w := r.record.get("wall_time_s"))]
        if walls:
            lines.append(f"- wall time: {math.fsum(walls):.1f} s total over {len(walls)} runs, "
                         f"{math.fsum(walls) / len(walls):.1f} s mean per run")
        else:
            lines.append("- wall time: not recorded")
        lines.append("")
        return lines


def _get(record: Mapping, dotted: str) -> object:
    cur: object = record
    for part in dotted.split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


def _distinct(runs: Iterable[_Run], fn: Callable[[Mapping], object]) -> list[str]:
    return sorted({"unknown" if (v := fn(r.record)) is None else str(v) for r in runs})


def _render_dataset(dataset: str, runs: list[_Run], baseline: str) -> tuple[str, dict, Summary | None]:
    ref_runs = [r for r in runs if r.method == REFERENCE_METHOD]
    main = [r for r in runs if r.method != REFERENCE_METHOD]
    protocols = sorted({r.protocol for r in main} or {r.protocol for r in ref_runs})
    ref_acc = _by_seed(ref_runs, "accuracy")
    lines = [
        f"# Leaderboard: {dataset}",
        "",
        (f"Generated by `bench.results.leaderboard` from {len(runs)} run records; regenerating from the same "
         "records gives byte-identical files."),
        ("Cells: mean over seeds ± 95% Student-t half-width t(0.975, n−1)·s/√n (n = seeds); no interval "
         "for n = 1. These intervals cover seed-to-seed variation only, not test-set sampling noise."),
        ("Ranking uses the final checkpoint; best-on-test accuracy is shown separately, flagged as "
         "optimistic, and is not used for ranking."),
        "",
        f"![{dataset}: accuracy vs label budget]({dataset}.png)",
        "",
    ]
    panels: dict[str, dict[str, dict[float, Summary]]] = {}
    for protocol in protocols:
        p = _Protocol(dataset, protocol, [r for r in main if r.protocol == protocol], ref_runs, baseline)
        lines += [f"## Protocol `{protocol}`", ""]
        for key, label, required in _FINAL_METRICS:
            if required or any(key in r.metrics for r in p.runs + ref_runs):
                lines += p.metric_table(key, label)
        lines += p.delta_table()
        lines += p.best_on_test_table()
        lines += p.provenance()
        panels[protocol] = {
            m: {b: summarize(list(v.values())) for b in p.budgets if (v := p.seeds(m, b, "accuracy"))}
            for m in p.methods
        }
    reference = summarize(list(ref_acc.values())) if ref_acc else None
    return "\n".join(lines).rstrip("\n") + "\n", panels, reference


def render_leaderboards(records: list[dict], out_dir: Path, baseline: str = "supervised") -> list[Path]:
    """Write `<out_dir>/<dataset>.md` and `<out_dir>/<dataset>.png` for every dataset in `records`.

    Cells are aggregated per (dataset, protocol, budget, method) over seeds; `baseline` names the
    method the Δ table is paired against (no Δ table where it has no records). Raises FERBenchError
    naming the run and the field for a malformed record, and for two records of one cell and seed.
    Returns the written paths, sorted.
    """
    runs = sorted((_parse(rec, i) for i, rec in enumerate(records)), key=lambda r: r.run_id)
    _check_unique((r for r in runs if r.method != REFERENCE_METHOD),
                  lambda r: (r.dataset, r.protocol, r.budget, r.method, r.seed), "(dataset, protocol, budget, method)")
    # The reference ignores the budget, so one run per seed per dataset, whatever protocol it was filed under.
    _check_unique((r for r in runs if r.method == REFERENCE_METHOD),
                  lambda r: (r.dataset, r.seed), f"{REFERENCE_METHOD} on dataset")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for dataset in sorted({r.dataset for r in runs}):
        text, panels, reference = _render_dataset(dataset, [r for r in runs if r.dataset == dataset], baseline)
        md = out_dir / f"{dataset}.md"
        md.write_text(text, encoding="utf-8")
        png = plot_budget_curves(dataset, panels, out_dir / f"{dataset}.png", reference=reference,
                                 reference_label=f"{REFERENCE_METHOD} (all labels)")
        written += [md, png]
    return sorted(written)


def _short_commit(record: dict) -> str:
    commit = record.get("git_commit")
    if not commit:
        return "none recorded"
    return str(commit)[:12] + ("+dirty" if str(commit).endswith("+dirty") else "")
