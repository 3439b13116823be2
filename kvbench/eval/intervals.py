"""95% intervals for a task's score, by bootstrap over its samples (percentile method, seeded).

Every suite reports, for its primary metric, the score, a standard error and a 95% interval computed the
same way: resample the task's per-sample items with replacement (1000 times, seed 0), re-aggregate each
resample with the task's own aggregation (the mean of per-sample scores, or e.g. lm-eval's weighted
perplexity over (log-likelihood, words) pairs), and take the 2.5th and 97.5th percentiles and the standard
deviation. Samples are the unit that varies: for the same items every method is measured on the same
samples, so two methods' intervals are comparable.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

ITERATIONS = 1000
LEVEL = 0.95


def bootstrap(items: Sequence, aggregate: Callable[[list], float], iterations: int = ITERATIONS,
              seed: int = 0, level: float = LEVEL) -> tuple[float, float, float] | None:
    """``(low, high, stderr)`` of ``aggregate(items)``; None for fewer than two items."""
    items = list(items)
    if len(items) < 2:
        return None
    rng = random.Random(seed)
    values = []
    for _ in range(iterations):
        sample = [items[rng.randrange(len(items))] for _ in items]
        try:
            values.append(float(aggregate(sample)))
        except (ArithmeticError, ValueError):  # e.g. a degenerate resample: skip it
            continue
    if len(values) < iterations // 2:
        return None
    values.sort()
    tail = (1 - level) / 2
    low, high = values[int(tail * (len(values) - 1))], values[int(round((1 - tail) * (len(values) - 1)))]
    mean = sum(values) / len(values)
    stderr = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return low, high, stderr


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)
