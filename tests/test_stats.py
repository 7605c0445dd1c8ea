"""Seed aggregation: mean, ddof=1 std, 95% Student-t half-width and paired differences, by hand."""

import math

import pytest

from bench.results.stats import PairedSummary, Summary, paired_difference, summarize
from bench.results.uncertainty import seed_only

T2 = 4.302652729749464  # t(0.975, 2), the n=3 critical value


@pytest.mark.parametrize("n,expected", [(2, 12.706), (3, 4.303), (4, 3.182), (5, 2.776), (10, 2.262)])
def test_t_quantiles_match_the_published_table(n, expected):
    # the seed-only interval of n seeds with SD 1 is t(0.975, n - 1) / sqrt(n)
    assert seed_only(0.0, 1.0, n).ci95 * math.sqrt(n) == pytest.approx(expected, abs=5e-4)


def test_summaries_and_the_estimates_share_one_seed_only_interval():
    values = [0.80, 0.82, 0.85]
    s = summarize(values)
    assert s.ci95 == seed_only(s.mean, s.std, s.n).ci95


def test_summarize_three_seeds():
    s = summarize([0.80, 0.82, 0.84])
    assert isinstance(s, Summary)
    assert s.n == 3
    assert s.mean == pytest.approx(0.82)
    # ((-0.02)^2 + 0 + 0.02^2) / (3 - 1) = 0.0004 -> s = 0.02 (ddof=1, not ddof=0's 0.01633)
    assert s.std == pytest.approx(0.02)
    assert s.ci95 == pytest.approx(T2 * 0.02 / math.sqrt(3))
    assert s.ci95 == pytest.approx(0.0496827542, rel=1e-9)
    assert s.low == pytest.approx(0.82 - 0.0496827542)
    assert s.high == pytest.approx(0.82 + 0.0496827542)


def test_summarize_two_seeds_uses_t_with_one_degree_of_freedom():
    s = summarize([0.83, 0.87])
    # mean 0.85, s = 0.04 / sqrt(2), half-width = 12.7062 * s / sqrt(2) = 12.7062 * 0.02
    assert s.mean == pytest.approx(0.85)
    assert s.std == pytest.approx(0.04 / math.sqrt(2))
    assert s.ci95 == pytest.approx(12.706204736174694 * 0.02)


def test_single_seed_has_no_std_and_no_ci():
    s = summarize([0.7])
    assert (s.n, s.mean, s.std, s.ci95, s.low, s.high) == (1, 0.7, None, None, None, None)


def test_identical_values_give_zero_width():
    s = summarize([0.5, 0.5, 0.5, 0.5])
    assert s.std == 0.0 and s.ci95 == 0.0


def test_summarize_empty_raises():
    with pytest.raises(ValueError):
        summarize([])


def test_paired_difference_over_shared_seeds_only():
    a = {2: 0.90, 0: 0.80, 1: 0.85, 7: 0.50}  # seed 7 has no partner
    b = {0: 0.78, 1: 0.82, 2: 0.86, 5: 0.10}  # seed 5 has no partner
    d = paired_difference(a, b)
    assert isinstance(d, PairedSummary)
    assert d.seeds == (0, 1, 2)
    # differences 0.02, 0.03, 0.04: mean 0.03, s 0.01, half-width 4.3027 * 0.01 / sqrt(3) = 0.02484
    assert d.n == 3
    assert d.mean == pytest.approx(0.03)
    assert d.std == pytest.approx(0.01)
    assert d.ci95 == pytest.approx(0.0248413771, rel=1e-8)
    assert d.excludes_zero  # [0.0052, 0.0548]


def test_paired_difference_can_be_significant_while_unpaired_intervals_overlap():
    # Large split variance shared by both methods: unpaired CIs overlap a lot, the paired one does not.
    a = {0: 0.70, 1: 0.80, 2: 0.90}
    b = {0: 0.68, 1: 0.77, 2: 0.88}
    sa, sb = summarize(list(a.values())), summarize(list(b.values()))
    assert sa.low < sb.high
    d = paired_difference(a, b)  # differences 0.02, 0.03, 0.02: mean 0.02333, s 0.005774
    assert d.mean == pytest.approx(0.07 / 3)
    assert d.std == pytest.approx(math.sqrt((2 * (0.01 / 3) ** 2 + (0.02 / 3) ** 2) / 2))
    assert d.excludes_zero


def test_paired_difference_ci_containing_zero():
    # differences 0.01, -0.01, 0.03: mean 0.01, s 0.02, CI 0.01 +- 0.0497 contains 0
    d = paired_difference({0: 0.81, 1: 0.79, 2: 0.83}, {0: 0.80, 1: 0.80, 2: 0.80})
    assert d.mean == pytest.approx(0.01)
    assert d.std == pytest.approx(0.02)
    assert d.ci95 == pytest.approx(0.0496827542, rel=1e-8)
    assert not d.excludes_zero


def test_negative_paired_difference_excluding_zero():
    d = paired_difference({0: 0.75, 1: 0.76, 2: 0.74}, {0: 0.80, 1: 0.80, 2: 0.80})
    assert d.mean == pytest.approx(-0.05)
    assert d.excludes_zero


def test_paired_difference_single_shared_seed_has_no_ci():
    d = paired_difference({0: 0.9, 1: 0.8}, {1: 0.7, 3: 0.1})
    assert d.seeds == (1,)
    assert d.mean == pytest.approx(0.1)
    assert d.ci95 is None and d.std is None
    assert not d.excludes_zero


def test_paired_difference_without_shared_seeds_raises():
    with pytest.raises(ValueError, match="share no seed"):
        paired_difference({0: 0.9}, {1: 0.8})
