"""The numbers behind every leaderboard format (markdown, LaTeX, CSV, plots), computed once from run records.

Per (dataset, protocol, budget, method) over seeds: the mean of each final metric with its 95% Student-t
interval over seeds (`bench.results.stats`); and, when every seed's per-image predictions are at hand and were
made on the same test images, for accuracy, mean class accuracy and macro-F1 the interval over seeds *and* test
images (`bench.results.uncertainty`), resampling groups of images (subjects) when the predictions name them.
Comparisons are paired, on the seeds both sides share, over their test images too when both have predictions:

- with the best of a column (bold): every pair of entries of a column is compared, and Holm's correction runs
  over all the pairwise comparisons of the table (every column of one metric). An entry is *below the best* when
  some entry of its column is significantly above it after the correction. Comparing each entry only with the
  observed best, uncorrected, ignores that the best was picked from the same data: under the global null
  (all methods equal) most tables then show an entry "significantly worse than the best". Holm over all pairs
  keeps the probability of any such claim about a true best at or below 5% (`tests/test_uncertainty.py`).
- with a baseline (Δ), Holm-adjusted across every Δ of the (dataset, protocol) table, with the minimum detectable
  difference at 80% power and the level Holm tested each at (the interval the forest plot shows).

Per-class recall and the row-normalised confusion matrix are averaged over seeds.

Records are grouped by recipe before anything else: "harness" (the fair-comparison protocol; records written before
`config.recipe` existed are harness records) or a reference recipe, whose tables also pair each cell with the
number its paper reported (`bench.results.reported`). Two protocols never share a table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.errors import FERBenchError
from bench.results.record import is_number, record_problem, short_repr
from bench.results.reported import HARNESS, Reported, lookup
from bench.results.stats import Summary, paired_difference, summarize
from bench.results.uncertainty import (
    METRICS,
    CrossedSummary,
    Estimate,
    crossed,
    holm,
    holm_levels,
    metric_influence,
    seed_only,
)

# Trained on all labels: its budget is meaningless, so it is one reference column per dataset.
REFERENCE_METHOD = "fullysupervised"
INTERVALS = ("combined", "seeds")  # which interval the tables show: seeds + test images, or seeds only
ALPHA = 0.05  # every test and interval of the tables: two-sided, 95%
POWER = 0.8  # the power of the minimum detectable difference

# (key under metrics.final, label in headers, required in every record)
FINAL_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("accuracy", "top-1 accuracy", True),
    ("mean_class_accuracy", "mean class accuracy", True),
    ("macro_f1", "macro-F1", False),
)


@dataclass(frozen=True)
class Run:
    run_id: str
    method: str
    dataset: str
    protocol: str
    budget: float
    seed: int
    metrics: Mapping[str, float]  # final metrics present in the record, plus "best_accuracy"
    record: Mapping
    predictions: np.ndarray | None = None  # (2, N): test targets, the final model's predictions
    test_ids: str | None = None  # sha256 of the test ids the predictions are in the order of
    recipe: str = HARNESS  # the training protocol: the harness's, or a reference recipe reproducing a paper
    groups: np.ndarray | None = None  # (N,): a group id per test image (subject, video), when the data has them

    @property
    def correct(self) -> np.ndarray | None:
        """Per test image: the final model classified it correctly (None without predictions)."""
        return None if self.predictions is None else self.predictions[0] == self.predictions[1]

    @property
    def n_test(self) -> int | None:
        if self.predictions is not None:
            return int(self.predictions.shape[1])
        n = self.record.get("metrics", {}).get("n_test")
        return n if isinstance(n, int) and not isinstance(n, bool) else None


# ---------------------------------------------------------------------------------------------
# validation


def parse_run(record: object, index: int, predictions: np.ndarray | None = None) -> Run:
    """A run of a record checked by the one record check (`record_problem`); `predictions` (2, N): test targets
    and predictions (`bench.results.record`), checked against the record's metrics."""
    if not isinstance(record, Mapping):
        raise FERBenchError(f"record #{index}: is {type(record).__name__}; expected a run record object")
    run_id = record.get("run_id")
    problem = record_problem(record)
    if problem is not None and problem.field == "run_id" or not isinstance(run_id, str) or not run_id:
        raise FERBenchError(f"record #{index}: missing field run_id (got {short_repr(run_id)}); expected a string")
    if problem is not None:
        said = f"missing field {problem.field}" if problem.absent else \
            f"field {problem.detail}" if problem.kind == "invalid" else str(problem)
        raise FERBenchError(f"run {run_id}: {said}")
    final = record["metrics"]["final"]
    metrics = {key: float(final[key]) for key, _, _ in FINAL_METRICS if key in final}
    if "best_accuracy" in record["metrics"]:
        metrics["best_accuracy"] = float(record["metrics"]["best_accuracy"])
    groups = None
    if predictions is not None:
        if "predictions" not in record:  # the test images' ids are what pairs two runs' predictions
            raise FERBenchError(f"run {run_id}: missing field predictions.test_ids_sha256")
        predictions, groups = _checked_predictions(run_id, predictions, metrics)
    return Run(run_id=run_id, method=record["method"], dataset=record["dataset"], protocol=record["protocol"],
               budget=float(record["budget"]), seed=record["seed"], metrics=metrics, record=record,
               predictions=predictions, recipe=record["config"].get("recipe", HARNESS), groups=groups,
               test_ids=None if predictions is None else record["predictions"]["test_ids_sha256"])


