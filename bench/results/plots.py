"""PNG plots of run records: per-run training curves, per-dataset accuracy vs label budget (or, with one budget,
a dot plot per method and a forest plot of paired differences), and confusion matrices.

Figures are built on an explicit Agg canvas (no pyplot, so no global backend switch and no figure
registry) under matplotlib's default rcParams, and saved with the "Software" PNG tag removed:
the same input gives a byte-identical file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.errors import FERBenchError
from bench.results.stats import Summary

# Without this matplotlib writes its version into the PNG; nothing else time- or host-dependent
# is written by the Agg PNG writer.
_PNG_METADATA: dict[str, str | None] = {"Software": None}
_DPI = 100


def _save(fig: Figure, path: Path) -> Path:
    """Write the figure as a PNG, atomically (a temporary file renamed into place)."""
    from bench.results.record import write_atomic

    FigureCanvasAgg(fig)
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=_DPI, metadata=_PNG_METADATA))


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _g(x: float) -> str:
    return format(round(x, 6), "g")


def budget_label(protocol: str, budget: float) -> str:
    """Label of a label budget, as in leaderboard column headers: `2%`, `k=25/class`, `N=1000`."""
    if protocol == "fraction":
        return f"{_g(budget * 100.0)}%"
    if protocol == "per_class":
        return f"k={_g(budget)}/class"
    if protocol == "total":
        return f"N={_g(budget)}"
    return f"{protocol}={_g(budget)}"


def _budget_x(protocol: str, budget: float) -> float:
    # Fractions are drawn in percent so the axis reads like the table headers.
    return budget * 100.0 if protocol == "fraction" else budget


def _dodge(protocol: str, x: float, k: int, count: int, budgets: Sequence[float]) -> float:
    """x of the k-th of `count` methods at budget x: spread over a band around x that is a small share of the
    axis (multiplicative on the log axis of fractions), so that one budget's error bars sit side by side."""
    if count < 2:
        return x
    step = (k - (count - 1) / 2) / (count - 1)  # -1/2 .. +1/2
    if protocol == "fraction":  # log axis: a factor; the band spans 1/4 of the smallest ratio of budgets, at most 12%
        xs = sorted({_budget_x(protocol, b) for b in budgets})
        ratio = min((b / a for a, b in zip(xs, xs[1:])), default=2.0)
        return x * math.exp(step * min(math.log(ratio) / 4, math.log(1.12)))
    xs = sorted({_budget_x(protocol, b) for b in budgets})
    gap = min((b - a for a, b in zip(xs, xs[1:])), default=max(abs(x), 1.0))
    return x + step * gap / 4


def _budget_xlabel(protocol: str) -> str:
    return {
        "fraction": "labeled fraction (%, log scale)",
        "per_class": "labels per class (k)",
        "total": "labeled images (N)",
    }.get(protocol, f"label budget ({protocol})")


def plot_budget_curves(
    dataset: str,
    panels: Mapping[str, Mapping[str, Mapping[float, Summary]]],
    path: Path,
    reference: Summary | None = None,
    reference_label: str = "fullysupervised (all labels)",
    interval_label: str = "95% t-CI over seeds",
) -> Path:
    """Accuracy (%) vs label budget, one subplot per protocol and one line per method.

    `panels` maps protocol -> method -> budget -> Summary of accuracy fractions; methods are drawn
    in the mapping's order, each shifted sideways by a small offset (the same for all its points) so that error
    bars of one budget do not cover each other. Error bars are the Summaries' `ci95` half-widths, described by
    `interval_label` (none where n < 2). `reference`, if given, is drawn in every subplot as a dashed horizontal
    line with its CI as a shaded band.
    """
    protocols = sorted(panels)
    if not protocols:
        raise ValueError("plot_budget_curves() needs at least one protocol")
    with mpl.rc_context():
        mpl.rcdefaults()  # a user's matplotlibrc or style must not change the bytes
        fig = Figure(figsize=(6.4 * len(protocols), 4.8))
        axes = fig.subplots(1, len(protocols), squeeze=False)[0]
        # One color per method across all subplots, in first-seen order.
        colors: dict[str, str] = {}
        for protocol in protocols:
            for method in panels[protocol]:
                colors.setdefault(method, f"C{len(colors) % 10}")
        for ax, protocol in zip(axes, protocols):
            methods = panels[protocol]
            for k, (method, by_budget) in enumerate(methods.items()):
                color = colors[method]
                budgets = sorted(by_budget)
                xs = [_dodge(protocol, _budget_x(protocol, b), k, len(methods), budgets) for b in budgets]
                ys = [by_budget[b].mean * 100.0 for b in budgets]
                ax.plot(xs, ys, marker="o", color=color, label=method)
                with_ci = [(x, y, by_budget[b].ci95) for x, y, b in zip(xs, ys, budgets)
                           if by_budget[b].ci95 is not None]
                if with_ci:
                    ax.errorbar([p[0] for p in with_ci], [p[1] for p in with_ci],
                                yerr=[p[2] * 100.0 for p in with_ci], fmt="none", ecolor=color, capsize=3)
            if reference is not None:
                y = reference.mean * 100.0
                ax.axhline(y, color="black", linestyle="--", linewidth=1.2, label=reference_label)
                if reference.ci95 is not None:
                    ax.axhspan(y - reference.ci95 * 100.0, y + reference.ci95 * 100.0,
                               color="black", alpha=0.12, linewidth=0)
            if protocol == "fraction":
                ax.set_xscale("log")
            # Ticks at the measured budgets, labelled like the table columns (not "2x10^0").
            all_budgets = sorted({b for by_budget in methods.values() for b in by_budget})
            if all_budgets:
                ax.set_xticks([_budget_x(protocol, b) for b in all_budgets],
                              [budget_label(protocol, b) if protocol == "fraction" else _g(b) for b in all_budgets])
                ax.minorticks_off()
            ax.set_ylim(top=min(ax.get_ylim()[1], 100.5))  # an error bar past 100% carries no information
            ax.set_xlabel(_budget_xlabel(protocol))
            ax.set_ylabel(f"top-1 accuracy (%), final checkpoint\nmean ± {interval_label}")
            ax.set_title(f"{dataset} — protocol {protocol}")
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize="small", loc="best")
        fig.tight_layout()
        return _save(fig, path)


