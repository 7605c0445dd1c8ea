"""Intervals over seeds and test images for accuracy, mean class accuracy and macro-F1; p-values consistent with
those intervals at every level; Holm's correction; power, minimum detectable differences and seed planning.

Every seed of a method is scored on the same N test images, so a cell's results form a seeds x images table.
For accuracy it is y[s, i] (1 if seed s classified image i correctly) and the cell's value is its grand mean.
What a reader wants to know is the value the method would reach on new seeds (training randomness, labeled
split) *and* new images from the population the test set samples, so both are random: a two-way crossed
random-effects model

    y[s, i] = mu + a_s + b_i + e_si,   a_s ~ (0, var_seed), b_i ~ (0, var_image), e_si ~ (0, var_error),

all independent. Then Var(mean) = var_seed / n + var_image / N + var_error / (n N), which splits into

    V_seed  = s^2 / n    with s^2 the sample variance of the n seed values (E s^2 = var_seed + var_error / N)
    V_image = (MS_image - MS_error) / (n N),   MS_image = n * sum_i (ybar_.i - ybar..)^2 / (N - 1),
              MS_error = sum_si (y_si - ybar_s. - ybar_.i + ybar..)^2 / ((n - 1)(N - 1))

(ANOVA method of moments; a negative V_image is set to 0). Mean class accuracy and macro-F1 are not means of
one 0/1 value per image, but each seed's value is a smooth function of its image-level outcomes, so the same
split applies to its linearisation: psi[s, i], the part of seed s's value that image i contributes (its
influence; for accuracy (y_si - ybar_s.) / N), gives

    V_image = N / (N - 1) * ( sum_i psibar_i^2 - sum_si (psi_si - psibar_i)^2 / (n (n - 1)) ),

which for accuracy is exactly the ANOVA estimate above. The subtracted term removes the seed-by-image noise
that s^2 already counts. All three metrics so estimate the same kind of quantity: the expected value over new
seeds and new test images. A paired difference of two methods on the same seeds and images uses the
differences of the seed values and of the influences.

Test images are assumed independent. Images that share a subject (or a video) are not: where the predictions
carry a group id per image, the influences are summed within groups and the groups are the independent units
(G groups: G / (G - 1) and sum over groups instead of images; with one image per group this is the formula
above). Ignoring groups of correlated images makes the interval too narrow (`tests/test_uncertainty.py`).

The 95% half-width combines the two parts in quadrature, each with its own critical value:

    half(alpha) = sqrt( t(1 - alpha/2, n - 1)^2 V_seed + t(1 - alpha/2, G - 1)^2 V_image )

(G = N without groups, where the second quantile is the normal one for any practical N). The seed part keeps
the t quantile of the seed-only interval; the image part, from hundreds or thousands of units, is nearly exact.
Where one part dominates the interval is the seed-only t interval or the binomial-style test-set interval; in
between it is conservative, because each critical value is at least the one a combined Student-t would need.
(A single Satterthwaite t, tried first, under-covered with 2-3 seeds: 0.89-0.92 where seed noise dominates.)

The p-value of a difference is the alpha at which half(alpha) = |mean|: p < alpha exactly when the 1 - alpha
interval excludes 0, at every alpha. (A t tail at one effective df, matched to the interval at alpha = 0.05
only, gave p-values too small in the tails Holm's correction uses: with 3 seeds, rejections at 0.005 about 1.5
times the nominal rate.) Power and the minimum detectable difference use the same rule: the estimate is normal
with variance V_seed + V_image, V_seed is estimated with n - 1 degrees of freedom (a scaled chi-square) and
V_image is taken as known (it comes from thousands of images).

Assumptions: seeds are independent draws of the training randomness; test images (or their groups) are an
independent sample from the population the benchmark stands for (the finite-population correction is ignored);
the effects are additive on the metric's scale, and the estimate is close enough to normal (it averages n N
terms). No interval is given for one seed: the seed variance cannot be estimated (as for the seed-only t
interval). `tests/test_uncertainty.py` checks coverage, the p-values' calibration under Holm, and power, on
simulated benchmarks whose population values are known (`bench/results/simulate.py`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import optimize, special
from scipy import stats as _scipy_stats

METRICS = ("accuracy", "mean_class_accuracy", "macro_f1")  # those with an interval over test images
_P_FLOOR = 1e-300  # p-values below this are reported as this (a t quantile at 1e-300 is still finite)


def _quantile(df: float, alpha: float) -> float:
    """t(1 - alpha/2, df) (normal for df = inf), from the lower tail so that tiny alphas stay exact."""
    return -float(special.stdtrit(df, alpha / 2.0))


@dataclass(frozen=True)
class Estimate:
    """A mean with its variance split into a seed part (estimated from n - 1 degrees of freedom) and an image
    part (from `image_df` degrees of freedom: the independent test units less one; inf or an absent part: known).

    A seed-only t interval is the case v_image = 0."""

    mean: float
    v_seed: float
    v_image: float
    n_seeds: int
    image_df: float = math.inf

    @property
    def seed_df(self) -> int:
        return self.n_seeds - 1

    @property
    def se(self) -> float:
        return math.sqrt(self.v_seed + self.v_image)

    def half_width(self, alpha: float = 0.05) -> float:
        """Half-width of the two-sided 1 - alpha interval: each part with its own critical value, in quadrature."""
        seed = _quantile(self.seed_df, alpha) * math.sqrt(self.v_seed)
        image = _quantile(self.image_df, alpha) * math.sqrt(self.v_image) if self.v_image > 0 else 0.0
        return math.hypot(seed, image)  # not sqrt(a^2 + b^2): a quantile near 1e-300 squared overflows

    @property
    def ci95(self) -> float:
        return self.half_width(0.05)

    @property
    def p_value(self) -> float:
        """Two-sided p-value of mean = 0: the alpha at which the 1 - alpha interval just reaches 0."""
        if self.mean == 0:
            return 1.0
        if self.se == 0:
            return 0.0
        target = abs(self.mean)
        if self.half_width(_P_FLOOR) <= target:
            return _P_FLOOR
        # half_width falls from +inf (alpha -> 0) to 0 (alpha = 1): one root, found on log(alpha)
        root = optimize.brentq(lambda u: self.half_width(math.exp(u)) - target, math.log(_P_FLOOR), 0.0,
                               xtol=1e-12, rtol=1e-12)
        return float(min(1.0, math.exp(root)))

    @property
    def excludes_zero(self) -> bool:
        return self.mean - self.ci95 > 0 or self.mean + self.ci95 < 0

    def power(self, delta: float, alpha: float = 0.05) -> float:
        """P(the two-sided level-alpha test rejects) if the true mean were `delta`, with these variance parts."""
        return power(delta, self.v_seed, self.v_image, self.n_seeds, alpha, self.image_df)

    def mdd(self, power_: float = 0.8, alpha: float = 0.05) -> float:
        """Minimum detectable difference: the true |mean| the level-alpha test detects with probability `power_`."""
        return minimum_detectable(self.v_seed, self.v_image, self.n_seeds, power_, alpha, self.image_df)


@dataclass(frozen=True)
class CrossedSummary(Estimate):
    """The mean of a seeds x images table with its variance parts; `n_groups` independent test units (images, or
    the groups of images given)."""

    n_images: int = 0
    n_groups: int = 0

    @property
    def grouped(self) -> bool:
        return self.n_groups < self.n_images


def seed_only(mean: float, std: float | None, n: int) -> Estimate | None:
    """The seed-only t interval as an Estimate (None without a spread: n < 2): half-width t(0.975, n - 1) * std /
    sqrt(n). The one such interval: a cell's summary over seeds (`bench.results.stats`), a Δ without predictions
    and the simulations' seed-only coverage all use it."""
    if std is None or n < 2:
        return None
    return Estimate(mean, std**2 / n, 0.0, n)