def _checked_predictions(run_id: str, predictions: np.ndarray,
                         metrics: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray | None]:
    """(targets and predictions (2, N), group ids (N,) or None) of a run's predictions array, which must give the
    record's own metrics (a predictions file of another run, or test set, gives other numbers)."""
    predictions = np.asarray(predictions)
    if predictions.ndim != 2 or predictions.shape[0] not in (2, 3) or predictions.shape[1] < 2:
        raise FERBenchError(f"run {run_id}: its predictions have shape {predictions.shape}; expected (2, N) "
                            "targets and predictions, or (3, N) with a group id per image, N >= 2")
    groups = None
    if predictions.shape[0] == 3:
        groups, predictions = predictions[2], predictions[:2]
    for key, _, _ in FINAL_METRICS:
        if key not in metrics:
            continue
        theta, _ = metric_influence(key, predictions[0], predictions[1][None, :])
        if not math.isclose(float(theta[0]), metrics[key], abs_tol=1e-9):
            raise FERBenchError(f"run {run_id}: its predictions give {key} {theta[0]:.6f}, the record "
                                f"{metrics[key]:.6f}; the predictions file is not this run's")
    return predictions, groups


def check_unique(runs: Iterable[Run], key: Callable[[Run], tuple], what: str) -> None:
    # Two runs of one cell with the same seed would be counted as independent seeds and break pairing.
    seen: dict[tuple, str] = {}
    for r in runs:
        k = key(r)
        if k in seen:
            raise FERBenchError(f"runs {seen[k]} and {r.run_id}: two records for {what} {k[:-1]} with seed "
                                f"{r.seed}; keep one record per seed")
        seen[k] = r.run_id


# ---------------------------------------------------------------------------------------------
# statistics


