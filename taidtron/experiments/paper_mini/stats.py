"""The page's statistics: per-cell means and paired contrasts between arms, each with a two-sided 95% confidence
interval from the t-distribution with n - 1 degrees of freedom over the n replicates (mean ± t_{0.975, n-1} · s/√n,
s the sample standard deviation). Contrasts are paired by replicate: both arms of a difference share the replicate's
teachers, pretrained student and data order, so what varies between replicates (teachers, student, data order)
enters the interval and what the replicate shares cancels.

A difference is *resolved* when its interval excludes 0; the page's reading says nothing else about it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    half_width: float
    """t_{0.975, n-1} · s / √n; nan with one value (no interval)."""
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @property
    def resolved(self) -> bool:
        """The interval excludes 0 (False without an interval)."""
        return self.n > 1 and (self.low > 0 or self.high < 0)

    def text(self, digits: int = 4) -> str:
        """`mean [low, high]`, or the mean alone without an interval."""
        if self.n < 2:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def signed(self, digits: int = 4) -> str:
        """Like `text` with explicit signs, for differences."""
        if self.n < 2:
            return f"{self.mean:+.{digits}f}"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def t_quantile(n: int) -> float:
    """t_{(1 + CONFIDENCE) / 2, n - 1}: 12.71 for n = 2, 4.30 for n = 3, 3.18 for n = 4."""
    from scipy.stats import t

    return float(t.ppf((1 + CONFIDENCE) / 2, n - 1))


def interval(values: list[float]) -> Interval:
    """Mean and 95% t-interval of independent replicates' values."""
    if not values:
        raise ValueError("an interval needs at least one value.")
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Interval(mean, math.nan, n)
    return Interval(mean, t_quantile(n) * statistics.stdev(values) / math.sqrt(n), n)


def differences(a: dict[int, float], b: dict[int, float]) -> dict[int, float]:
    """seed -> a - b, for the replicates present in both (seed -> value)."""
    return {seed: a[seed] - b[seed] for seed in sorted(a) if seed in b}


def paired(a: dict[int, float], b: dict[int, float]) -> list[float]:
    """a - b per replicate present in both, in seed order."""
    return list(differences(a, b).values())