# ---------------------------------------------------------------------------------------------
# estimation


def crossed(theta: np.ndarray, psi: np.ndarray, groups: np.ndarray | None = None) -> CrossedSummary | None:
    """The crossed estimate from per-seed values `theta` (n,) and per-seed image influences `psi` (n, N; each row
    sums to 0), the image part summed within `groups` (N,) when given. None for fewer than 2 seeds; ValueError
    for fewer than 2 images or groups, or a malformed input."""
    theta, psi = np.asarray(theta, dtype=np.float64), np.asarray(psi, dtype=np.float64)
    if psi.ndim != 2 or theta.shape != (psi.shape[0],) or psi.shape[1] < 2:
        raise ValueError(f"crossed(): expected seed values (n,) and influences (n, N >= 2), got {theta.shape} "
                         f"and {psi.shape}")
    n, N = psi.shape
    if n < 2:
        return None
    G = N
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (N,):
            raise ValueError(f"crossed(): expected one group id per image ({N}), got shape {groups.shape}")
        _, inverse = np.unique(groups, return_inverse=True)
        G = int(inverse.max()) + 1
        if G < 2:
            raise ValueError("crossed(): the test images form a single group; no image variance to estimate")
        psi = np.stack([np.bincount(inverse, weights=row, minlength=G) for row in psi])
    mean = float(theta.mean())
    v_seed = float(((theta - mean) ** 2).sum()) / (n - 1) / n
    psibar = psi.mean(axis=0)
    between = float((psibar**2).sum())
    within = float(((psi - psibar) ** 2).sum()) / (n * (n - 1))
    v_image = max(0.0, G / (G - 1) * (between - within))
    return CrossedSummary(mean, v_seed, v_image, n, float(G - 1), n_images=N, n_groups=G)