def _influence(runs: list[Run], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """(per-seed values, seeds x images influences, group ids or None) of `metric`, rows by seed; None unless every
    run has predictions on the same images (and the same groups, if any)."""
    if metric not in METRICS or not runs or any(r.predictions is None for r in runs):
        return None
    if len({(r.test_ids, r.predictions.shape[1]) for r in runs}) != 1:
        return None
    runs = sorted(runs, key=lambda r: r.seed)
    targets = runs[0].predictions[0]
    if any(not np.array_equal(r.predictions[0], targets) for r in runs):
        return None
    groups = [r.groups for r in runs]
    if any(g is None for g in groups):
        group = None  # a run that does not name the groups: images are the units (and the legend says so)
    elif all(np.array_equal(g, groups[0]) for g in groups):
        group = groups[0]
    else:
        return None
    theta, psi = metric_influence(metric, targets, np.stack([r.predictions[1] for r in runs]))
    return theta, psi, group


def _crossed(runs: list[Run], metric: str) -> CrossedSummary | None:
    parts = _influence(runs, metric)
    return None if parts is None else crossed(*parts)


@dataclass(frozen=True)
class Comparison:
    """A paired difference a - b over the seeds both share (and their test images when both kept them)."""

    n: int
    mean: float
    est: Estimate | None  # its variance parts; None for one shared seed (no interval, no test)
    over: str  # "seeds + test images" | "seeds"

    @property
    def ci95(self) -> float | None:
        return None if self.est is None else self.est.ci95

    @property
    def p(self) -> float | None:
        return None if self.est is None else self.est.p_value

    @property
    def excludes_zero(self) -> bool:
        return self.est is not None and self.est.excludes_zero

    def half_width(self, alpha: float) -> float | None:
        return None if self.est is None else self.est.half_width(alpha)

    def mdd(self) -> float | None:
        """The true difference this comparison detects with 80% power at alpha = 0.05 (before any correction)."""
        return None if self.est is None else self.est.mdd(POWER, ALPHA)


def compare(a: list[Run], b: list[Run], metric: str = "accuracy") -> Comparison | None:
    """Paired comparison of cells `a` and `b` on their shared seeds; None when they share none."""
    sa, sb = {r.seed: r for r in a if metric in r.metrics}, {r.seed: r for r in b if metric in r.metrics}
    seeds = sorted(set(sa) & set(sb))
    if not seeds:
        return None
    ra, rb = [sa[s] for s in seeds], [sb[s] for s in seeds]
    ia, ib = _influence(ra, metric), _influence(rb, metric)
    if ia is not None and ib is not None and ra[0].test_ids == rb[0].test_ids and ia[1].shape == ib[1].shape and \
            np.array_equal(ra[0].predictions[0], rb[0].predictions[0]) and \
            (ia[2] is None) == (ib[2] is None) and (ia[2] is None or np.array_equal(ia[2], ib[2])):
        c = crossed(ia[0] - ib[0], ia[1] - ib[1], ia[2])
        if c is not None:
            return Comparison(c.n_seeds, c.mean, c, "seeds + test images")
    d = paired_difference({s: sa[s].metrics[metric] for s in seeds}, {s: sb[s].metrics[metric] for s in seeds})
    return Comparison(d.n, d.mean, seed_only(d.mean, d.std, d.n), "seeds")


@dataclass
class Cell:
    """One (method, budget) of a (dataset, protocol): its runs and what the tables show of them."""

    method: str
    budget: float
    runs: list[Run]
    summaries: dict[str, Summary]  # metric -> mean and seed-only t interval
    crossed: dict[str, CrossedSummary]  # metric -> over seeds + test images (absent: n < 2 or no predictions)
    best: dict[str, bool] = field(default_factory=dict)  # metric -> highest mean of a column of >= 2 entries
    below_best: dict[str, bool] = field(default_factory=dict)  # metric -> significantly below an entry of its column
    delta: Comparison | None = None  # accuracy vs the baseline
    p_holm: float | None = None  # delta.p adjusted across the Δ table
    holm_level: float | None = None  # the level Holm's step-down tested delta at (its interval excludes 0 iff ✓)
    per_class_recall: list[float | None] = field(default_factory=list)  # mean over seeds
    confusion: np.ndarray | None = None  # mean over seeds of the row-normalised confusion matrix

    @property
    def n(self) -> int:
        return len(self.runs)

    def shown_interval(self, key: str, interval: str) -> tuple[float | None, bool]:
        """(95% half-width shown for metric `key` in the table's `interval` mode, whether it fell back to the
        seed-only interval). A cell that cannot give the interval over test images (a run without predictions)
        falls back to the seed-only one, and says so."""
        if key in METRICS and interval == "combined":
            if key in self.crossed:
                return self.crossed[key].ci95, False
            half = self.summaries[key].ci95
            return half, half is not None
        return self.summaries[key].ci95, False

    @property
    def marked(self) -> dict[str, bool]:
        """metric -> shown as not distinguishable from the best (†): neither bold nor significantly below."""
        return {k: not b and not self.below_best.get(k, False) for k, b in self.best.items()}


def _mean_per_class(runs: list[Run]) -> list[float | None]:
    rows = [r.record["metrics"]["final"].get("per_class_recall") for r in runs]
    rows = [row for row in rows if isinstance(row, list)]
    if not rows:
        return []
    out: list[float | None] = []
    for c in range(max(len(row) for row in rows)):
        vals = [float(row[c]) for row in rows if c < len(row) and is_number(row[c])]
        out.append(math.fsum(vals) / len(vals) if vals else None)
    return out


def _mean_confusion(runs: list[Run]) -> np.ndarray | None:
    mats = []
    for r in runs:
        m = r.record["metrics"]["final"].get("confusion_matrix")
        if not isinstance(m, list) or not m:
            return None
        a = np.asarray(m, dtype=np.float64)
        rows = a.sum(axis=1, keepdims=True)
        mats.append(np.divide(a, rows, out=np.full_like(a, np.nan), where=rows > 0))
    if len({m.shape for m in mats}) != 1:
        return None
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.stack(mats), axis=0) if mats else None


