"""The arithmetic of the evaluation: interleaving, medians, spreads, ratios, geomeans.

Kept free of I/O so that tests can check it against hand-computed numbers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def interleave(variants: Sequence[str], rounds: int) -> list[tuple[int, str]]:
    """(round, variant) in the order A B C A B C ...: every round runs each variant once.

    Interleaving spreads slow drifts of the machine (frequency, other load) over
    all variants instead of charging them to whichever ran last.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds}")
    if not variants:
        raise ValueError("no variants to interleave")
    return [(r, v) for r in range(rounds) for v in variants]


@dataclass(frozen=True)
class Summary:
    """Median and spread of repeated samples of one quantity."""

    n: int
    median: float
    lo: float  # smallest sample
    hi: float  # largest sample
    q1: float
    q3: float

    @property
    def rel_spread(self) -> float:
        """(q3 - q1) / median: the interquartile range relative to the median."""
        return (self.q3 - self.q1) / self.median if self.median else math.nan


def summarize(samples: Sequence[float]) -> Summary:
    """Median, extremes and quartiles (inclusive method) of at least one sample."""
    if not samples:
        raise ValueError("no samples to summarize")
    xs = sorted(samples)
    if len(xs) == 1:
        q1 = q3 = xs[0]
    else:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return Summary(n=len(xs), median=statistics.median(xs), lo=xs[0], hi=xs[-1], q1=q1, q3=q3)


def ratio(value: float, baseline: float) -> float:
    """value / baseline; a zero or negative baseline is a measurement error."""
    if baseline <= 0:
        raise ValueError(f"baseline must be positive, not {baseline}")
    return value / baseline


def overhead_pct(r: float) -> float:
    """A time ratio as percent overhead: 1.052 -> 5.2."""
    return (r - 1.0) * 100.0


def geomean(values: Sequence[float]) -> float:
    """Geometric mean of positive numbers (the SPEC convention for ratios)."""
    if not values:
        raise ValueError("geomean of nothing")
    if any(v <= 0 for v in values):
        raise ValueError(f"geomean needs positive values, got {list(values)}")
    return math.exp(math.fsum(math.log(v) for v in values) / len(values))


def paired_ratios(samples: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Per-round ratios sample[i] / baseline[i] (rounds were interleaved, so they pair up)."""
    if len(samples) != len(baseline):
        raise ValueError(f"{len(samples)} samples against {len(baseline)} baseline samples")
    return [ratio(s, b) for s, b in zip(samples, baseline, strict=True)]
