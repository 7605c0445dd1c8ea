"""Simulated benchmarks whose population values are known: the calibration experiments behind the leaderboards'
statistics, run by `tests/test_uncertainty.py` (few replicates, seeded) and by `python -m bench.results.simulate`
(the figures of docs/concepts/statistics.md, more replicates).

The generative model (one test set; methods scored on it with several seeds): method m, seed s, image i is
classified correctly with probability sigmoid(logit + class offset + shift_m + u_s + a_ms + b_i + g_G(i) + c_mi
+ e_msi), with normal effects: u_s the seed's labeled split (shared by every method, so it cancels in paired
differences), a_ms the method's own seed-to-seed variation, b_i image difficulty (shared by every method), g the
effect of the group (subject) image i belongs to, c_mi a method's own image-by-image preferences and e_msi
seed-by-image noise. A wrong prediction picks one of the other classes uniformly. The population value of a
metric is its expectation over new seeds and new test images, by Gauss-Hermite quadrature.

Every experiment calls FERBench's own estimators (`bench.results.uncertainty`, `bench.results.aggregate`) on each
simulated table. Monte-Carlo errors are binomial: sqrt(r (1 - r) / replicates) for a rate r.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import optimize, special

from bench.results.aggregate import below_the_best
from bench.results.uncertainty import (
    Estimate,
    crossed,
    crossed_summary,
    holm,
    metric_influence,
    minimum_detectable,
    seed_only,
)

ALPHA = 0.05
# RAF-DB's test images per class (Surprise, Fear, Disgust, Happy, Sad, Anger, Neutral; 3,068 in all) as class
# weights, and class offsets that make the rare classes harder, as FER models find them
RAFDB_PRIORS = (329, 74, 160, 1185, 478, 162, 680)
RAFDB_OFFSETS = (0.2, -1.2, -1.0, 0.9, -0.2, -0.5, 0.1)


@dataclass(frozen=True)
class Benchmark:
    """A simulated benchmark: sizes and the standard deviations (logit scale) of the model's effects."""

    n_seeds: int = 3
    n_images: int = 1500
    logit: float = 0.3
    sd_split: float = 0.0
    sd_seed: float = 0.15
    sd_image: float = 1.5
    sd_method_image: float = 0.0
    sd_seed_image: float = 0.5
    group_size: int = 1  # images per group (subject); the last group may be smaller
    sd_group: float = 0.0
    priors: tuple[float, ...] = RAFDB_PRIORS  # class weights (normalised)
    offsets: tuple[float, ...] = RAFDB_OFFSETS

    @property
    def groups(self) -> np.ndarray:
        return np.arange(self.n_images) // self.group_size