def plot_single_budget(
    dataset: str,
    panels: Sequence[tuple[str, Mapping[str, Mapping[float, Summary]], str | None,
                           Mapping[tuple[str, float], tuple[float, float | None]], int]],
    path: Path,
    interval_label: str,
    reference: Summary | None = None,
    reference_label: str = "fullysupervised (all labels)",
) -> Path:
    """For protocols with few budgets: per protocol, a dot plot of each method's accuracy with its interval
    (one row per method and budget, so nothing is stacked), and a forest plot of the paired Δ against the
    baseline with a line at 0, each with its Holm-adjusted interval (the table's inference).

    `panels`: (protocol, method -> budget -> Summary of accuracy with the half-width shown in `ci95`, baseline
    or None, (method, budget) -> (Δ mean, half-width of the interval at the level Holm tested it, or None), the
    number of comparisons Holm corrected over), as fractions.
    """
    if not panels:
        raise ValueError("plot_single_budget() needs at least one protocol")
    with mpl.rc_context():
        mpl.rcdefaults()
        rows = [[(m, b) for m, by_budget in points.items() for b in sorted(by_budget)]
                for _, points, _, _, _ in panels]
        height = max(3.0, 0.42 * max(len(r) for r in rows) + 1.8)
        fig = Figure(figsize=(11.0, height * len(panels)), layout="constrained")  # fits the multi-line labels
        fig.get_layout_engine().set(w_pad=0.1, h_pad=0.1)
        axes = fig.subplots(len(panels), 2, squeeze=False)
        multi_budget = any(len({b for _, b in r}) > 1 for r in rows)
        for (protocol, points, baseline, deltas, family), items, (ax_dot, ax_delta) in zip(panels, rows, axes):
            def name(m: str, b: float, protocol: str = protocol) -> str:
                return f"{m} @ {budget_label(protocol, b)}" if multi_budget else m

            ys = list(range(len(items)))[::-1]  # the first method at the top
            for y, (m, b) in zip(ys, items):
                s = points[m][b]
                err = None if s.ci95 is None else [[s.ci95 * 100.0], [s.ci95 * 100.0]]
                ax_dot.errorbar([s.mean * 100.0], [y], xerr=err, fmt="o", color="C0", capsize=4)
                ax_dot.annotate(f"{s.mean * 100:.1f} (n={s.n})", (s.mean * 100.0, y), textcoords="offset points",
                                xytext=(0, 7), ha="center", fontsize="small")
            if reference is not None:
                x = reference.mean * 100.0
                ax_dot.axvline(x, color="black", linestyle="--", linewidth=1.2, label=reference_label)
                if reference.ci95 is not None:
                    ax_dot.axvspan(x - reference.ci95 * 100.0, x + reference.ci95 * 100.0, color="black", alpha=0.12,
                                   linewidth=0)
                ax_dot.legend(fontsize="small", loc="lower right")
            ax_dot.set_yticks(ys, [name(m, b) for m, b in items])
            ax_dot.set_ylim(-0.7, len(items) - 0.3)
            ax_dot.set_xlabel(f"top-1 accuracy (%), final checkpoint\nmean ± {interval_label}")
            title = budget_label(protocol, items[0][1]) if items and not multi_budget else "by budget"
            ax_dot.set_title(f"{dataset} — protocol {protocol}, {title}")
            ax_dot.grid(True, axis="x", alpha=0.3)

            shown = [(m, b) for m, b in items if (m, b) in deltas]
            dys = list(range(len(shown)))[::-1]
            for y, (m, b) in zip(dys, shown):
                mean, half = deltas[(m, b)]
                err = None if half is None else [[half * 100.0], [half * 100.0]]
                ax_delta.errorbar([mean * 100.0], [y], xerr=err, fmt="s", color="C1", capsize=4)
            ax_delta.axvline(0.0, color="black", linewidth=1.0)
            ax_delta.set_yticks(dys, [name(m, b) for m, b in shown])
            ax_delta.set_ylim(-0.7, max(len(shown), 1) - 0.3)
            ax_delta.set_xlabel("Δ accuracy (points), paired: mean ± Holm-adjusted CI\n"
                                f"over {family} comparison" + ("s" if family != 1 else "") + ", each at the level "
                                "Holm tested it\n(it excludes 0 exactly when Holm p < 0.05)")
            ax_delta.set_title(f"vs {baseline}" if baseline else "no baseline records")
            ax_delta.grid(True, axis="x", alpha=0.3)
            if not shown:
                ax_delta.text(0.5, 0.5, "no paired comparison", ha="center", va="center", transform=ax_delta.transAxes)
        return _save(fig, path)


