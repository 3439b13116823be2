"""The paired tests against textbook values: exact McNemar by enumerating the binomial, the Wilson interval by its
formula, the sign-flip test by enumerating every flip, Holm on a worked example, and the detectable effects."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from kvbench.statistics import (compare, continuous_comparison, holm, mcnemar_exact, minimum_detectable_effect,
                                perplexity_comparison, sign_flip_test, wilson_interval)


def _enumerated_mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar: the probability, under Bin(b + c, 1/2), of every split as unlikely as (b, c)."""
    m = b + c
    probability = [math.comb(m, k) / 2 ** m for k in range(m + 1)]
    return min(1.0, sum(p for p in probability if p <= probability[b] * (1 + 1e-12)))


def _pairs(b: int, c: int, agree_right: int, agree_wrong: int):
    full = [1] * b + [0] * c + [1] * agree_right + [0] * agree_wrong
    method = [0] * b + [1] * c + [1] * agree_right + [0] * agree_wrong
    return full, method


@pytest.mark.parametrize("b, c, right, wrong", [(4, 0, 0, 2), (7, 2, 5, 6), (1, 1, 3, 3), (10, 3, 0, 0), (0, 6, 1, 1)])
def test_exact_mcnemar_equals_the_enumerated_binomial_on_the_discordant_pairs(b, c, right, wrong):
    full, method = _pairs(b, c, right, wrong)
    result = mcnemar_exact(full, method)
    assert result.p_value == pytest.approx(_enumerated_mcnemar(b, c), rel=1e-9)
    assert result.difference == pytest.approx((c - b) / len(full))
    assert result.low <= result.difference <= result.high


def test_zero_of_six_against_four_of_six_gives_p_one_eighth_not_significant():
    full, method = _pairs(4, 0, 0, 2)
    result = mcnemar_exact(full, method)
    assert result.p_value == pytest.approx(0.125) and result.verdict(higher_is_better=True) == "same"
    assert result.mde == pytest.approx(1.0)  # n = 6: only 6 of 6 discordant pairs could reach p < 0.05


def test_no_discordant_pair_is_p_one():
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]).p_value == 1.0


@pytest.mark.parametrize("k, n", [(0, 6), (4, 6), (6, 6), (37, 100)])
def test_wilson_interval_matches_its_formula_and_is_never_zero_width(k, n):
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = wilson_interval(k, n)
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert high - low > 0.05


def test_sign_flip_test_equals_enumerating_every_flip():
    d = np.array([0.3, -0.1, 0.5, 0.2, 0.7, -0.2, 0.4, 0.1])
    observed = abs(d.mean())
    flips = [abs((d * np.array(s)).mean()) for s in itertools.product((1, -1), repeat=len(d))]
    expected = sum(f >= observed - 1e-12 for f in flips) / len(flips)
    assert sign_flip_test(d) == pytest.approx(expected)


def test_sign_flip_beyond_the_exact_range_is_seeded_and_reproducible():
    d = np.random.default_rng(1).normal(0.2, 1.0, 40)
    assert sign_flip_test(d, seed=3) == sign_flip_test(d, seed=3)


def test_holm_on_a_worked_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone: 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_minimum_detectable_effect_follows_the_sample_size_formula():
    k = 1.959963984540054 + 0.8416212335729143
    # binary: n = k^2 d / delta^2 pairs detect delta; 400 pairs at discordance 0.2 detect 0.0627
    assert minimum_detectable_effect(400, discordance=0.2) == pytest.approx(k * math.sqrt(0.2 / 400))
    assert minimum_detectable_effect(8, discordance=0.1) >= 0.4  # at n = 8 nothing under ~40 points
    assert minimum_detectable_effect(25, sd=2.0) == pytest.approx(k * 2.0 / 5)


def test_continuous_scores_take_the_sign_flip_test_and_identical_scores_differ_by_nothing():
    full = [0.2, 0.5, 0.9, 0.4, 0.3, 0.6]
    same = continuous_comparison(full, full)
    assert (same.p_value, same.difference, same.low, same.high) == (1.0, 0.0, 0.0, 0.0)
    worse = compare({str(i): {"score": s} for i, s in enumerate(full)},
                    {str(i): {"score": s - 0.1 - 0.01 * i} for i, s in enumerate(full)}, scale=100)
    assert worse.test == "sign-flip permutation" and worse.p_value == pytest.approx(2 / 64)
    assert worse.difference == pytest.approx(-12.5) and worse.high < 0


def test_perplexity_is_paired_over_documents_on_log_likelihood_differences():
    full = [(-20.0 - i, 10.0) for i in range(8)]
    method = [(ll - 1.0, w) for ll, w in full]  # every document loses log-likelihood
    result = perplexity_comparison(full, method)
    assert result.p_value == pytest.approx(2 / 256) and result.difference > 0 and result.low > 0
    assert result.verdict(higher_is_better=False) == "worse"
    assert perplexity_comparison(full, full).p_value == 1.0


def test_compare_pairs_by_sample_id_and_ignores_unpaired_samples():
    full = {"a": {"score": 1.0}, "b": {"score": 1.0}, "c": {"score": 0.0}}
    method = {"b": {"score": 0.0}, "c": {"score": 0.0}, "d": {"score": 1.0}}
    result = compare(full, method)
    assert result.test == "exact McNemar" and result.n == 2 and result.difference == -0.5
    assert compare(full, {"x": {"score": 1.0}}) is None