@dataclass(frozen=True)
class Reproduction:
    """A (method, budget) of a recipe table next to its paper's number; either side may be missing."""

    method: str
    budget: float
    reported: Reported | None
    cell: Cell | None

    def _mean(self, key: str) -> float | None:
        s = self.cell.summaries.get(key) if self.cell is not None else None
        return s.mean if s is not None else None

    @property
    def reported_fraction(self) -> float | None:
        return self.reported.value / 100.0 if self.reported is not None else None

    def gap(self, key: str) -> float | None:
        """Reproduced mean of metric `key` ("accuracy" = final, "best_accuracy" = best-on-test) minus the
        reported value, as a fraction like every metric here; None when either is missing."""
        mean, ref = self._mean(key), self.reported_fraction
        return None if mean is None or ref is None else mean - ref


@dataclass
class ProtocolTable:
    """Every number of one (dataset, protocol): cells by (method, budget), the reference runs, the baseline."""

    dataset: str
    protocol: str
    budgets: list[float]
    methods: list[str]  # row order: the baseline first, then by name
    baseline: str | None
    cells: dict[tuple[str, float], Cell]
    ref_runs: list[Run]
    runs: list[Run]
    class_names: list[str]
    reference: dict[str, Summary] = field(default_factory=dict)  # metric -> the reference's summary
    reference_crossed: dict[str, CrossedSummary] = field(default_factory=dict)
    holm_family: int = 0  # Δ comparisons with a p-value (the family Holm corrects over)
    best_family: dict[str, int] = field(default_factory=dict)  # metric -> pairwise comparisons Holm corrects over
    recipe: str = HARNESS
    reproduction: list[Reproduction] = field(default_factory=list)  # recipe tables only: cells vs the papers
    #: run id -> whether its record still describes the code (bench/results/freshness.py); empty: not assessed
    freshness: dict[str, Any] = field(default_factory=dict)

    def cell(self, method: str, budget: float) -> Cell | None:
        return self.cells.get((method, budget))

    def mark(self, runs: list[Run]) -> str:
        """"stale" / "mixed" for a cell of these runs (bench/results/freshness.py), "" when current."""
        from bench.results.freshness import cell_mark

        return cell_mark((r.run_id for r in runs), self.freshness)

    def freshness_word(self, runs: list[Run]) -> str:
        """A cell's freshness in one word or two: its mark, else "current" (every run current) or "unknown"; ""
        when the table was not assessed."""
        if not self.freshness:
            return ""
        states = {self.freshness[r.run_id].state for r in runs if r.run_id in self.freshness}
        return self.mark(runs) or ("current" if states == {"current"} else "unknown")

    def shown_interval(self, interval: str) -> str:
        """The interval the table shows: "combined" only if asked for and some cell can give it."""
        can = bool(self.reference_crossed) or any(c.crossed for c in self.cells.values())
        return "combined" if interval == "combined" and can else "seeds"

    def falls_back(self, interval: str) -> bool:
        """Some cell shows the seed-only interval where the table shows intervals over seeds and test images."""
        return any(c.shown_interval(k, interval)[1] for c in self.cells.values() for k in c.summaries if k in METRICS)

    @property
    def n_test(self) -> list[int]:
        """The numbers of test images its runs were scored on (one, unless the records disagree)."""
        return sorted({n for r in self.runs + self.ref_runs if (n := r.n_test) is not None})

    @property
    def n_groups(self) -> list[int]:
        """The numbers of image groups its intervals resample (empty: every interval treats images as independent)."""
        summaries = [*(x for c in self.cells.values() for x in c.crossed.values()), *self.reference_crossed.values()]
        return sorted({x.n_groups for x in summaries if x.grouped})

    @property
    def partly_grouped(self) -> bool:
        """Some intervals resample groups of images and others (runs without group ids) single images."""
        summaries = [*(x for c in self.cells.values() for x in c.crossed.values()), *self.reference_crossed.values()]
        return len({x.grouped for x in summaries}) > 1