def draw_correct(b: Benchmark, shifts: Sequence[float], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One simulated test set: targets (N,) and correctness (methods, seeds, N) of methods with logit `shifts`."""
    k, n, N = len(shifts), b.n_seeds, b.n_images
    targets = rng.choice(len(b.priors), size=N, p=np.asarray(b.priors) / sum(b.priors))
    image = rng.normal(0, b.sd_image, N) + np.asarray(b.offsets)[targets]
    if b.sd_group > 0:
        image += rng.normal(0, b.sd_group, b.groups.max() + 1)[b.groups]
    logit = (b.logit + np.asarray(shifts, dtype=float)[:, None, None] + rng.normal(0, b.sd_split, (1, n, 1))
             + rng.normal(0, b.sd_seed, (k, n, 1)) + image[None, None, :] + rng.normal(0, b.sd_method_image, (k, 1, N))
             + rng.normal(0, b.sd_seed_image, (k, n, N)))
    return targets, rng.random((k, n, N)) < 1 / (1 + np.exp(-logit))


def draw(b: Benchmark, shifts: Sequence[float], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One simulated test set: targets (N,) and predictions (methods, seeds, N) of methods with logit `shifts`."""
    targets, correct = draw_correct(b, shifts, rng)
    wrong = (targets + rng.integers(1, len(b.priors), correct.shape)) % len(b.priors)  # another class, uniformly
    return targets, np.where(correct, targets, wrong)


def population(b: Benchmark, metric: str, shift: float = 0.0) -> float:
    """The metric expected of a method with logit `shift` over new seeds and new test images."""
    x, w = np.polynomial.hermite_e.hermegauss(60)
    w = w / w.sum()
    seed_sd = math.hypot(b.sd_split, b.sd_seed)
    image_sd = math.sqrt(b.sd_image**2 + b.sd_group**2 + b.sd_method_image**2 + b.sd_seed_image**2)
    pi, off = np.asarray(b.priors) / sum(b.priors), np.asarray(b.offsets)
    K = len(pi)
    # recall[u, c]: P(correct | class c, seed effect u), integrating the image-level effects
    z = b.logit + shift + off[None, :, None] + seed_sd * x[:, None, None] + image_sd * x[None, None, :]
    recall = (w[None, None, :] / (1 + np.exp(-z))).sum(axis=2)
    if metric == "accuracy":
        per_seed = recall @ pi
    elif metric == "mean_class_accuracy":
        per_seed = recall.mean(axis=1)
    elif metric == "macro_f1":
        tp = pi * recall
        missed = pi * (1 - recall)
        predicted = tp + (missed.sum(axis=1, keepdims=True) - missed) / (K - 1)
        per_seed = (2 * tp / (pi + predicted)).mean(axis=1)
    else:
        raise ValueError(f"population(): unknown metric {metric!r}")
    return float(per_seed @ w)


def rate(hits: int, reps: int) -> tuple[float, float]:
    """A Monte-Carlo rate and its binomial standard error."""
    r = hits / reps
    return r, math.sqrt(r * (1 - r) / reps)


def previous_p_value(e: Estimate) -> float:
    """The p-value rule before issue #23, for comparison: a t tail at the effective df at which t(0.975, df)
    times the standard error equals the 95% half-width (right at alpha = 0.05 only)."""
    if e.mean == 0:
        return 1.0
    if e.se == 0:
        return 0.0
    return float(2 * special.stdtr(effective_df(e), -abs(e.mean) / e.se))


def effective_df(e: Estimate) -> float:
    """The df at which t(0.975, df) * se equals the 95% half-width: between n - 1 (seed part only) and inf."""
    q = e.ci95 / e.se if e.se > 0 else 0.0
    if q >= -special.stdtrit(e.seed_df, 0.025):
        return float(e.seed_df)
    if q <= -special.ndtri(0.025) + 1e-12:
        return math.inf
    return float(optimize.brentq(lambda d: -special.stdtrit(d, 0.025) - q, e.seed_df, 1e9, xtol=1e-9))


# ---------------------------------------------------------------------------------------------
# experiments


def coverage(b: Benchmark, metric: str, reps: int, rng: np.random.Generator,
             use_groups: bool = False) -> dict[str, tuple[float, float]]:
    """How often the 95% intervals contain the population value: over seeds and test images (images as units,
    or the benchmark's groups with `use_groups`), and the seed-only t interval. Rates with their MC errors."""
    truth = population(b, metric)
    hit_crossed = hit_seeds = 0
    for _ in range(reps):
        targets, preds = draw(b, [0.0], rng)
        theta, psi = metric_influence(metric, targets, preds[0])
        c = crossed(theta, psi, b.groups if use_groups else None)
        hit_crossed += abs(c.mean - truth) <= c.ci95
        hit_seeds += abs(theta.mean() - truth) <= seed_only(theta.mean(), theta.std(ddof=1), b.n_seeds).ci95
    return {"crossed": rate(int(hit_crossed), reps), "seeds": rate(int(hit_seeds), reps)}


def holm_fwer(b: Benchmark, comparisons: int, reps: int, rng: np.random.Generator) -> dict[str, tuple[float, float]]:
    """Under the null (every method equal to the baseline), how often Holm over the Δ table's `comparisons`
    rejects anything (the family-wise error), with the p-values of `Estimate.p_value` and with the previous rule;
    and the single-comparison rejection rates at 0.005 and 0.0125 (Holm's first levels for 10 and 4)."""
    hits = {"fwer": 0, "fwer_previous": 0, "at_0.005": 0, "at_0.005_previous": 0, "at_0.0125": 0,
            "at_0.0125_previous": 0}
    dfs = []
    for _ in range(reps):
        _, correct = draw_correct(b, [0.0] * (comparisons + 1), rng)
        ests = [crossed_summary(correct[m].astype(float) - correct[0]) for m in range(1, comparisons + 1)]
        for key, p in (("", [e.p_value for e in ests]), ("_previous", [previous_p_value(e) for e in ests])):
            hits["fwer" + key] += any(a < ALPHA for a in holm(p))
            hits["at_0.005" + key] += p[0] < 0.005
            hits["at_0.0125" + key] += p[0] < 0.0125
        dfs.append(effective_df(ests[0]))
    out = {k: rate(v, reps) for k, v in hits.items()}
    out["effective_df_median"] = (float(np.median(dfs)), 0.0)
    return out


def best_claims(b: Benchmark, methods: int, columns: int, reps: int,
                rng: np.random.Generator) -> dict[str, tuple[float, float]]:
    """Under the global null (all `methods` equal, in each of `columns` budget columns of one table), how often
    the table shows some entry as significantly below the best: with all-pairs Holm (`below_the_best`, what the
    tables do), with the previous rule (each entry against the observed best, uncorrected 95% CI), and with Holm
    over the comparisons with the observed best only (which ignores that the best was picked from the data)."""
    hits = {"all_pairs_holm": 0, "previous": 0, "holm_vs_observed_best": 0}
    for _ in range(reps):
        pairs, previous, vs_best = [], False, []
        for col in range(columns):
            _, correct = draw_correct(b, [0.0] * methods, rng)
            correct = correct.astype(float)
            means = correct.mean(axis=(1, 2))
            top = int(np.argmax(means))
            for i in range(methods):
                for j in range(i + 1, methods):
                    e = crossed_summary(correct[i] - correct[j])
                    pairs.append(((col, i), (col, j), e.mean, e.p_value))
                    if top in (i, j):
                        previous |= e.excludes_zero
                        vs_best.append(e.p_value)
        hits["all_pairs_holm"] += bool(below_the_best(pairs))
        hits["previous"] += previous
        hits["holm_vs_observed_best"] += any(a < ALPHA for a in holm(vs_best))
    return {k: rate(v, reps) for k, v in hits.items()}


def _shift_for(b: Benchmark, delta: float) -> float:
    """The logit shift that raises the population accuracy of a method by `delta` over the baseline's."""
    base = population(b, "accuracy")
    return float(optimize.brentq(lambda s: population(b, "accuracy", s) - base - delta, 0.0, 5.0, xtol=1e-10))


def power_at_mdd(b: Benchmark, pilot: int, reps: int, rng: np.random.Generator,
                 power_: float = 0.8) -> dict[str, tuple[float, float]]:
    """The minimum detectable difference claims that a true difference of that size is detected (p < 0.05) with
    probability `power_`: the variance parts of the paired difference are measured on `pilot` tables (their
    average), the MDD computed from them, and `reps` tables with that true difference counted."""
    def parts(shift: float, count: int) -> tuple[float, float]:
        vs, vi = [], []
        for _ in range(count):
            _, correct = draw_correct(b, [0.0, shift], rng)
            correct = correct.astype(float)
            e = crossed_summary(correct[1] - correct[0])
            vs.append(e.v_seed)
            vi.append(e.v_image)
        return float(np.mean(vs)), float(np.mean(vi))

    v_seed, v_image = parts(0.0, pilot)
    mdd = minimum_detectable(v_seed, v_image, b.n_seeds, power_, ALPHA, b.n_images - 1)
    shift = _shift_for(b, mdd)
    v_seed, v_image = parts(shift, pilot)  # the parts at the true difference, and the MDD they give
    mdd = minimum_detectable(v_seed, v_image, b.n_seeds, power_, ALPHA, b.n_images - 1)
    shift = _shift_for(b, mdd)
    hits = 0
    for _ in range(reps):
        _, correct = draw_correct(b, [0.0, shift], rng)
        correct = correct.astype(float)
        hits += crossed_summary(correct[1] - correct[0]).p_value < ALPHA
    return {"power": rate(hits, reps), "mdd": (mdd, 0.0), "seed_share": (v_seed / (v_seed + v_image), 0.0)}


# ---------------------------------------------------------------------------------------------
# the figures docs/concepts/statistics.md quotes

COVERAGE_SETTINGS = {
    # RAF-DB-like: 5 seeds x 3,068 images near 74%; a seed shifts accuracy by ~0.5 point (test noise dominates)
    "test noise dominates (5 x 3,068)": Benchmark(5, 3068, 1.4, sd_seed=0.03, sd_image=2.0, sd_seed_image=0.3),
    # synthfer-like: 3 seeds x 1,500 images near 55%, seed and image noise of similar size
    "both (3 x 1,500)": Benchmark(3, 1500, 0.3, sd_seed=0.15, sd_image=1.5, sd_seed_image=0.5),
    # a small, unstable benchmark: seed noise dominates
    "seed noise dominates (3 x 1,500)": Benchmark(3, 1500, 1.0, sd_seed=0.3, sd_image=1.5, sd_seed_image=0.5),
}
# the Δ tables of the committed leaderboards: 3 seeds, seed noise dominant (effective df about 2)
NULL_DELTA = Benchmark(3, 1500, 0.3, sd_split=0.3, sd_seed=0.08, sd_image=1.5, sd_method_image=0.4,
                       sd_seed_image=0.3)
# subjects of 4 images each, whose effect is larger than the images' own: images are not independent
GROUPED = Benchmark(5, 3068, 1.4, sd_seed=0.03, sd_image=1.0, sd_seed_image=0.3, group_size=4, sd_group=1.3)


def readme_figures(reps: int, seed: int = 2023) -> list[str]:
    """Every simulated figure docs/concepts/statistics.md quotes, as lines of text, with Monte-Carlo errors."""
    rng = np.random.default_rng(seed)
    out = [f"replicates per figure: {reps} (generator seed {seed}); ± is one Monte-Carlo standard error"]

    def pct(r: tuple[float, float]) -> str:
        return f"{100 * r[0]:.1f}% ± {100 * r[1]:.1f}"

    for name, b in COVERAGE_SETTINGS.items():
        for metric in ("accuracy", "mean_class_accuracy", "macro_f1"):
            c = coverage(b, metric, reps, rng)
            out.append(f"coverage, {name}, {metric}: over seeds and test images {pct(c['crossed'])}, "
                       f"seed-only t-CI {pct(c['seeds'])}")
    g = coverage(GROUPED, "accuracy", reps, rng)
    gg = coverage(GROUPED, "accuracy", reps, rng, use_groups=True)
    out.append(f"coverage, 4-image groups (5 x 3,068), accuracy: images as units {pct(g['crossed'])}, "
               f"resampling the groups {pct(gg['crossed'])}")
    for m in (6, 10):
        h = holm_fwer(NULL_DELTA, m, reps, rng)
        out.append(f"null Δ table, 3 seeds, {m} comparisons (median effective df {h['effective_df_median'][0]:.2f}): "
                   f"Holm FWER {pct(h['fwer'])} (previous p-values {pct(h['fwer_previous'])}); one comparison "
                   f"rejected at 0.005: {pct(h['at_0.005'])} (previous {pct(h['at_0.005_previous'])}), at 0.0125: "
                   f"{pct(h['at_0.0125'])} (previous {pct(h['at_0.0125_previous'])})")
    for methods, columns in ((3, 1), (5, 1), (5, 2)):
        bc = best_claims(NULL_DELTA, methods, columns, reps, rng)
        out.append(f"global null, {methods} methods x {columns} column(s): some entry shown below the best: "
                   f"all-pairs Holm {pct(bc['all_pairs_holm'])}, previous † rule {pct(bc['previous'])}, Holm vs the "
                   f"observed best {pct(bc['holm_vs_observed_best'])}")
    for n in (3, 5):
        p = power_at_mdd(replace(COVERAGE_SETTINGS["both (3 x 1,500)"], n_seeds=n, sd_method_image=0.3),
                         max(200, reps // 4), reps, rng)
        out.append(f"power at the MDD ({n} seeds x 1,500, MDD {100 * p['mdd'][0]:.2f} points, seed share of the "
                   f"variance {p['seed_share'][0]:.2f}): {pct(p['power'])} (claimed 80%)")
    # RAF-DB-like, where the test images carry a sizeable share of the difference's variance
    p = power_at_mdd(replace(COVERAGE_SETTINGS["test noise dominates (5 x 3,068)"], sd_method_image=0.5),
                     max(200, reps // 4), reps, rng)
    out.append(f"power at the MDD (5 seeds x 3,068, MDD {100 * p['mdd'][0]:.2f} points, seed share of the "
               f"variance {p['seed_share'][0]:.2f}): {pct(p['power'])} (claimed 80%)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.results.simulate", description=__doc__.splitlines()[0])
    p.add_argument("--replicates", type=int, default=4000)
    p.add_argument("--seed", type=int, default=2023)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    for line in readme_figures(args.replicates, args.seed):
        print(line, flush=True)
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
