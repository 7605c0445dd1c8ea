"""Seed planning: how many seeds a sweep needs to detect a difference of a given size against its baseline.

A paired difference's variance has a seed part, which shrinks with more seeds (var_1 / n, var_1 the variance of one
seed's difference), and a test-image part, which does not (it is fixed by the test set). Both come from the
comparisons a leaderboard already makes (`bench.results.aggregate`), or are given by hand (the CSV export's
`delta_sd_seed` and `delta_se_image`). The power of the leaderboard's own test at n seeds is
`bench.results.uncertainty.power`; the plan is the fewest seeds reaching the target power. With few pilot seeds
the seed variance is itself uncertain (2 degrees of freedom with 3 seeds), so each plan is also given with the
seed variance at its 80% upper confidence bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as _scipy_stats

from bench.errors import FERBenchError
from bench.results.aggregate import ProtocolTable, build_recipe_tables, parse_run
from bench.results.plots import budget_label
from bench.results.reported import HARNESS
from bench.results.uncertainty import minimum_detectable, seeds_needed

MAX_SEEDS = 1000  # beyond this, the test set, not the seeds, limits what can be detected


@dataclass(frozen=True)
class Plan:
    """One comparison's plan; differences, SDs and SEs as fractions (accuracy points / 100)."""

    where: str
    method: str
    budget: str
    n: int  # seeds it was estimated on (0: given by hand)
    delta: float | None  # the observed difference (None: given by hand)
    sd_seed: float  # SD of one seed's paired difference
    se_image: float  # SE from the test images (does not shrink with seeds)
    image_df: float
    mdd: float | None  # detectable now, with n seeds (None: given by hand)
    seeds: dict[float, int | None]  # target difference -> seeds needed (None: more than MAX_SEEDS)
    seeds_upper: dict[float, int | None]  # the same with the seed SD at its 80% upper confidence bound


@dataclass(frozen=True)
class Targets:
    """What a plan aims at: the differences to detect (fractions), with what power, at what level, over how many
    comparisons (Holm)."""

    deltas: tuple[float, ...]
    power: float = 0.8
    alpha: float = 0.05
    comparisons: int = 1

    @property
    def level(self) -> float:
        """alpha / comparisons (Bonferroni: enough for Holm's correction over that many comparisons, whichever step
        it lands on)."""
        return self.alpha / self.comparisons

    def check(self) -> None:
        """The targets and test settings, as fractions; accuracies differ by at most 1 (100 points), and a larger
        target would overflow the power computation (its square)."""
        deltas, power, alpha = self.deltas, self.power, self.alpha
        if not deltas or any(not 0 < d <= 1 for d in deltas):  # false for nan too
            raise FERBenchError(f"plan-seeds: --delta {','.join(f'{d * 100:g}' for d in deltas) or '(none)'}: "
                                "expected positive differences in percentage points, at most 100, e.g. --delta 1,3")
        if not 0 < alpha < 1 or not alpha < power < 1:
            raise FERBenchError(f"plan-seeds: expected 0 < --alpha < --power < 1, got alpha={alpha:g}, "
                                f"power={power:g}")
        if self.comparisons < 1:
            raise FERBenchError(f"plan-seeds: --comparisons {self.comparisons}: expected at least 1")


def plan(sd_seed: float, se_image: float, targets: Targets, *, n: int = 0,
         image_df: float = math.inf) -> tuple[dict, dict]:
    """(target -> seeds needed, target -> seeds needed with the seed SD at its 80% upper bound from n - 1 degrees
    of freedom; empty when n < 2), at level `targets.level`."""
    def needed(var1: float) -> dict[float, int | None]:
        return {d: seeds_needed(d, var1, se_image**2, targets.power, targets.level, image_df=image_df,
                                max_seeds=MAX_SEEDS) for d in targets.deltas}

    upper = {}
    if n >= 2:
        upper = needed(sd_seed**2 * (n - 1) / float(_scipy_stats.chi2.ppf(0.2, n - 1)))
    return needed(sd_seed**2), upper


def plan_tables(tables: Sequence[ProtocolTable], targets: Targets) -> list[Plan]:
    """A plan for every Δ comparison (method vs baseline at a budget, >= 2 shared seeds) of `tables`."""
    out = []
    for t in tables:
        where = f"{t.dataset}" + ("" if t.recipe == HARNESS else f" (recipe {t.recipe})") + f", protocol {t.protocol}"
        for m in t.methods:
            for b in t.budgets:
                c = t.cell(m, b)
                if c is None or c.delta is None or c.delta.est is None:
                    continue
                e = c.delta.est
                sd, se = math.sqrt(e.v_seed * e.n_seeds), math.sqrt(e.v_image)
                seeds, upper = plan(sd, se, targets, n=e.n_seeds, image_df=e.image_df)
                mdd = minimum_detectable(e.v_seed, e.v_image, e.n_seeds, targets.power, targets.level, e.image_df)
                out.append(Plan(where, m, budget_label(t.protocol, b), e.n_seeds, e.mean, sd, se, e.image_df, mdd,
                                seeds, upper))
    return out