def reference_interval(t: ProtocolTable, key: str, interval: str) -> float | None:
    """The reference's half-width for metric `key` in the table's `interval` mode."""
    if interval == "combined" and key in t.reference_crossed:
        return t.reference_crossed[key].ci95
    return t.reference[key].ci95


def below_the_best(pairs: Sequence[tuple[object, object, float, float]], alpha: float = ALPHA) -> set:
    """The entries shown significantly below the best: `pairs` are (a, b, paired mean of a - b, p-value) for
    every pair of entries of each column of a table; Holm's correction runs over all of them, and an entry is
    below the best when some entry of its column is significantly above it (then so is the best). The
    probability of saying so of any entry that is (tied for) the best is at most alpha (all-pairs Holm)."""
    below = set()
    for (a, b, diff, _), adjusted in zip(pairs, holm([p for *_, p in pairs]), strict=True):
        if adjusted < alpha and diff != 0:
            below.add(b if diff > 0 else a)
    return below


def build_protocol_table(dataset: str, protocol: str, runs: list[Run], ref_runs: list[Run],
                         baseline: str) -> ProtocolTable:
    budgets = sorted({r.budget for r in runs})
    names = sorted({r.method for r in runs})
    base = baseline if baseline in names else None
    methods = ([base] if base else []) + [m for m in names if m != base]
    grouped: dict[tuple[str, float], list[Run]] = {}
    for r in runs:
        grouped.setdefault((r.method, r.budget), []).append(r)
    cells: dict[tuple[str, float], Cell] = {}
    for (m, b), group in grouped.items():
        group = sorted(group, key=lambda r: r.seed)
        summaries = {key: summarize([r.metrics[key] for r in group if key in r.metrics])
                     for key, _, _ in FINAL_METRICS if any(key in r.metrics for r in group)}
        best_vals = [r.metrics["best_accuracy"] for r in group if "best_accuracy" in r.metrics]
        if best_vals:
            summaries["best_accuracy"] = summarize(best_vals)
        cross = {key: x for key in summaries if (x := _crossed(group, key)) is not None}
        cells[(m, b)] = Cell(m, b, group, summaries, cross, per_class_recall=_mean_per_class(group),
                             confusion=_mean_confusion(group))
    best_family = {}
    for key, _, _ in FINAL_METRICS:  # the best of each column, and the entries significantly below it
        pairs = []
        for b in budgets:
            col = [c for m in methods if (c := cells.get((m, b))) is not None and key in c.summaries]
            if len(col) < 2:  # a lone entry is not "best" of anything
                continue
            top = max(c.summaries[key].mean for c in col)
            for i, c in enumerate(col):
                c.best[key] = c.summaries[key].mean == top
                for other in col[i + 1:]:
                    cmp = compare(c.runs, other.runs, key)
                    if cmp is not None and cmp.p is not None:
                        pairs.append(((c.method, b), (other.method, b), cmp.mean, cmp.p))
        below = below_the_best(pairs)
        for (m, b), c in cells.items():
            if key in c.best:
                c.below_best[key] = (m, b) in below
        if pairs:
            best_family[key] = len(pairs)
    family = []
    if base is not None:
        for m in methods[1:]:
            for b in budgets:
                c, bc = cells.get((m, b)), cells.get((base, b))
                if c is not None and bc is not None:
                    c.delta = compare(c.runs, bc.runs)
                    if c.delta is not None and c.delta.p is not None:
                        family.append(c)
        ps = [c.delta.p for c in family]
        for c, adjusted, level in zip(family, holm(ps), holm_levels(ps, ALPHA), strict=True):
            c.p_holm, c.holm_level = adjusted, level
    class_names = next((list(r.record.get("class_names") or []) for r in runs + ref_runs), [])
    reference = {key: summarize([r.metrics[key] for r in ref_runs if key in r.metrics])
                 for key in ("accuracy", "mean_class_accuracy", "macro_f1", "best_accuracy")
                 if any(key in r.metrics for r in ref_runs)}
    ref_sorted = sorted(ref_runs, key=lambda r: r.seed)
    ref_crossed = {key: x for key in reference if (x := _crossed(ref_sorted, key)) is not None}
    return ProtocolTable(dataset, protocol, budgets, methods, base, cells, ref_runs, runs, class_names, reference,
                         ref_crossed, len(family), best_family)


