"""Leaderboard exports from the same aggregation as the markdown (`bench.results.aggregate`): LaTeX for a paper
(booktabs, ready for `\\input`) and CSV for pandas (one row per cell). Deterministic like the markdown. A reference
recipe's files add its papers' numbers: a reproduction table in LaTeX, reported/gap columns in the CSV."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

from bench.results.aggregate import (
    ALPHA,
    POWER,
    REFERENCE_METHOD,
    Cell,
    ProtocolTable,
    Reproduction,
    reference_interval,
)
from bench.results.fmt import covers_words, images_words, interval_words, p_text, pct
from bench.results.plots import budget_label
from bench.results.reported import HARNESS

_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)


def _num(x: float | None, signed: bool = False) -> str:
    return "" if x is None else pct(x, signed)


def _tex_cell(mean: float, half: float | None, n: int, show_n: bool, signed: bool = False) -> str:
    text = _num(mean, signed) + (rf" $\pm$ {_num(half)}" if half is not None else "")
    return text + (rf"\textsubscript{{n={n}}}" if show_n else "")


def _tabular(header: list[str], rows: list[list[str]]) -> list[str]:
    return [rf"\begin{{tabular}}{{l{'c' * (len(header) - 1)}}}", r"\toprule", " & ".join(header) + r" \\",
            r"\midrule", *(" & ".join(r) + r" \\" for r in rows), r"\bottomrule", r"\end{tabular}"]


def _what(t: ProtocolTable) -> str:
    """`rafdb, protocol fraction` as in every harness caption; a recipe table names its recipe too."""
    recipe = "" if t.recipe == HARNESS else f"recipe {tex_escape(t.recipe)}, "
    return f"{tex_escape(t.dataset)}, {recipe}protocol {tex_escape(t.protocol)}"


def _latex_reproduction(t: ProtocolTable, interval: str, label: str) -> list[str]:
    if t.recipe == HARNESS or not t.reproduction:
        return []
    rows = []
    for r in t.reproduction:
        c, rep = r.cell, r.reported
        row = [tex_escape(r.method), tex_escape(budget_label(t.protocol, r.budget)),
               f"{rep.value:g} ({rep.selection})" if rep else "--"]
        if c is None:
            row += ["--"] * 4
        else:
            best = c.summaries.get("best_accuracy")
            half, fell_back = c.shown_interval("accuracy", interval)
            row += [_tex_cell(c.summaries["accuracy"].mean, half, c.n, True) + (r"$^\ddagger$" if fell_back else ""),
                    _tex_cell(best.mean, None, best.n, True) if best else "--",
                    *("--" if g is None else _num(g, signed=True) for g in (r.gap("accuracy"),
                                                                             r.gap("best_accuracy")))]
        rows.append(row)
    sources = sorted({f"{rep.paper} ({rep.source})" for r in t.reproduction if (rep := r.reported) is not None})
    return ["", r"\begin{table}[t]", r"\centering",
            rf"\caption{{{_what(t)}: reported vs reproduced top-1 accuracy (\%). Reported: as published (final: last "
            r"checkpoint; best: best epoch on the test set). Final: mean $\pm$ " + tex_escape(interval_words(interval))
            + ", which covers " + tex_escape(covers_words(interval, t.n_test, t.n_groups))
            + r" ($^\ddagger$: the seed-only t-CI); best-on-test: mean over seeds "
            r"of each run's best test accuracy. Gaps in percentage points. Sources: "
            + tex_escape("; ".join(sources) or "none") + ".}",
            rf"\label{{{label}-reported}}",
            *_tabular(["Method", "Budget", "Reported", "Final", "Best-on-test", "Final $-$ reported",
                       "Best $-$ reported"], rows), r"\end{table}"]


def tex_label(dataset: str, t: ProtocolTable) -> str:
    """`tab:<dataset>[-<recipe>]-<protocol>-<6 hex>`: the hex digits name the table's runs (sha256 of their ids), so
    two leaderboards of one dataset and protocol from different sweeps never share a label, and re-rendering the
    same records keeps it."""
    recipe = "" if t.recipe == HARNESS else f"-{t.recipe}"
    runs = hashlib.sha256("\n".join(sorted(r.run_id for r in t.runs + t.ref_runs)).encode()).hexdigest()[:6]
    return f"tab:{dataset}{recipe}-{t.protocol}-{runs}".replace("_", "-")


def _latex_protocol(dataset: str, t: ProtocolTable, interval: str) -> list[str]:
    interval = t.shown_interval(interval)
    ns = {c.n for c in t.cells.values()} | ({t.reference["accuracy"].n} if "accuracy" in t.reference else set())
    show_n = len(ns) > 1
    with_ref = "accuracy" in t.reference
    header = ["Method", *(tex_escape(budget_label(t.protocol, b)) for b in t.budgets)] + (
        ["all labels"] if with_ref else [])
    rows, fallback = [], False
    for m in t.methods:
        row = [tex_escape(m)]
        for b in t.budgets:
            c = t.cell(m, b)
            if c is None:
                row.append("--")
                continue
            half, fell_back = c.shown_interval("accuracy", interval)
            text = _tex_cell(c.summaries["accuracy"].mean, half, c.n, show_n)
            if c.best.get("accuracy"):
                text = rf"\textbf{{{text}}}"
            elif c.marked.get("accuracy"):
                text += r"$^\dagger$"
            if fell_back:
                text += r"$^\ddagger$"
                fallback = True
            if mark := t.mark(c.runs):
                text += rf"\textsuperscript{{{mark}}}"
            row.append(text)
        rows.append(row + (["--"] if with_ref else []))
    if with_ref:
        ref = t.reference["accuracy"]
        rows.append([tex_escape(REFERENCE_METHOD), *("--" for _ in t.budgets),
                     _tex_cell(ref.mean, reference_interval(t, "accuracy", interval), ref.n, show_n)])
    label = tex_label(dataset, t)
    seeds = "" if show_n else f" over {ns.pop()} seeds"
    family = t.best_family.get("accuracy", 0)
    out = [r"\begin{table}[t]", r"\centering",
           rf"\caption{{{_what(t)}: top-1 accuracy (\%) of the final "
           rf"checkpoint on {tex_escape(images_words(t.n_test))}, mean{seeds} $\pm$ "
           rf"{tex_escape(interval_words(interval))}, which covers "
           rf"{tex_escape(covers_words(interval, t.n_test, t.n_groups))}. "
           + (r"Bold: the highest mean of a column with at least 2 entries; $^\dagger$: not distinguishable from the "
              r"best at 95\% (no entry of the column significantly above it; paired comparisons of all pairs of a "
              rf"column, Holm-adjusted over the {family} of the table); neither: significantly below the best."
              if family else "")
           + (r" $^\ddagger$: seed-only t-CI (a run without per-image predictions), which covers "
              + tex_escape(covers_words("seeds", t.n_test)) + "." if fallback else "")
           + (r" \textsuperscript{stale}: trained by code that behaved differently from the current code "
              r"(behavioural fingerprints); \textsuperscript{mixed}: the cell's runs were trained by code of "
              r"different behaviour." if any(t.mark(c.runs) for c in t.cells.values()) else "") + "}",
           rf"\label{{{label}}}", *_tabular(header, rows), r"\end{table}",
           *_latex_reproduction(t, interval, label)]
    others = [m for m in t.methods if m != t.baseline]
    if t.baseline is None or not others:
        return out
    drows = []
    for m in others:
        row = [tex_escape(m)]
        for b in t.budgets:
            c = t.cell(m, b)
            d = c.delta if c is not None else None
            if d is None:
                row.append("--")
                continue
            text = _tex_cell(d.mean, d.ci95, d.n, show_n, signed=True)
            if d.p is not None:
                p = p_text("", c.p_holm).lstrip("=")  # "0.171" or "<0.001"
                text += f" (${p}$; {_num(d.mdd())})"
                text = rf"\textbf{{{text}}}" if c.p_holm < ALPHA else text
            row.append(text)
        drows.append(row)
    return out + ["", r"\begin{table}[t]", r"\centering",
                  rf"\caption{{{_what(t)}: $\Delta$ accuracy "
                  rf"(percentage points) vs {tex_escape(t.baseline)}, paired, mean $\pm$ 95\% CI of the expected "
                  rf"difference; in parentheses, the Holm--Bonferroni adjusted p-value over the {t.holm_family} "
                  rf"comparisons of the table (bold: significant after the correction), then the minimum detectable "
                  rf"difference (the true difference detected with {POWER * 100:.0f}\% power at $p<{ALPHA}$ before "
                  r"the correction).}",
                  rf"\label{{{label}-delta}}", *_tabular(header[:len(t.budgets) + 1], drows), r"\end{table}"]


def write_latex(dataset: str, tables: list[ProtocolTable], interval: str, path: Path) -> Path:
    """`<dataset>.tex`: per protocol, the accuracy table and the Δ table (needs `\\usepackage{booktabs}`)."""
    recipe = tables[0].recipe if tables else HARNESS
    name = dataset if recipe == HARNESS else f"{dataset}, reference recipe {recipe}"
    lines = [f"% FERBench leaderboard: {name}. Generated from run records by bench.results.export;",
             r"% \input{} it in a document with \usepackage{booktabs}."]
    for t in tables:
        lines += ["", *_latex_protocol(dataset, t, interval)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


CSV_COLUMNS = ("dataset", "protocol", "budget", "budget_label", "method", "n", "seeds", "n_test", "image_groups",
               "accuracy", "accuracy_ci95_seeds", "accuracy_ci95_combined",
               "mean_class_accuracy", "mean_class_accuracy_ci95_seeds", "mean_class_accuracy_ci95_combined",
               "macro_f1", "macro_f1_ci95_seeds", "macro_f1_ci95_combined",
               "best_on_test_accuracy", "best", "vs_best", "delta_vs", "delta", "delta_ci95", "delta_over",
               "p_value", "p_holm", "delta_holm_level", "delta_ci_holm", "delta_mdd80", "delta_sd_seed",
               "delta_se_image", "freshness")
# appended in a reference recipe's CSV only, so a harness CSV keeps exactly the columns above
RECIPE_COLUMNS = ("recipe", "reported_accuracy", "reported_selection", "reported_paper", "reported_source",
                  "final_minus_reported", "best_minus_reported")
_METRIC_KEYS = ("accuracy", "mean_class_accuracy", "macro_f1")


def _pct4(x: float | None) -> str:
    return "" if x is None else f"{round(x * 100.0, 4) + 0.0:.4f}"


def _p6(x: float | None) -> str:
    return "" if x is None else f"{x:.6g}"


def _metric_columns(summaries: dict, crossed: dict, key: str) -> dict[str, str]:
    s, x = summaries.get(key), crossed.get(key)
    return {key: _pct4(s.mean if s else None), f"{key}_ci95_seeds": _pct4(s.ci95 if s else None),
            f"{key}_ci95_combined": _pct4(x.ci95 if x else None)}


def _groups(crossed: dict) -> str:
    """How many image groups the intervals over test images resample ("" when images are the units)."""
    return " ".join(sorted({str(x.n_groups) for x in crossed.values() if x.grouped}))


def _recipe_columns(t: ProtocolTable, r: Reproduction | None) -> list[str]:
    if t.recipe == HARNESS:
        return []
    e = r.reported if r is not None else None
    if r is None or e is None:
        return [t.recipe, "", "", "", "", "", ""]
    return [t.recipe, _pct4(r.reported_fraction), e.selection, e.paper, e.source, _pct4(r.gap("accuracy")),
            _pct4(r.gap("best_accuracy"))]


def _vs_best(c: Cell) -> str:
    """"best" | "not distinguishable" (†) | "below" (significantly, all-pairs Holm) | "" (alone in its column)."""
    if "accuracy" not in c.best:
        return ""
    return "best" if c.best["accuracy"] else "below" if c.below_best.get("accuracy") else "not distinguishable"


def _delta_columns(c: Cell) -> dict[str, str]:
    d = c.delta
    if d is None:
        return {}
    est = d.est
    return {"delta_vs": "", "delta": _pct4(d.mean), "delta_ci95": _pct4(d.ci95), "delta_over": d.over,
            "p_value": _p6(d.p), "p_holm": _p6(c.p_holm), "delta_holm_level": _p6(c.holm_level),
            "delta_ci_holm": _pct4(None if c.holm_level is None else d.half_width(c.holm_level)),
            "delta_mdd80": _pct4(d.mdd()),
            "delta_sd_seed": _pct4(None if est is None else (est.v_seed * est.n_seeds) ** 0.5),
            "delta_se_image": _pct4(None if est is None else est.v_image ** 0.5)}


def write_csv(tables: list[ProtocolTable], path: Path) -> Path:
    """`<dataset>.csv`: one row per (protocol, budget, method) cell and one per reference; metrics in percent
    (4 decimals) with their seed-only and seeds + test images intervals, the test set's size, how each entry
    compares with the best of its column, the paired Δ vs the baseline with its raw and Holm p-values, Holm's
    level and interval, its minimum detectable difference at 80% power and its variance parts (SD of one
    seed's difference, SE from the test images: what `ferbench plan-seeds` takes). A reference recipe's CSV adds
    RECIPE_COLUMNS, and a row (n = 0) for each published cell not run."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS + (RECIPE_COLUMNS if any(t.recipe != HARNESS for t in tables) else ()))

    def row(values: dict[str, object], extra: list[str]) -> None:
        w.writerow([values.get(k, "") for k in CSV_COLUMNS] + extra)

    for t in tables:
        repro = {(r.method, r.budget): r for r in t.reproduction}
        n_test = " ".join(str(n) for n in t.n_test)
        for b in t.budgets:
            for m in t.methods:
                c = t.cell(m, b)
                if c is None:
                    continue
                s = c.summaries
                values = {"dataset": t.dataset, "protocol": t.protocol, "budget": f"{b:g}",
                          "budget_label": budget_label(t.protocol, b), "method": m, "n": c.n,
                          "seeds": " ".join(str(r.seed) for r in c.runs), "n_test": n_test,
                          "image_groups": _groups(c.crossed),
                          "best_on_test_accuracy": _pct4(s["best_accuracy"].mean if "best_accuracy" in s else None),
                          "best": int(bool(c.best.get("accuracy"))), "vs_best": _vs_best(c), **_delta_columns(c),
                          "freshness": t.freshness_word(c.runs)}
                for key in _METRIC_KEYS:
                    values.update(_metric_columns(s, c.crossed, key))
                if c.delta is not None:
                    values["delta_vs"] = t.baseline
                row(values, _recipe_columns(t, repro.get((m, b))))
        for r in t.reproduction:
            if r.cell is None:
                row({"dataset": t.dataset, "protocol": t.protocol, "budget": f"{r.budget:g}",
                     "budget_label": budget_label(t.protocol, r.budget), "method": r.method, "n": 0},
                    _recipe_columns(t, r))
        if "accuracy" in t.reference:
            ref = t.reference
            values = {"dataset": t.dataset, "protocol": t.protocol, "budget_label": "all labels",
                      "method": REFERENCE_METHOD, "n": ref["accuracy"].n,
                      "seeds": " ".join(str(x.seed) for x in sorted(t.ref_runs, key=lambda x: x.seed)),
                      "n_test": n_test, "image_groups": _groups(t.reference_crossed),
                      "best_on_test_accuracy": _pct4(ref["best_accuracy"].mean if "best_accuracy" in ref else None),
                      "best": 0, "freshness": t.freshness_word(t.ref_runs)}
            for key in _METRIC_KEYS:
                values.update(_metric_columns(ref, t.reference_crossed, key))
            row(values, _recipe_columns(t, None))
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path
