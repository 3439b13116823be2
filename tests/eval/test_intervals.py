"""Bootstrap intervals: seeded, around the estimate, wider for noisier or smaller samples."""

from __future__ import annotations

from kvbench.eval.intervals import bootstrap, mean


def test_the_interval_contains_the_estimate_and_is_seeded():
    items = [1.0] * 30 + [0.0] * 10
    low, high, stderr = bootstrap(items, mean)
    assert low < mean(items) < high and 0.05 < stderr < 0.1  # binomial sd: sqrt(0.75 * 0.25 / 40) = 0.068
    assert bootstrap(items, mean) == (low, high, stderr)


def test_more_samples_give_a_narrower_interval_and_constant_samples_none_at_all():
    small = bootstrap([1.0, 0.0] * 5, mean)
    large = bootstrap([1.0, 0.0] * 100, mean)
    assert (large[1] - large[0]) < (small[1] - small[0]) / 3
    assert bootstrap([0.5] * 10, mean)[:2] == (0.5, 0.5)
    assert bootstrap([1.0], mean) is None


def test_a_ratio_aggregation_resamples_pairs_together():
    import math

    def weighted_perplexity(pairs):  # lm-eval's: exp(-sum(loglik) / sum(words))
        return math.exp(-sum(ll for ll, _ in pairs) / sum(w for _, w in pairs))

    pairs = [(-200.0, 50), (-100.0, 40), (-400.0, 60), (-150.0, 45)]
    low, high, _ = bootstrap(pairs, weighted_perplexity)
    assert low <= weighted_perplexity(pairs) <= high
