"""Accuracy intervals that combine seed-to-seed variation with test-set sampling noise; paired comparisons
over seeds and test images; Holm's correction across a table of comparisons.

Every seed of a method is scored on the same N test images, so a cell's results form a seeds x images
table y[s, i] (1 if seed s classified image i correctly). Its accuracy is the grand mean of y. What a reader
wants to know is the accuracy the method would reach on new seeds (training randomness, labeled split) *and*
new images from the same population, so both are random: a two-way crossed random-effects model

    y[s, i] = mu + a_s + b_i + e_si,   a_s ~ (0, var_seed), b_i ~ (0, var_image), e_si ~ (0, var_error),

all independent. Then Var(mean) = var_seed / n + var_image / N + var_error / (n N), which splits into

    V_seed  = s^2 / n    with s^2 the sample variance of the n seed means (E s^2 = var_seed + var_error / N)
    V_image = (MS_image - MS_error) / (n N),   MS_image = n * sum_i (ybar_.i - ybar..)^2 / (N - 1),
              MS_error = sum_si (y_si - ybar_s. - ybar_.i + ybar..)^2 / ((n - 1)(N - 1))

(ANOVA method of moments; a negative V_image is set to 0). The 95% half-width combines the two parts in
quadrature, each with its own critical value:

    half = sqrt( t(0.975, n - 1)^2 V_seed + z(0.975)^2 V_image ).

The seed part is estimated from n - 1 degrees of freedom and keeps the t quantile of the seed-only interval;
the image part, from thousands of images, is nearly exact. Where one part dominates, the interval is the
seed-only t interval or the binomial-style test-set interval; in between it is conservative, because each
critical value is at least the one a combined Student-t would need. (A single Satterthwaite t, tried first,
under-covered with 2-3 seeds: 0.89-0.92 where seed noise dominates.) The p-value of a difference uses the
effective degrees of freedom at which a t interval has this half-width, so p < 0.05 exactly when the
interval excludes 0. `tests/test_uncertainty.py` measures the coverage on simulated benchmarks.

Assumptions: seeds are independent draws of the training randomness; test images are an independent sample
from the population the benchmark stands for (the finite-population correction is ignored); the effects are
additive on the accuracy scale, and the mean is close enough to normal for a t interval (it is an average of
n N terms). A paired comparison of two methods applies the same model to the differences
d[s, i] = y_A[s, i] - y_B[s, i] on the seeds both ran (same split manifests) and the same images, which
removes the variance the two share (hard images, a bad labeled split): this is what a paired t test over
seeds does for seeds, and what McNemar's test does for images, at once.

No interval is given for one seed: the seed variance cannot be estimated (as for the seed-only t interval).
`tests/test_uncertainty.py` checks coverage on simulated benchmarks whose true population accuracy is known.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy_stats


@dataclass(frozen=True)
class CrossedSummary:
    """Mean of a seeds x images table with its combined 95% half-width, the two variance parts behind it, and
    the effective degrees of freedom (those of a t interval with the same half-width)."""

    n_seeds: int
    n_images: int
    mean: float
    v_seed: float
    v_image: float
    ci95: float
    df: float

    @property
    def se(self) -> float:
        return math.sqrt(self.v_seed + self.v_image)

    @property
    def p_value(self) -> float:
        """Two-sided p-value of mean = 0 (for a table of differences: of no difference)."""
        if self.se == 0:
            return 1.0 if self.mean == 0 else 0.0
        return float(2 * _scipy_stats.t.sf(abs(self.mean) / self.se, self.df))

    @property
    def excludes_zero(self) -> bool:
        return self.mean - self.ci95 > 0 or self.mean + self.ci95 < 0


def crossed_summary(y: np.ndarray) -> CrossedSummary | None:
    """The combined interval of table `y` (seeds x images: 0/1 correctness, or paired differences of it).

    Returns None for fewer than 2 seeds (no seed variance to estimate). Raises ValueError for fewer than 2 images.
    """
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] < 2:
        raise ValueError(f"crossed_summary(): expected a seeds x images table with >= 2 images, got {y.shape}")
    n, N = y.shape
    if n < 2:
        return None
    grand = float(y.mean())
    seed_means, image_means = y.mean(axis=1), y.mean(axis=0)
    v_seed = float(((seed_means - grand) ** 2).sum()) / (n - 1) / n
    ms_image = n * float(((image_means - grand) ** 2).sum()) / (N - 1)
    ms_error = float(((y - seed_means[:, None] - image_means[None, :] + grand) ** 2).sum()) / ((n - 1) * (N - 1))
    v_image = max(0.0, (ms_image - ms_error) / (n * N))
    t_seed, z = float(_scipy_stats.t.ppf(0.975, n - 1)), float(_scipy_stats.norm.ppf(0.975))
    half = math.sqrt(t_seed**2 * v_seed + z**2 * v_image)
    return CrossedSummary(n, N, grand, v_seed, v_image, half, _effective_df(half, v_seed + v_image, n - 1))


def _effective_df(half: float, var: float, seed_df: int) -> float:
    """The df at which t(0.975, df) * sqrt(var) = half: between seed_df (seed part only) and inf (images only)."""
    if var <= 0:
        return float("inf")
    q = half / math.sqrt(var)
    if q <= float(_scipy_stats.norm.ppf(0.975)) + 1e-12:
        return float("inf")
    if q >= float(_scipy_stats.t.ppf(0.975, seed_df)):
        return float(seed_df)
    from scipy.optimize import brentq

    return float(brentq(lambda df: _scipy_stats.t.ppf(0.975, df) - q, seed_df, 1e9, xtol=1e-9))


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
