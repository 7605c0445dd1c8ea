"""Leaderboards regenerated from run records: markdown + PNG per dataset, and LaTeX / CSV exports.

Layout (docs/guides/leaderboards.md#what-a-board-holds): methods as rows, label budgets as columns, cells
`mean ± 95% half-width (n)` over seeds (and test images), what each interval covers said under each table,
the highest mean of a column bolded, entries not distinguishable from it (all-pairs Holm) marked †, the fully
supervised run as a single reference column, paired deltas against a baseline with raw and Holm-corrected
p-values and the minimum detectable difference, per-class recall, confusion matrices and a provenance footer.
Every number comes from `bench.results.aggregate`; output depends only on the records (no timestamps, records
sorted first), so the same records always give byte-identical files.

Protocols are never mixed: harness records make `<dataset>.md` (and .png/.tex/.csv), each reference recipe its
own `<dataset>_recipe-<recipe>.md` etc., which opens every protocol section with the published numbers
(`bench/results/reported.yaml`) next to the reproduced final and best-on-test accuracy and their gaps.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from bench.errors import FERBenchError
from bench.results.aggregate import (
    ALPHA,
    FINAL_METRICS,
    INTERVALS,
    POWER,
    REFERENCE_METHOD,
    ProtocolTable,
    Reproduction,
    Run,
    build_recipe_tables,
    is_number,
    parse_run,
    reference_interval,
)
from bench.results.fmt import covers_words, images_words, interval_words, p_text, pct
from bench.results.freshness import Freshness, legend
from bench.results.plots import budget_label, plot_budget_curves, plot_confusions, plot_single_budget
from bench.results.reported import HARNESS, Reported, load_reported
from bench.results.stats import Summary

__all__ = ["FORMATS", "REFERENCE_METHOD", "budget_label", "file_stem", "render_leaderboards"]

FORMATS = ("md", "tex", "csv")
ALL_LABELS = "all labels"
DASH = "—"
TIE_MARK = "†"
SIG_MARK = "*"
HOLM_MARK = "✓"
SEED_ONLY_MARK = "‡"


# ---------------------------------------------------------------------------------------------
# formatting


def _cell(mean: float, half: float | None, n: int, signed: bool = False) -> str:
    if half is None:
        return f"{pct(mean, signed)} (n={n})"
    return f"{pct(mean, signed)} ± {pct(half)} (n={n})"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [_md_row(header), "|" + "---|" * len(header), *(_md_row(r) for r in rows)]


# ---------------------------------------------------------------------------------------------
# markdown


class _Markdown:
    def __init__(self, t: ProtocolTable, interval: str) -> None:
        self.t, self.interval = t, t.shown_interval(interval)

    def heading(self, what: str) -> str:
        return f"### {_where(self.t)} — {what}"

    def header(self, with_ref: bool) -> list[str]:
        return ["Method", *(budget_label(self.t.protocol, b) for b in self.t.budgets)] + (
            [ALL_LABELS] if with_ref else [])

    def metric_table(self, key: str, label: str) -> list[str]:
        t = self.t
        with_ref = key in t.reference
        fallback = False
        rows = []
        for m in t.methods:
            row = [m]
            for b in t.budgets:
                c = t.cell(m, b)
                if c is None or key not in c.summaries:
                    row.append(DASH)
                    continue
                half, fell_back = c.shown_interval(key, self.interval)
                fallback |= fell_back
                text = _cell(c.summaries[key].mean, half, c.n) + (f" {SEED_ONLY_MARK}" if fell_back else "")
                if c.best.get(key):
                    text = f"**{text}**"
                elif c.marked.get(key):
                    text = f"{text} {TIE_MARK}"
                row.append(f"{text} {mark}" if (mark := t.mark(c.runs)) else text)
            rows.append(row + ([DASH] if with_ref else []))
        if with_ref:
            ref = t.reference[key]
            text = _cell(ref.mean, reference_interval(t, key, self.interval), ref.n)
            rows.append([REFERENCE_METHOD, *(DASH for _ in t.budgets),
                         f"{text} {mark}" if (mark := t.mark(t.ref_runs)) else text])
        shows = self.interval
        legend = f"Each interval covers {covers_words(shows, t.n_test, t.n_groups)}."
        if fallback:
            legend += (f" {SEED_ONLY_MARK}: seed-only t-CI (a run of the cell has no per-image predictions, or they "
                       f"were made on other test images): it covers {covers_words('seeds', t.n_test)}.")
        if t.partly_grouped:
            legend += " Only the intervals of runs whose predictions name the image groups resample them."
        return [self.heading(f"{label} (%), final checkpoint, mean ± {interval_words(shows)} "
                             f"({images_words(t.n_test)})"), "",
                *_table(self.header(with_ref), rows), "", legend, "", _best_legend(t, key), "",
                *(_freshness_legend(t) if key == "accuracy" else [])]

    def delta_table(self) -> list[str]:
        t = self.t
        others = [m for m in t.methods if m != t.baseline]
        if t.baseline is None or not others:
            return []
        rows, overs = [], set()
        for m in others:
            row = [m]
            for b in t.budgets:
                c = t.cell(m, b)
                d = c.delta if c is not None else None
                if d is None:
                    row.append(DASH)
                    continue
                overs.add(d.over)
                text = _cell(d.mean, d.ci95, d.n, signed=True)
                if d.p is not None:
                    text += f" {p_text('p', d.p)}{SIG_MARK if d.p < ALPHA else ''}"
                    text += f" {p_text('Holm', c.p_holm)}{HOLM_MARK if c.p_holm < ALPHA else ''}"
                    text += f" MDD={pct(d.mdd())}"
                base = t.cell(t.baseline, b)
                mark = t.mark(c.runs + (base.runs if base is not None else []))
                row.append(f"{text} {mark}" if mark else text)
            rows.append(row)
        over = " or ".join(sorted(overs, reverse=True)) or "seeds"
        covers = []
        if "seeds + test images" in overs:
            covers.append(f"over seeds + test images, {covers_words('combined', t.n_test, t.n_groups)}")
        if "seeds" in overs:
            covers.append(f"over seeds only (a side without per-image predictions), "
                          f"{covers_words('seeds', t.n_test)}")
        return [
            self.heading(f"Δ accuracy vs `{t.baseline}` (paired over shared {over}, percentage points)"),
            "",
            *_table(self.header(False), rows),
            "",
            (f"n = seeds shared with the baseline. Each 95% CI covers the expected difference: "
             f"{'; '.join(covers)}. p: two-sided, of no difference, consistent with the interval at every level "
             f"({SIG_MARK}: p < {ALPHA}, uncorrected). Holm: the p-value adjusted by Holm–Bonferroni over the "
             f"{t.holm_family} comparisons of this table ({HOLM_MARK}: significant after the correction; the "
             "figure draws each difference with the interval at the level Holm tested it, which excludes 0 exactly "
             f"for {HOLM_MARK}). MDD: the minimum detectable difference, the true difference this comparison would "
             f"detect with {POWER:.0%} power at p < {ALPHA} (before the correction), from the variance it "
             "estimates; with few seeds that variance is itself uncertain. `ferbench plan-seeds` gives the seeds "
             "a target difference needs."),
            "",
        ]

    def per_class_tables(self) -> list[str]:
        t = self.t
        names = t.class_names
        if not names:
            return []
        out = []
        for b in t.budgets:
            rows = []
            for m in t.methods:
                c = t.cell(m, b)
                if c is None or not c.per_class_recall:
                    continue
                rec = c.per_class_recall
                mark = t.mark(c.runs)
                rows.append([m, *(pct(rec[k]) if k < len(rec) and rec[k] is not None else DASH
                                  for k in range(len(names))), f"{c.n} {mark}" if mark else str(c.n)])
            if rows:
                out += [self.heading(f"per-class recall (%) at {budget_label(t.protocol, b)}, mean over seeds"), "",
                        *_table(["Method", *names, "n"], rows), ""]
        if out:
            out += [("Each value is the recall of a true class (the diagonal of the row-normalised confusion matrix), "
                     "classes in the canonical label order; the whole matrices are in the figures linked above."), ""]
        return out

    def best_on_test_table(self) -> list[str]:
        t = self.t
        with_ref = "best_accuracy" in t.reference
        if not with_ref and not any("best_accuracy" in r.metrics for r in t.runs):
            return []
        rows = []
        for m in t.methods:
            row = [m]
            for b in t.budgets:
                c = t.cell(m, b)
                s = c.summaries.get("best_accuracy") if c is not None else None
                text = f"{pct(s.mean)} (n={s.n})" if s else DASH
                row.append(f"{text} {mark}" if s and (mark := t.mark(c.runs)) else text)
            rows.append(row + ([DASH] if with_ref else []))
        if with_ref:
            s = t.reference["best_accuracy"]
            rows.append([REFERENCE_METHOD, *(DASH for _ in t.budgets), f"{pct(s.mean)} (n={s.n})"])
        return [
            self.heading("best-on-test accuracy (%), mean over seeds — optimistic, NOT used for ranking"),
            "",
            *_table(self.header(with_ref), rows),
            "",
            ("Best-on-test is the maximum test accuracy over all evaluations of a run, i.e. a checkpoint "
             "chosen on the test set; it is shown for comparison with papers that report it."),
            "",
        ]

    def provenance(self) -> list[str]:
        t = self.t
        runs = t.runs + t.ref_runs
        lines = [(f"#### Provenance — {_where(t, ', ')} "
                 f"({len(t.runs)} runs + {len(t.ref_runs)} `{REFERENCE_METHOD}` runs)"), ""]
        lines.append(f"- git commit: {', '.join(f'`{c}`' for c in _distinct(runs, _short_commit))}")
        lines += _fingerprint_lines(t, runs)
        path_based = sum(_get(r.record, "split.identity") is None for r in runs)
        lines.append("- split manifests (sha256, first 12 hex) by budget, `seed: sha`"
                     + (f" ({path_based} of {len(runs)} runs' manifests predate content identities: their sha256 "
                        "depends on the folder and file times they were prepared from, not only on the data)"
                        if path_based else "; identities of content, the same on any machine and in any folder")
                     + ":")
        mismatch = False
        groups = [(budget_label(t.protocol, b), [r for r in t.runs if r.budget == b]) for b in t.budgets]
        if t.ref_runs:
            groups.append((f"{ALL_LABELS} ({REFERENCE_METHOD})", t.ref_runs))
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
        with_preds = sum(r.correct is not None for r in runs)
        tests = _distinct(runs, lambda rec: _get(rec, "metrics.n_test"))
        lines.append(f"- test images: {', '.join(tests)}; per-image predictions kept by {with_preds} of "
                     f"{len(runs)} runs")

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
        walls = [float(w) for r in runs if is_number(w := r.record.get("wall_time_s"))]
        if walls:
            lines.append(f"- wall time: {math.fsum(walls):.1f} s total over {len(walls)} runs, "
                         f"{math.fsum(walls) / len(walls):.1f} s mean per run")
        else:
            lines.append("- wall time: not recorded")
        lines.append("")
        return lines

    def reproduction_table(self) -> list[str]:
        t = self.t
        if t.recipe == HARNESS or not t.reproduction:
            return []
        sources: dict[tuple[str, str], int] = {}
        rows = []
        for r in t.reproduction:
            rows.append([r.method, budget_label(t.protocol, r.budget), *_reported_text(r, sources),
                         *_reproduced_text(r, self.interval)])
        notes = [f"- [{i}] {paper} — {source}" for (paper, source), i in sorted(sources.items(), key=lambda kv: kv[1])]
        return [
            self.heading("reproduction: reported vs reproduced accuracy (%)"),
            "",
            *_table(["Method", "Budget", "Reported", "Final", "Best-on-test", "Final − reported",
                     "Best − reported"], rows),
            "",
            (f"Reported: the paper's number (`bench/results/reported.yaml`), with how it was selected — final: the "
             "last checkpoint; best: the best epoch on the test set. Final: the reproduced final checkpoint, mean ± "
             f"{interval_words(self.interval)}, as in the accuracy table below, which covers "
             f"{covers_words(self.interval, t.n_test, t.n_groups)}. Best-on-test: mean over seeds of each "
             "run's best test accuracy over its evaluations, the paper-style number. Gaps in percentage points from "
             "the unrounded means; compare like with like (a final number with Final − reported, a best one with "
             f"Best − reported). {DASH}: not published, or not run."),
            "",
            *notes,
            *([""] if notes else []),
        ]


def _freshness_legend(t: ProtocolTable) -> list[str]:
    """What `stale` and `mixed` mean in this table, when a cell shows one."""
    runs = [r.run_id for r in t.runs + t.ref_runs]
    stale = legend(t.freshness, runs)
    marks = {t.mark(c.runs) for c in t.cells.values()} | {t.mark(t.ref_runs)}
    out = []
    if stale:
        out.append("stale: trained by code that behaved differently from the code installed now (behavioural "
                   "fingerprints, bench/engine/fingerprint.py); `ferbench sweep SPEC --rerun-stale` re-runs them. "
                   + " ".join(stale))
    if any("mixed" in m for m in marks):
        out.append("mixed: the cell's runs were trained by code of different behaviour (fingerprints differ); its "
                   "mean mixes them.")
    return [line for x in out for line in (x, "")]


#: the start of a board's provenance line naming each fingerprint its records carry (`read_board_fingerprints`)
FINGERPRINTS_LINE = "- fingerprints (key, digest: current / stale / unknown against the code installed when rendered"
_LISTED = re.compile(r"`([^`]+)` `([0-9a-f]{12})`")


def _fingerprint_lines(t: ProtocolTable, runs: list[Run]) -> list[str]:
    """Provenance: each fingerprint the table's records carry, and whether it is the current code's."""
    seen: dict[str, set[str]] = {}
    for r in runs:
        fp = r.record.get("fingerprint")
        state = t.freshness[r.run_id].state if r.run_id in t.freshness else "not assessed"
        key = fp.get("key", "?") if isinstance(fp, Mapping) else "none"
        digest = fp.get("digest", "?") if isinstance(fp, Mapping) else "none"
        seen.setdefault(f"`{key}` `{digest}`", set()).add(state)
    counts = {s: sum(t.freshness[r.run_id].state == s for r in runs if r.run_id in t.freshness)
              for s in ("current", "stale", "unknown")}
    head = FINGERPRINTS_LINE
    head += ")" if t.freshness else ", not assessed)"
    lines = [f"{head}: " + ", ".join(f"{k} ({'/'.join(sorted(v))})" for k, v in sorted(seen.items()))]
    if t.freshness:
        lines.append(f"- records: {counts['current']} current, {counts['stale']} stale, {counts['unknown']} unknown")
    return lines


def _best_legend(t: ProtocolTable, key: str) -> str:
    family = t.best_family.get(key, 0)
    if family == 0:  # one entry per column: nothing is ranked, bolded or compared
        return "No column has two entries to rank or compare. Best-on-test is not used for ranking."
    return (f"**Bold**: the highest mean of a column with ≥ 2 entries (the `{REFERENCE_METHOD}` reference "
            f"excluded). {TIE_MARK}: not distinguishable from the best at 95%: no entry of its column is "
            f"significantly above it, in paired comparisons of every pair of entries of a column (over shared seeds, "
            f"and test images where both kept predictions), Holm-adjusted over the {family} pairwise comparisons of "
            f"this table. An entry neither bold nor {TIE_MARK} is significantly below another entry of its column, "
            "hence below the best, at family-wise 95%. Best-on-test is not used for ranking.")


def _where(t: ProtocolTable, sep: str = " — ") -> str:
    """`rafdb — protocol fraction` (harness, as always), `rafdb — recipe adacm — protocol total` (a recipe)."""
    recipe = "" if t.recipe == HARNESS else f"recipe {t.recipe}{sep}"
    return f"{t.dataset}{sep}{recipe}protocol {t.protocol}"


def _reported_text(r: Reproduction, sources: dict[tuple[str, str], int]) -> list[str]:
    if r.reported is None:
        return [DASH]
    key = (r.reported.paper, r.reported.source)
    n = sources.setdefault(key, len(sources) + 1)
    return [f"{r.reported.value:g} ({r.reported.selection}) [{n}]"]


def _reproduced_text(r: Reproduction, interval: str) -> list[str]:
    c = r.cell
    if c is None:
        return [DASH] * 4
    half, fell_back = c.shown_interval("accuracy", interval)
    final = _cell(c.summaries["accuracy"].mean, half, c.n) + (f" {SEED_ONLY_MARK}" if fell_back else "")
    best = c.summaries.get("best_accuracy")
    gaps = [r.gap("accuracy"), r.gap("best_accuracy")]
    return [final, f"{pct(best.mean)} (n={best.n})" if best else DASH,
            *(DASH if g is None else pct(g, signed=True) for g in gaps)]


def _get(record: Mapping, dotted: str) -> object:
    cur: object = record
    for part in dotted.split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


def _distinct(runs: Iterable[Run], fn: Callable[[Mapping], object]) -> list[str]:
    return sorted({"unknown" if (v := fn(r.record)) is None else str(v) for r in runs})


def _short_commit(record: Mapping) -> str:
    commit = record.get("git_commit")
    if not commit:
        return "none recorded"
    return str(commit)[:12] + ("+dirty" if str(commit).endswith("+dirty") else "")


def file_stem(dataset: str, recipe: str) -> str:
    """The name every file of a leaderboard starts with: the dataset (harness), `<dataset>_recipe-<recipe>`."""
    return dataset if recipe == HARNESS else f"{dataset}_recipe-{recipe}"


def confusion_name(dataset: str, t: ProtocolTable, budget: float) -> str:
    label = budget_label(t.protocol, budget).replace("%", "pct").replace("/", "_").replace("=", "")
    return f"{file_stem(dataset, t.recipe)}_confusion_{t.protocol}_{label}.png"


def _recipe_preamble(dataset: str, recipe: str) -> list[str]:
    return [(f"**Protocol: reference recipe `{recipe}`** — each method trained the way its official code trains "
             f"it, to reproduce its paper. Not comparable with the harness leaderboard (`{dataset}.md`), where every "
             "method shares one training protocol; each protocol section opens with the reproduction table (the "
             "paper's number, the reproduced final and best-on-test accuracy, their gaps)."), ""]


def _render_markdown(dataset: str, tables: list[ProtocolTable], interval: str, n_records: int) -> str:
    interval = "combined" if any(t.shown_interval(interval) == "combined" for t in tables) else "seeds"
    intervals = ("mean over seeds ± 95% half-width over seeds and test images (seed-to-seed variation and "
                 "test-set sampling, bench/results/uncertainty.py): it covers the metric expected of a new training "
                 "run (new seed) on new test images from the population the test set samples" + (
                     "; a cell whose runs lack per-image predictions falls back to the seed-only t-CI (‡), which "
                     "covers the metric expected on these same test images only"
                     if any(t.falls_back(interval) for t in tables) else "") if interval == "combined" else
                 "mean over seeds ± 95% Student-t half-width t(0.975, n−1)·s/√n over seeds only (seed-to-seed "
                 "variation): it covers the metric expected of a new training run on these same test images; "
                 "test-set sampling noise is not in these intervals")
    assumed = ("Assumed: seeds are independent runs; test images are independent draws from the population. Images "
               "that share a subject or a video are not, and make intervals over test images too narrow; where "
               "the predictions carry a group id per image (subject, video) the intervals resample the groups "
               "instead." if interval == "combined" else "Assumed: seeds are independent runs.")
    recipe = tables[0].recipe
    stem = file_stem(dataset, recipe)
    lines = [
        f"# Leaderboard: {dataset}" + ("" if recipe == HARNESS else f" — reference recipe `{recipe}`"),
        "",
        *([] if recipe == HARNESS else _recipe_preamble(dataset, recipe)),
        (f"Generated by `bench.results.leaderboard` from {n_records} run records; regenerating from the same "
         "records gives byte-identical files."),
        f"Cells: {intervals}; no interval for n = 1.",
        assumed,
        ("Ranking uses the final checkpoint; best-on-test accuracy is shown separately, flagged as "
         "optimistic, and is not used for ranking."),
        "",
        f"![{dataset}: accuracy by method and label budget]({stem}.png)",
        "",
    ]
    for t in tables:
        md = _Markdown(t, interval)
        lines += [f"## Protocol `{t.protocol}`" if recipe == HARNESS else f"## Recipe `{recipe}`, protocol "
                  f"`{t.protocol}`", ""]
        lines += md.reproduction_table()
        for key, label, required in FINAL_METRICS:
            if required or any(key in r.metrics for r in t.runs + t.ref_runs):
                lines += md.metric_table(key, label)
        lines += md.delta_table()
        figures = [f"[{budget_label(t.protocol, b)}]({confusion_name(dataset, t, b)})" for b in t.budgets
                   if any(c.confusion is not None for c in t.cells.values() if c.budget == b)]
        if figures:
            lines += [f"Confusion matrices (row-normalised, mean over seeds): {', '.join(figures)}.", ""]
        lines += md.per_class_tables()
        lines += md.best_on_test_table()
        lines += md.provenance()
    return "\n".join(lines).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------------------------
# files


def _accuracy_points(t: ProtocolTable, interval: str) -> dict[str, dict[float, Summary]]:
    """method -> budget -> (mean, shown half-width) of accuracy, for the plots."""
    out: dict[str, dict[float, Summary]] = {}
    for m in t.methods:
        for b in t.budgets:
            c = t.cell(m, b)
            if c is not None:
                s = c.summaries["accuracy"]
                out.setdefault(m, {})[b] = Summary(s.n, s.mean, s.std, c.shown_interval("accuracy", interval)[0])
    return out


def _reference_point(t: ProtocolTable, interval: str) -> Summary | None:
    if "accuracy" not in t.reference:
        return None
    s = t.reference["accuracy"]
    return Summary(s.n, s.mean, s.std, reference_interval(t, "accuracy", interval))


def _plot(dataset: str, tables: list[ProtocolTable], path: Path, interval: str) -> Path:
    interval = "combined" if any(t.shown_interval(interval) == "combined" for t in tables) else "seeds"
    reference = _reference_point(tables[0], interval)
    label = f"{REFERENCE_METHOD} (all labels)"
    if all(len(t.budgets) > 1 for t in tables):
        return plot_budget_curves(dataset, {t.protocol: _accuracy_points(t, interval) for t in tables}, path,
                                  reference=reference, reference_label=label, interval_label=interval_words(interval))
    panels = []
    for t in tables:
        # the table's inference: each Δ with its interval at the level Holm's step-down tested it, so that it
        # excludes 0 exactly when the Δ table marks it significant after the correction
        deltas = {(m, b): (c.delta.mean, None if c.holm_level is None else c.delta.half_width(c.holm_level))
                  for m in t.methods for b in t.budgets if (c := t.cell(m, b)) is not None and c.delta is not None}
        panels.append((t.protocol, _accuracy_points(t, interval), t.baseline, deltas, t.holm_family))
    return plot_single_budget(dataset, panels, path, interval_words(interval), reference=reference,
                              reference_label=label)


def _fingerprints_file(path: Path, runs: list[Run]) -> Path | None:
    """The fingerprints a file set was built from, by key (with the commits of its records), for the test that
    keeps committed leaderboards current; None when its records carry none."""
    out: dict[str, dict] = {}
    for r in runs:
        fp = r.record.get("fingerprint")
        if isinstance(fp, Mapping) and "vector" in fp:
            entry = out.setdefault(fp["key"], {**{k: fp[k] for k in ("key", "probe", "digest", "vector", "labels",
                                                                     "exact", "settings") if k in fp},
                                               "commits": []})
            commit = str(r.record.get("git_commit") or "unknown")
            if commit not in entry["commits"]:
                entry["commits"] = sorted([*entry["commits"], commit])
            if entry["digest"] != fp.get("digest"):
                entry.setdefault("other_digests", sorted({*entry.get("other_digests", []), fp.get("digest")}))
    if not out:
        return None
    path.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def render_leaderboards(records: list[dict], out_dir: Path, baseline: str = "supervised", *,
                        predictions: Mapping[str, np.ndarray] | None = None, formats: Sequence[str] = ("md",),
                        interval: str = "combined",
                        reported: Sequence[Reported] | str | Path | None = None,
                        freshness: Mapping[str, Freshness] | None = None) -> list[Path]:
    """Write, for every dataset in `records`: `<dataset>.md` with `<dataset>.png` and one confusion-matrix
    figure per protocol and budget, plus `<dataset>.tex` and `<dataset>.csv` when `formats` asks for them.
    Records of a reference recipe (`config.recipe` other than "harness") get the same set of files under
    `<dataset>_recipe-<recipe>`, never mixed with the harness ones, with their papers' numbers from `reported`
    (entries, or a reported-numbers file; None: the shipped `bench/results/reported.yaml`).

    `predictions` maps run ids to their (2, N) test targets and predictions (`bench.results.record`); cells
    whose runs all have them get accuracy intervals over seeds and test images (`interval="combined"`), the
    others the seed-only t interval (`interval="seeds"` shows that everywhere). `baseline` names the method the
    Δ table is paired against. `freshness` (run id -> bench/results/freshness.py's assessment) marks the cells
    whose records no longer describe the code `stale` (or `mixed`), in every format; each file set gets a
    `<stem>.fingerprints.json` of the fingerprints its records carry. Raises FERBenchError naming the run and the
    field for a malformed record, and for two records of one cell and seed, before anything is written. Returns
    the written paths, sorted.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise FERBenchError(f"leaderboard formats {','.join(formats)}: expected some of {', '.join(FORMATS)}")
    if interval not in INTERVALS:
        raise FERBenchError(f"leaderboard interval {interval!r}: expected one of {', '.join(INTERVALS)}")
    predictions = predictions or {}
    runs = sorted((parse_run(rec, i, predictions.get(rec.get("run_id")) if isinstance(rec, Mapping) else None)
                   for i, rec in enumerate(records)), key=lambda r: r.run_id)
    entries: Sequence[Reported] = ()
    if any(r.recipe != HARNESS for r in runs):  # harness-only renders never read (or depend on) the file
        entries = reported if isinstance(reported, Sequence) and not isinstance(reported, str) else \
            load_reported(reported)
    tables = build_recipe_tables(runs, baseline, entries)
    for protocol_tables in tables.values():
        for t in protocol_tables:
            t.freshness = dict(freshness or {})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for (dataset, recipe), protocol_tables in tables.items():
        stem = file_stem(dataset, recipe)
        title = dataset if recipe == HARNESS else f"{dataset} (recipe {recipe})"
        n_records = sum(r.dataset == dataset and r.recipe == recipe for r in runs)
        if "md" in formats:
            md = out_dir / f"{stem}.md"
            md.write_text(_render_markdown(dataset, protocol_tables, interval, n_records), encoding="utf-8")
            written.append(md)
        written.append(_plot(title, protocol_tables, out_dir / f"{stem}.png", interval))
        for t in protocol_tables:
            for b in t.budgets:
                mats = {m: c.confusion for m in t.methods if (c := t.cell(m, b)) is not None
                        and c.confusion is not None}
                if mats:
                    written.append(plot_confusions(f"{title} — {t.protocol} {budget_label(t.protocol, b)}",
                                                   mats, t.class_names, out_dir / confusion_name(dataset, t, b)))
        fingerprints = _fingerprints_file(out_dir / f"{stem}.fingerprints.json",
                                          [r for r in runs if r.dataset == dataset and r.recipe == recipe])
        if fingerprints is not None:
            written.append(fingerprints)
        if "tex" in formats or "csv" in formats:
            from bench.results.export import write_csv, write_latex

            if "tex" in formats:
                written.append(write_latex(dataset, protocol_tables, interval, out_dir / f"{stem}.tex"))
            if "csv" in formats:
                written.append(write_csv(protocol_tables, out_dir / f"{stem}.csv"))
    if not written:
        raise FERBenchError("leaderboard: no records to render")
    return sorted(written)


def read_board_fingerprints(path: str | Path) -> dict[str, dict]:
    """The fingerprints a rendered board was built from (`<stem>.fingerprints.json`), checked against the board
    beside it (`<stem>.md`): every entry a whole fingerprint of its own key whose digest names its values, and the
    (key, digest) pairs exactly those the board's provenance lists. Raises FERBenchError naming the file and what
    does not hold: a file edited after rendering, or one copied from another board."""
    from bench.results.record import fingerprint_problem, read_json_file

    path = Path(path)
    entries = read_json_file(path, "a leaderboard's fingerprints (fingerprints by key)")
    if not isinstance(entries, dict) or not entries:
        raise FERBenchError(f"{path}: expected a non-empty mapping of keys to fingerprints")
    pairs = set()
    for key, fp in entries.items():
        problem = fingerprint_problem({k: v for k, v in fp.items() if k not in ("commits", "other_digests")}
                                      if isinstance(fp, dict) else fp, key)
        if problem:
            raise FERBenchError(f"{path}: entry {key!r}: {problem}")
        pairs |= {(key, d) for d in [fp["digest"], *fp.get("other_digests", [])]}
    board = path.with_name(path.name.removesuffix(".fingerprints.json") + ".md")
    if not board.is_file():
        raise FERBenchError(f"{path}: its board {board.name} is not beside it")
    listed = {pair for line in board.read_text(encoding="utf-8").splitlines() if line.startswith(FINGERPRINTS_LINE)
              for pair in _LISTED.findall(line)}
    if listed != pairs:
        odd = sorted(pairs ^ listed)[0]
        where = "is not listed in" if odd in pairs else "is listed in"
        raise FERBenchError(f"{path}: fingerprint {odd[0]} {odd[1]} {where} {board.name}"
                            + ("" if odd in pairs else " but not in this file")
                            + ": the file does not belong to its board (edited or copied after rendering)")
    return entries
