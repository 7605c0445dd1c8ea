"""Intervals over seeds and test images, and Holm's correction: hand-worked values and coverage on simulated
benchmarks whose true population accuracy is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bench.results.uncertainty import crossed_summary, holm


def test_hand_worked_two_seeds_by_three_images() -> None:
    # y = [[1, 1, 0], [1, 0, 0]]: grand mean 1/2; seed means 2/3, 1/3; image means 1, 1/2, 0.
    # V_seed = s^2 / n = ((1/6)^2 + (1/6)^2) / 1 / 2 = 1/36.
    # MS_image = n * sum (image mean - 1/2)^2 / (N - 1) = 2 * (1/4 + 0 + 1/4) / 2 = 1/2.
    # residuals y - seed mean - image mean + 1/2 = [[-1/6, 1/3, -1/6], [1/6, -1/3, 1/6]]: sum of squares 1/3,
    # MS_error = (1/3) / ((n - 1)(N - 1)) = 1/6;  V_image = (1/2 - 1/6) / (n N) = 1/18.
    # half = sqrt(t(0.975, 1)^2 / 36 + z(0.975)^2 / 18) = sqrt(12.7062^2 / 36 + 1.95996^2 / 18) = 2.16750.
    c = crossed_summary(np.array([[1, 1, 0], [1, 0, 0]]))
    assert (c.n_seeds, c.n_images, c.mean) == (2, 3, 0.5)
    assert c.v_seed == pytest.approx(1 / 36) and c.v_image == pytest.approx(1 / 18)
    assert c.ci95 == pytest.approx(math.sqrt(12.706204736**2 / 36 + 1.959963985**2 / 18), rel=1e-9)
    assert c.ci95 == pytest.approx(2.16750, abs=1e-5)
    # the effective df: the t quantile at which t * sqrt(V) equals the half-width, between 1 and infinity
    assert stats.t.ppf(0.975, c.df) * c.se == pytest.approx(c.ci95, rel=1e-7) and 1 < c.df < 2
    # p < 0.05 exactly when the interval excludes 0
    assert (c.p_value < 0.05) == c.excludes_zero


def test_limits_one_seed_none_and_a_negative_image_component_is_zero() -> None:
    assert crossed_summary(np.ones((1, 50))) is None
    with pytest.raises(ValueError, match="images"):
        crossed_summary(np.ones((3, 1)))
    # each image right on exactly one of two seeds: the image means are all 1/2, MS_image = 0 < MS_error
    y = np.array([[1, 0, 1, 0], [0, 1, 0, 1]])
    c = crossed_summary(y)
    assert c.v_image == 0.0 and c.v_seed == 0.0 and c.ci95 == 0.0 and c.p_value == 0.0  # mean 0.5, no spread
    same = crossed_summary(np.zeros((3, 10)))
    assert same.ci95 == 0.0 and same.p_value == 1.0


def test_holm_on_a_known_vector() -> None:
    # sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> raised to 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []
    # the family-wise verdicts: 0.01 and 0.005 survive at 0.05, 0.03 and 0.04 do not
    assert [p < 0.05 for p in holm([0.01, 0.04, 0.03, 0.005])] == [True, False, False, True]


def _population_accuracy(a: float, sd: float) -> float:
    """E[sigmoid(a + Z)], Z ~ N(0, sd^2), by Gauss-Hermite quadrature: the truth of the simulation."""
    x, w = np.polynomial.hermite_e.hermegauss(80)
    return float((w / (1 + np.exp(-(a + sd * x)))).sum() / w.sum())


def _coverage(reps: int, n: int, N: int, a: float, sd_seed: float, sd_image: float, sd_inter: float,
              rng: np.random.Generator) -> tuple[float, float, float]:
    """Simulated benchmarks: P(correct) = sigmoid(a + u_seed + v_image + w_seed,image) with normal effects (a
    seed shifts every image, images differ in difficulty, and seeds disagree image by image); returns the
    coverage of the combined interval and of the seed-only t interval, and the true accuracy."""
    truth = _population_accuracy(a, math.sqrt(sd_seed**2 + sd_image**2 + sd_inter**2))
    hit_combined = hit_seeds = 0
    t = stats.t.ppf(0.975, n - 1)
    for _ in range(reps):
        logit = (a + rng.normal(0, sd_seed, (n, 1)) + rng.normal(0, sd_image, (1, N))
                 + rng.normal(0, sd_inter, (n, N)))
        y = (rng.random((n, N)) < 1 / (1 + np.exp(-logit))).astype(float)
        c = crossed_summary(y)
        hit_combined += abs(c.mean - truth) <= c.ci95
        seed_means = y.mean(axis=1)
        hit_seeds += abs(seed_means.mean() - truth) <= t * seed_means.std(ddof=1) / math.sqrt(n)
    return hit_combined / reps, hit_seeds / reps, truth


@pytest.mark.parametrize("case, n, N, a, sd_seed, sd_image, sd_inter", [
    # RAF-DB-like: 5 seeds x 3,068 images near 74%; a seed shifts accuracy by ~0.5 point (test noise dominates)
    ("test noise dominates", 5, 3068, 1.7, 0.03, 2.0, 0.3),
    # synthfer-like: 3 seeds x 1,500 images near 55%, seed and image noise of similar size
    ("both", 3, 1500, 0.3, 0.15, 1.5, 0.5),
    # a small, unstable benchmark: seed noise dominates
    ("seed noise dominates", 3, 1500, 1.0, 0.3, 1.5, 0.5),
])
def test_combined_interval_covers_the_population_accuracy(case, n, N, a, sd_seed, sd_image, sd_inter) -> None:
    """>= 93% coverage of the nominal 95% over 400 simulated benchmarks (binomial SE of the coverage ~1.1
    points), in every regime; the seed-only t interval misses the test-set noise where that dominates."""
    combined, seeds_only, truth = _coverage(400, n, N, a, sd_seed, sd_image, sd_inter, np.random.default_rng(7))
    assert 0.5 < truth < 0.9
    assert combined >= 0.93, (case, combined, seeds_only)
    if case == "test noise dominates":
        assert seeds_only < 0.92 < combined, (seeds_only, combined)


def test_paired_difference_removes_the_shared_image_difficulty() -> None:
    """Two methods scored on the same images: the test-image part of the difference's variance is far below the
    two cells' image parts together, because hard images are hard for both (what McNemar's test exploits)."""
    rng = np.random.default_rng(3)
    difficulty = rng.normal(0, 2.0, (1, 1500))
    a = (rng.random((5, 1500)) < 1 / (1 + np.exp(-(0.9 + difficulty)))).astype(float)
    b = (rng.random((5, 1500)) < 1 / (1 + np.exp(-(0.6 + difficulty)))).astype(float)
    ca, cb, d = crossed_summary(a), crossed_summary(b), crossed_summary(a - b)
    assert d.mean == pytest.approx(ca.mean - cb.mean)
    assert d.v_image < 0.2 * (ca.v_image + cb.v_image)
    assert d.ci95 < math.hypot(ca.ci95, cb.ci95)  # narrower than comparing the two intervals unpaired
    assert d.excludes_zero and d.p_value < 0.05