def plot_confusions(title: str, matrices: Mapping[str, object], class_names: Sequence[str], path: Path, *,
                    over: str = "mean over seeds") -> Path:
    """One row-normalised confusion matrix (%) per method, true classes as rows, in the given class order; `over`:
    what each matrix is the mean over, for the title."""
    import numpy as np

    names = list(matrices)
    with mpl.rc_context():
        mpl.rcdefaults()
        cols = min(3, len(names))
        nrows = -(-len(names) // cols)
        k = len(class_names) or np.asarray(matrices[names[0]]).shape[0]
        side = 0.5 * k + 1.6
        # constrained layout keeps the rotated tick labels, the axis labels and the two-line title in the figure
        fig = Figure(figsize=(max(side * cols, 5.2), side * nrows + 0.6), layout="constrained")
        fig.get_layout_engine().set(w_pad=0.1, h_pad=0.1)  # inches: the default cuts descenders at the edge
        axes = fig.subplots(nrows, cols, squeeze=False)
        labels = list(class_names) or [str(i) for i in range(k)]
        for ax, method in zip(axes.flat, names):
            m = np.asarray(matrices[method], dtype=float) * 100.0
            ax.imshow(np.nan_to_num(m), vmin=0.0, vmax=100.0, cmap="Blues")
            for i in range(m.shape[0]):
                for j in range(m.shape[1]):
                    text = "–" if np.isnan(m[i, j]) else f"{m[i, j]:.0f}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=7,
                            color="white" if not np.isnan(m[i, j]) and m[i, j] > 60 else "black")
            ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(len(labels)), labels, fontsize=7)
            ax.set_xlabel("predicted", fontsize="small")
            ax.set_ylabel("true", fontsize="small")
            ax.set_title(method, fontsize="medium")
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        fig.suptitle(f"{title}\nconfusion matrices, row-normalised (%), {over}", fontsize="medium")
        return _save(fig, path)