def _reproduction(t: ProtocolTable, reported: Sequence[Reported]) -> list[Reproduction]:
    """Every (method, budget) of the table or of the papers for its (dataset, recipe, protocol), method-major."""
    mine = [e for e in reported if (e.dataset, e.recipe, e.budget_protocol, e.metric) ==
            (t.dataset, t.recipe, t.protocol, "accuracy")]
    keys = set(t.cells)
    for e in mine:  # a published cell not run yet still shows, so the table says what is left to reproduce
        if not any(m == e.method and math.isclose(b, e.budget, rel_tol=1e-9) for m, b in keys):
            keys.add((e.method, e.budget))
    order = {m: i for i, m in enumerate(t.methods)}
    rows = sorted(keys, key=lambda k: (order.get(k[0], len(order)), k[0], k[1]))
    return [Reproduction(m, b, lookup(mine, dataset=t.dataset, recipe=t.recipe, protocol=t.protocol, method=m,
                                      budget=b), t.cell(m, b)) for m, b in rows]


def build_tables(runs: list[Run], baseline: str,
                 reported: Sequence[Reported] = ()) -> dict[str, list[ProtocolTable]]:
    """dataset -> its protocol tables, in name order, for runs of one recipe (see `build_recipe_tables`)."""
    recipes = sorted({r.recipe for r in runs})
    if len(recipes) > 1:
        raise FERBenchError(f"runs of recipes {', '.join(recipes)} in one set of tables; group them by recipe "
                            "first (build_recipe_tables): protocols are never compared in one table")
    check_unique((r for r in runs if r.method != REFERENCE_METHOD),
                 lambda r: (r.dataset, r.protocol, r.budget, r.method, r.seed), "(dataset, protocol, budget, method)")
    # The reference ignores the budget, so one run per seed per dataset, whatever protocol it was filed under.
    check_unique((r for r in runs if r.method == REFERENCE_METHOD), lambda r: (r.dataset, r.seed),
                 f"{REFERENCE_METHOD} on dataset")
    out: dict[str, list[ProtocolTable]] = {}
    for dataset in sorted({r.dataset for r in runs}):
        mine = [r for r in runs if r.dataset == dataset]
        ref = [r for r in mine if r.method == REFERENCE_METHOD]
        main = [r for r in mine if r.method != REFERENCE_METHOD]
        protocols = sorted({r.protocol for r in main} or {r.protocol for r in ref})
        out[dataset] = [build_protocol_table(dataset, p, [r for r in main if r.protocol == p], ref, baseline)
                        for p in protocols]
        if recipes and recipes[0] != HARNESS:
            for t in out[dataset]:
                t.recipe = recipes[0]
                t.reproduction = _reproduction(t, reported)
    return out


def build_recipe_tables(runs: list[Run], baseline: str,
                        reported: Sequence[Reported] = ()) -> dict[tuple[str, str], list[ProtocolTable]]:
    """(dataset, recipe) -> its protocol tables, harness first within a dataset, then recipes by name; reference
    recipes carry their `reproduction` rows against `reported`."""
    by_recipe: dict[str, list[Run]] = {}
    for r in runs:
        by_recipe.setdefault(r.recipe, []).append(r)
    out: dict[tuple[str, str], list[ProtocolTable]] = {}
    for recipe, group in by_recipe.items():
        for dataset, tables in build_tables(group, baseline, reported).items():
            out[(dataset, recipe)] = tables
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0], kv[0][1] != HARNESS, kv[0][1])))
