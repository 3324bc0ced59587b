"""Paired bootstrap over eval examples: confidence intervals of a trial's mean score and of the
difference between two trials scored on the same examples (resampling examples, not references)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    estimate: float
    """The observed mean (or mean difference) over the examples."""
    low: float
    high: float
    examples: int

    def scaled(self, factor: float) -> "Interval":
        """The same interval in other units (ROUGE F1 x 100 = points)."""
        return Interval(factor * self.estimate, factor * self.low, factor * self.high, self.examples)

    @property
    def excludes_zero(self) -> bool:
        """For a difference: the interval says it is unlikely to be noise."""
        return self.low > 0 or self.high < 0


def mean_interval(values: list[float], samples: int = 1000, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean."""
    data = np.asarray(values, dtype=float)
    means = data[_resamples(len(data), samples, seed)].mean(axis=1)
    return _interval(float(data.mean()), means, len(data))


def paired_difference(a: dict[str, float], b: dict[str, float], samples: int = 1000, seed: int = 0) -> Interval | None:
    """Interval of mean(a - b) over the examples both were scored on; None when they share none.

    The same resampled examples are used for both sides, so the per-example difficulty cancels."""
    common = sorted(a.keys() & b.keys())
    if not common:
        return None
    diffs = np.asarray([a[k] - b[k] for k in common], dtype=float)
    means = diffs[_resamples(len(diffs), samples, seed)].mean(axis=1)
    return _interval(float(diffs.mean()), means, len(diffs))


def _resamples(n: int, samples: int, seed: int) -> np.ndarray:
    """(samples, n) example indices drawn with replacement; a fixed seed makes the table reproducible."""
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def _interval(estimate: float, means: np.ndarray, n: int) -> Interval:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high), n)