def plot_run_confusion(record: Mapping, path: Path) -> Path:
    """One run's final confusion matrix, row-normalised (%): the figure its trackers receive."""
    import numpy as np

    counts = np.asarray(record["metrics"]["final"]["confusion_matrix"], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        rows = counts / counts.sum(axis=1, keepdims=True)
    return plot_confusions(record["run_id"], {record["method"]: rows}, record["class_names"], path,
                           over=f"final checkpoint, {int(counts.sum())} test images")


def _numeric_series(entries: Sequence[Mapping], key: str, run_id: str, field: str) -> tuple[list, list]:
    xs, ys = [], []
    for i, e in enumerate(entries):
        if key not in e:
            continue
        v, step = e[key], e.get("step")
        if not _is_number(step):
            raise FERBenchError(f"run {run_id}: {field}[{i}].step is {step!r}; expected an integer step")
        if _is_number(v):
            xs.append(step)
            ys.append(float(v))
    return xs, ys


def plot_run_curves(record: dict, path: Path) -> Path:
    """Training curves of one run record: losses, rates (if any) and test accuracy vs iteration.

    Every numeric key of `record["curves"]` entries other than "step" is drawn: in the loss panel if its
    name contains "loss", else in the panel of rates and schedules (mask rate, thresholds, ramp-up),
    where the learning rate "lr" gets its own right-hand axis.
    The accuracy panel shows `record["history"]` accuracy and mean class accuracy in percent.
    """
    run_id = record.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise FERBenchError(f"run record: missing field run_id (got {run_id!r}); expected a string")
    curves = record.get("curves") or []
    history = record.get("history") or []
    if not isinstance(curves, list) or not all(isinstance(e, dict) for e in curves):
        raise FERBenchError(f"run {run_id}: field curves is not a list of objects")
    if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
        raise FERBenchError(f"run {run_id}: field history is not a list of objects")

    keys = sorted({k for e in curves for k, v in e.items() if k != "step" and _is_number(v)})
    loss_keys = [k for k in keys if "loss" in k]
    rate_keys = [k for k in keys if "loss" not in k]

    with mpl.rc_context():
        mpl.rcdefaults()
        n_panels = 3 if rate_keys else 2
        fig = Figure(figsize=(5.0 * n_panels, 4.0))
        axes = list(fig.subplots(1, n_panels, squeeze=False)[0])
        ax_loss = axes[0]
        ax_rate = axes[1] if rate_keys else None
        ax_acc = axes[-1]

        for k in loss_keys:
            xs, ys = _numeric_series(curves, k, run_id, "curves")
            ax_loss.plot(xs, ys, marker="." if len(xs) < 50 else None, label=k)
        ax_loss.set_title("training losses")
        ax_loss.set_xlabel("iteration")
        if loss_keys:
            ax_loss.legend(fontsize="small")
        else:
            ax_loss.text(0.5, 0.5, "no curves recorded", ha="center", va="center", transform=ax_loss.transAxes)

        if ax_rate is not None:
            for k in rate_keys:
                if k == "lr":
                    continue
                xs, ys = _numeric_series(curves, k, run_id, "curves")
                ax_rate.plot(xs, ys, marker="." if len(xs) < 50 else None, label=k)
            if "lr" in rate_keys:  # orders of magnitude below the rates: its own axis
                xs, ys = _numeric_series(curves, "lr", run_id, "curves")
                ax_lr = ax_rate.twinx()
                ax_lr.plot(xs, ys, color="0.5", linestyle="--", label="lr (right axis)")
                ax_lr.set_ylabel("learning rate")
                ax_lr.legend(fontsize="small", loc="lower right")
            ax_rate.set_title("rates and schedule")
            ax_rate.set_xlabel("iteration")
            if ax_rate.lines:
                ax_rate.legend(fontsize="small", loc="upper left")

        for k, label in (("accuracy", "accuracy"), ("mean_class_accuracy", "mean class accuracy")):
            xs, ys = _numeric_series(history, k, run_id, "history")
            if xs:
                ax_acc.plot(xs, [y * 100.0 for y in ys], marker=".", label=label)
        ax_acc.set_title("test accuracy (%)")
        ax_acc.set_xlabel("iteration")
        if ax_acc.lines:
            ax_acc.legend(fontsize="small")
        else:
            ax_acc.text(0.5, 0.5, "no evaluations recorded", ha="center", va="center",
                        transform=ax_acc.transAxes)
        for ax in axes:
            ax.grid(True, alpha=0.3)
        fig.suptitle(run_id, fontsize="medium")
        fig.tight_layout()
        return _save(fig, path)



def plot_class_counts(title: str, class_names: Sequence[str], counts: Mapping[str, Sequence[int]],
                      path: Path) -> Path:
    """Grouped bars: images per class for each split (e.g. train / test / labeled), counts on top."""
    fig = Figure(figsize=(max(6.0, 1.1 * len(class_names) + 1.5), 4.2))
    ax = fig.add_subplot(1, 1, 1)
    n = max(1, len(counts))
    width = 0.8 / n
    for i, (split, values) in enumerate(counts.items()):
        xs = [c + (i - (n - 1) / 2) * width for c in range(len(class_names))]
        bars = ax.bar(xs, values, width=width, label=f"{split} ({sum(values):,})")
        ax.bar_label(bars, labels=[f"{v:,}" for v in values], fontsize=7, padding=1)
    ax.set_xticks(range(len(class_names)), list(class_names))
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend(frameon=False)
    ax.margins(y=0.12)
    fig.tight_layout()
    return _save(fig, path)