def plan_records(records: Sequence[dict], predictions: dict, baseline: str, targets: Targets) -> list[Plan]:
    """Plans for the Δ comparisons of the leaderboards `records` make (as `render_leaderboards` builds them)."""
    runs = [parse_run(rec, i, predictions.get(rec.get("run_id"))) for i, rec in enumerate(records)]
    tables = [t for ts in build_recipe_tables(sorted(runs, key=lambda r: r.run_id), baseline).values() for t in ts]
    plans = plan_tables(tables, targets)
    if not plans:
        raise FERBenchError(f"plan-seeds: no comparison with baseline {baseline!r} over >= 2 shared seeds in these "
                            "records; run a pilot with >= 2 seeds of the baseline and the method (or give --sd-seed)")
    return plans


def _pts(x: float, signed: bool = False) -> str:
    return f"{x * 100:+.1f}" if signed else f"{x * 100:.1f}"


def format_plans(plans: Sequence[Plan], targets: Targets, baseline: str | None) -> str:
    """The plans as a text table, with what they assume."""
    deltas, power, alpha, comparisons = targets.deltas, targets.power, targets.alpha, targets.comparisons

    def seeds(v: int | None) -> str:
        return f">{MAX_SEEDS}" if v is None else str(v)

    level = f"p < {alpha:g}" + (f" / {comparisons} (Holm over {comparisons} comparisons)" if comparisons > 1 else "")
    head = ["where", "method", "budget", "n", "Δ now", "SD seed", "SE images", "MDD now",
            *(f"seeds for {d * 100:g}" for d in deltas)]
    rows = []
    for p in plans:
        cells = [seeds(p.seeds[d]) + (f" ({seeds(p.seeds_upper[d])})" if p.seeds_upper else "") for d in deltas]
        rows.append([p.where, p.method, p.budget, str(p.n) if p.n else "—",
                     _pts(p.delta, True) if p.delta is not None else "—", _pts(p.sd_seed), _pts(p.se_image),
                     _pts(p.mdd) if p.mdd is not None else "—", *cells])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
    vs = f" vs {baseline}" if baseline else ""
    notes = [f"Seeds for a true paired difference{vs} of that many accuracy points to reach {level} with "
             f"{power:.0%} power, by the leaderboard's own test (seed part t with n - 1 df, test-image part fixed)."]
    if any(p.seeds_upper for p in plans):
        notes.append("In parentheses: with the seed SD at its 80% upper confidence bound (few pilot seeds estimate "
                     "it poorly).")
    notes.append(f">{MAX_SEEDS}: the test images' SE alone is too large for that difference. Points are percentage "
                 "points; SD seed: of one seed's difference; SE images: of the mean difference from the test images.")
    if any(p.mdd is not None for p in plans):
        notes.append("MDD now: the difference detected with that power with the seeds run so far.")
    lines += ["", " ".join(notes)]
    return "\n".join(lines) + "\n"


def plan_command(records_dir: str | None, delta: str, *, baseline: str = "supervised", power: float = 0.8,
                 alpha: float = 0.05, comparisons: int = 1, sd_seed: float | None = None,
                 se_image: float = 0.0) -> str:
    """`ferbench plan-seeds`: the plans, as text, from a records folder or from given variance parts (percentage
    points, as the CSV export lists them). Raises FERBenchError for bad input, before any work."""
    try:
        deltas = tuple(float(d) / 100 for d in delta.split(",") if d.strip())
    except ValueError:
        raise FERBenchError(f"plan-seeds: --delta {delta}: expected comma-separated percentage points, "
                            "e.g. 1,3") from None
    targets = Targets(deltas, power, alpha, comparisons)
    targets.check()
    if (records_dir is None) == (sd_seed is None):
        raise FERBenchError("plan-seeds: give a records folder (plans from its comparisons with the baseline) or "
                            "--sd-seed (and --se-image), not both")
    if records_dir is not None:
        from bench.results.record import load_with_predictions

        records, predictions = load_with_predictions(records_dir)
        return format_plans(plan_records(records, predictions, baseline, targets), targets, baseline)
    if not 0 < sd_seed <= 100 or not 0 <= se_image <= 100:  # SDs of accuracy differences; squared below
        raise FERBenchError(f"plan-seeds: expected 0 < --sd-seed <= 100 and 0 <= --se-image <= 100 (points), got "
                            f"{sd_seed:g} and {se_image:g}")
    seeds, _ = plan(sd_seed / 100, se_image / 100, targets)
    given = Plan("given", "—", "—", 0, None, sd_seed / 100, se_image / 100, math.inf, None, seeds, {})
    return format_plans([given], targets, None)