def crossed_summary(y: np.ndarray, groups: np.ndarray | None = None) -> CrossedSummary | None:
    """The interval of the grand mean of table `y` (seeds x images: 0/1 correctness, or paired differences of it).

    Returns None for fewer than 2 seeds (no seed variance to estimate). Raises ValueError for fewer than 2 images.
    """
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] < 2:
        raise ValueError(f"crossed_summary(): expected a seeds x images table with >= 2 images, got {y.shape}")
    theta = y.mean(axis=1)
    return crossed(theta, (y - theta[:, None]) / y.shape[1], groups)


def metric_influence(metric: str, targets: np.ndarray, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(theta, psi): each seed's value of `metric` and its linearisation over the images, from the test `targets`
    (N,) and each seed's `predictions` (n, N). Values as `bench.metrics` computes them: mean class accuracy and
    macro-F1 average over the classes present in the targets; F1 = 2 TP / (support + predicted)."""
    t = np.asarray(targets, dtype=np.int64)
    p = np.atleast_2d(np.asarray(predictions, dtype=np.int64))
    n, N = p.shape
    y = (p == t[None, :]).astype(np.float64)
    if metric == "accuracy":
        theta = y.mean(axis=1)
        return theta, (y - theta[:, None]) / N
    classes, t_idx, support = np.unique(t, return_inverse=True, return_counts=True)
    K = len(classes)
    # per seed and present class: correct predictions (TP) and how often it was predicted
    tp = np.stack([np.bincount(t_idx, weights=row, minlength=K) for row in y])
    pos = np.searchsorted(classes, p).clip(0, K - 1)
    p_idx = np.where(classes[pos] == p, pos, -1)  # -1: a predicted class absent from the targets
    if metric == "mean_class_accuracy":
        recall = tp / support
        theta = recall.mean(axis=1)
        return theta, (y - np.take_along_axis(recall, np.broadcast_to(t_idx, (n, N)), 1)) / (K * support[t_idx])
    if metric != "macro_f1":
        raise ValueError(f"metric_influence(): unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    predicted = np.stack([np.bincount(row[row >= 0], minlength=K) for row in p_idx]).astype(np.float64)
    denom = support[None, :] + predicted  # > 0: every present class has support
    f1 = 2 * tp / denom
    theta = f1.mean(axis=1)
    # F1_c = 2 TP_c / D_c linearises to sum_i (2 a_ic - F1_c b_ic) / D_c, a_ic = [t_i = p_i = c],
    # b_ic = [t_i = c] + [p_i = c]: an image touches its true class and, if wrong, its predicted one.
    rows = np.arange(n)[:, None]
    f_t, d_t = f1[rows, t_idx[None, :]], denom[rows, t_idx[None, :]]
    psi = (2 * y - f_t * (1 + y)) / d_t
    wrong_present = (y == 0) & (p_idx >= 0)
    q = np.where(wrong_present, p_idx, 0)
    psi -= np.where(wrong_present, f1[rows, q] / denom[rows, q], 0.0)
    return theta, psi / K


# ---------------------------------------------------------------------------------------------
# multiplicity


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down; monotone; capped at 1), in the input order.

    Rejecting where the adjusted p-value is below alpha controls the family-wise error rate at alpha over all
    the comparisons given, whatever their dependence.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda k: (p_values[k], k))
    adjusted = [0.0] * m
    running = 0.0
    for rank, k in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[k])))
        adjusted[k] = running
    return adjusted


def holm_levels(p_values: Sequence[float], alpha: float = 0.05) -> list[float]:
    """The level at which Holm's step-down tests each comparison, in the input order: alpha / (m - r) at step r
    (0-based, ascending p) while it rejects, and the level of the first step that does not for the rest.

    The 1 - level interval of each comparison excludes 0 exactly when its Holm-adjusted p-value is below alpha
    (given p-values consistent with their intervals at every level), so these intervals show Holm's verdicts."""
    m = len(p_values)
    order = sorted(range(m), key=lambda k: (p_values[k], k))
    levels = [0.0] * m
    stop = None
    for rank, k in enumerate(order):
        if stop is None and p_values[k] >= alpha / (m - rank):
            stop = alpha / (m - rank)
        levels[k] = stop if stop is not None else alpha / (m - rank)
    return levels


# ---------------------------------------------------------------------------------------------
# power and planning


@lru_cache(maxsize=256)
def _chi_nodes(df: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights for E[f(Y)], Y ~ chi(df) (so Y^2 / df is the variance ratio): the
    integrand is smooth in Y (not in Y^2), so 96 nodes on [0, the 1 - 1e-13 quantile] reach ~1e-13."""
    top = float(_scipy_stats.chi.isf(1e-13, df))
    x, w = np.polynomial.legendre.leggauss(96)
    y = (x + 1) * top / 2
    return y, w * top / 2 * _scipy_stats.chi.pdf(y, df)


def power(delta: float, v_seed: float, v_image: float, n_seeds: int, alpha: float = 0.05,
          image_df: float = math.inf) -> float:
    """P(|estimate| > half(alpha)) when the true mean is `delta`: the estimate ~ N(delta, v_seed + v_image), its
    seed variance estimated as v_seed * chi2(n - 1) / (n - 1) independently, its image variance known. With
    v_image = 0 this is the power of the paired t test (the noncentral t)."""
    if n_seeds < 2:
        raise ValueError(f"power(): needs >= 2 seeds, got {n_seeds}")
    sd = math.sqrt(v_seed + v_image)
    t_seed = _quantile(n_seeds - 1, alpha)
    t_image = _quantile(image_df, alpha) if v_image > 0 else 0.0
    if v_seed == 0:
        h = math.sqrt(t_image**2 * v_image)
        return float(special.ndtr((delta - h) / sd) + special.ndtr((-delta - h) / sd)) if sd > 0 else \
            float(abs(delta) > 0)
    y, w = _chi_nodes(n_seeds - 1)
    h = np.sqrt(t_seed**2 * v_seed * y**2 / (n_seeds - 1) + t_image**2 * v_image)
    return float(min(1.0, np.sum(w * (special.ndtr((delta - h) / sd) + special.ndtr((-delta - h) / sd)))))


def minimum_detectable(v_seed: float, v_image: float, n_seeds: int, power_: float = 0.8, alpha: float = 0.05,
                       image_df: float = math.inf) -> float:
    """The smallest true |difference| detected with probability `power_` by the two-sided level-alpha test."""
    if not 0 < alpha < 1 or not alpha < power_ < 1:
        raise ValueError(f"minimum_detectable(): expected 0 < alpha < power < 1, got alpha={alpha}, power={power_}")
    sd = math.sqrt(v_seed + v_image)
    if sd == 0:
        return 0.0
    hi = sd
    while power(hi, v_seed, v_image, n_seeds, alpha, image_df) < power_:
        hi *= 2
    return float(optimize.brentq(lambda d: power(d, v_seed, v_image, n_seeds, alpha, image_df) - power_,
                                 0.0, hi, xtol=1e-12 * sd))


def seeds_needed(delta: float, seed_var: float, v_image: float, power_: float = 0.8, alpha: float = 0.05, *,
                 image_df: float = math.inf, max_seeds: int = 1000) -> int | None:
    """The fewest seeds (>= 2) with which a true difference `delta` is detected with probability `power_`, given
    the variance of one seed's paired difference `seed_var` (n * V_seed) and the test images' part `v_image`
    (which more seeds do not reduce); None if even `max_seeds` seeds fall short (then the test set is too small
    for `delta`)."""
    if delta <= 0 or seed_var < 0 or v_image < 0:
        raise ValueError(f"seeds_needed(): expected delta > 0 and variances >= 0, got {delta}, {seed_var}, {v_image}")

    def enough(n: int) -> bool:
        return power(delta, seed_var / n, v_image, n, alpha, image_df) >= power_

    if not enough(max_seeds):
        return None
    lo, hi = 1, max_seeds  # enough(hi); lo is "not enough" (a single seed cannot be tested)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi
