"""Aggregation over seeds: mean, sample std and 95% Student-t interval; paired differences.

Why Student-t and not a bootstrap: seeds are few (3-5); with n=3 a percentile bootstrap has only 10
distinct resamples and under-covers, while the t interval is exact for normal seed noise
(docs/concepts/statistics.md#what-an-interval-covers). No interval is given for n < 2: there is no spread to estimate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.results.uncertainty import seed_only


@dataclass(frozen=True)
class Summary:
    """n, mean, sample std (ddof=1) and 95% t half-width; std and ci95 are None when n < 2."""

    n: int
    mean: float
    std: float | None
    ci95: float | None

    @property
    def low(self) -> float | None:
        return None if self.ci95 is None else self.mean - self.ci95

    @property
    def high(self) -> float | None:
        return None if self.ci95 is None else self.mean + self.ci95


@dataclass(frozen=True)
class PairedSummary(Summary):
    """Summary of per-seed differences a - b, with the seeds both sides share (ascending)."""

    seeds: tuple[int, ...] = ()

    @property
    def excludes_zero(self) -> bool:
        """True iff there is a CI (n >= 2) and 0 lies strictly outside it."""
        if self.ci95 is None:
            return False
        return self.mean - self.ci95 > 0 or self.mean + self.ci95 < 0


def summarize(values: Sequence[float]) -> Summary:
    """Mean, ddof=1 std and 95% t half-width t(0.975, n-1)*s/sqrt(n) of `values` (`seed_only`'s interval).

    Raises ValueError on an empty sequence (a mean of nothing is not a result).
    """
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("summarize() needs at least one value")
    # fsum: exact, order-independent rounding, so the same values always print the same digits.
    mean = math.fsum(xs) / n
    if n < 2:
        return Summary(n=n, mean=mean, std=None, ci95=None)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    return Summary(n=n, mean=mean, std=std, ci95=seed_only(mean, std, n).ci95)  # the one seed-only t interval


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> PairedSummary:
    """Summary of a[seed] - b[seed] over the seeds present in both (sorted ascending).

    Pairing by seed removes the labeled-split variance both methods share, which dominates at low
    label budgets. Raises ValueError when no seed is shared.
    """
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        raise ValueError("paired_difference(): the two sides share no seed")
    s = summarize([float(a[k]) - float(b[k]) for k in seeds])
    return PairedSummary(n=s.n, mean=s.mean, std=s.std, ci95=s.ci95, seeds=seeds)
