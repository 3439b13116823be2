"""Paired tests of a method against ``full``, chosen by the metric's type (EVALUATION.md, "Telling methods apart").

Every method is scored on the same samples as ``full``, so the comparison pairs them sample by sample (the ids of
:mod:`kvbench.sample_scores`). An unpaired rule (do two intervals overlap?) throws the pairing away, and with a
percentile bootstrap a 0/n score has the zero-width interval [0, 0], which "separates" almost anything.

* binary scores (accuracy, a passkey hit): exact McNemar, a binomial test on the discordant pairs
  (``scipy.stats.binomtest(b, b + c, 0.5)``; McNemar 1947, Fagerland et al. 2013); the interval on the difference
  is the exact conditional one (Clopper-Pearson on the share of discordant pairs that favour ``full``);
* continuous scores (F1, ROUGE, string-match fractions): a sign-flip permutation test on the per-sample differences
  (``scipy.stats.permutation_test(..., permutation_type="samples")``, exact up to 2^13 samples, else 9,999 seeded
  resamples) and a seeded paired bootstrap interval on the mean difference;
* perplexity: the same sign-flip test on the per-document (or per-window) log-likelihood differences; the
  interval is a paired bootstrap of the perplexity difference over documents;
* proportions get Wilson intervals (never zero-width, also at 0/n);
* the rows of one table are many tests against one ``full``: Holm's step-down correction controls the
  family-wise error (not the false discovery rate of ``scipy.stats.false_discovery_control``);
* a difference that is not significant is not "no difference": :func:`minimum_detectable_effect` says how large a
  difference the test could have found at this n (alpha 0.05, power 0.8).

Report side: pure numpy/scipy, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.8
SEED = 0
BOOTSTRAP = 2000
#: Sign-flip tests enumerate every flip up to this many samples (2^13 = 8192 arrangements); beyond, resample.
EXACT_UP_TO = 13
RESAMPLES = 9999


@dataclass
class Comparison:
    """One method against ``full`` on one task, in the table's unit (``scale`` applied): ``difference`` = method −
    full with its 95% interval, the test's name and p-value (``p_holm`` after the table's correction), the paired
    ``n`` and the minimum detectable effect at that n."""

    test: str
    n: int
    difference: float
    low: float
    high: float
    p_value: float
    mde: float
    p_holm: float | None = None

    def verdict(self, higher_is_better: bool, alpha: float = ALPHA) -> str:
        """``worse`` / ``better`` when the (Holm-corrected) test rejects equality, else ``same``."""
        p = self.p_value if self.p_holm is None else self.p_holm
        if not p < alpha or self.difference == 0:
            return "same"
        return "better" if (self.difference > 0) == higher_is_better else "worse"


def z(probability: float) -> float:
    return float(stats.norm.ppf(probability))


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (never zero-width, also at 0/n and n/n)."""
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def is_binary(values: Sequence[float]) -> bool:
    return len(values) > 0 and all(v in (0.0, 1.0) for v in values)


def mcnemar_exact(full: Sequence[float], method: Sequence[float], scale: float = 1.0) -> Comparison:
    """Exact McNemar on paired binary scores: b = full right and method wrong, c = the reverse;
    p = two-sided binomial test of b among the b + c discordant pairs at 1/2 (1 without discordant pairs)."""
    full, method = np.asarray(full, dtype=float), np.asarray(method, dtype=float)
    n = len(full)
    b, c = int(np.sum((full == 1) & (method == 0))), int(np.sum((full == 0) & (method == 1)))
    m = b + c
    p = float(stats.binomtest(b, m, 0.5).pvalue) if m else 1.0
    difference = (c - b) / n
    if m:  # exact conditional interval: b ~ Bin(m, π); difference = (m/n)(1 − 2π)
        ci = stats.binomtest(b, m).proportion_ci(method="exact")
        low, high = m / n * (1 - 2 * ci.high), m / n * (1 - 2 * ci.low)
    else:
        low = high = 0.0
    mde = minimum_detectable_effect(n, discordance=m / n)
    return Comparison("exact McNemar", n, difference * scale, low * scale, high * scale, p, mde * scale)


def sign_flip_test(differences: Sequence[float], seed: int = SEED) -> float:
    """Two-sided p-value of a zero mean difference, flipping each difference's sign (exact for small n)."""
    d = np.asarray(differences, dtype=float)
    if not np.any(d):
        return 1.0
    exact = len(d) <= EXACT_UP_TO
    result = stats.permutation_test((d,), np.mean, permutation_type="samples", alternative="two-sided",
                                    n_resamples=np.inf if exact else RESAMPLES, rng=np.random.default_rng(seed))
    return float(result.pvalue)


def paired_bootstrap(full: np.ndarray, method: np.ndarray, statistic, seed: int = SEED,
                     iterations: int = BOOTSTRAP) -> tuple[float, float, float]:
    """``(low, high, stderr)`` of ``statistic(method) − statistic(full)`` resampling pairs (rows) together."""
    rng = np.random.default_rng(seed)
    n = len(full)
    picks = rng.integers(0, n, size=(iterations, n))
    values = np.array([statistic(method[p]) - statistic(full[p]) for p in picks])
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high), float(values.std(ddof=1))


def continuous_comparison(full: Sequence[float], method: Sequence[float], scale: float = 1.0,
                          seed: int = SEED) -> Comparison:
    """Sign-flip permutation test and a paired bootstrap interval on the mean of per-sample differences."""
    full, method = np.asarray(full, dtype=float), np.asarray(method, dtype=float)
    low, high, stderr = paired_bootstrap(full, method, np.mean, seed)
    difference = float(np.mean(method - full))
    mde = (z(1 - ALPHA / 2) + z(POWER)) * float(np.std(method - full, ddof=1)) / math.sqrt(len(full))
    return Comparison("sign-flip permutation", len(full), difference * scale, low * scale, high * scale,
                      sign_flip_test(method - full, seed), mde * scale)


def perplexity(pairs: np.ndarray) -> float:
    """``exp(−Σ loglikelihood / Σ weight)`` of ``[n, 2]`` (loglikelihood, weight) rows (lm-eval's weighted form)."""
    return float(np.exp(-pairs[:, 0].sum() / pairs[:, 1].sum()))


def perplexity_comparison(full: Sequence[tuple[float, float]], method: Sequence[tuple[float, float]],
                          seed: int = SEED) -> Comparison:
    """Perplexity, paired over documents: sign-flip test on the per-document log-likelihood differences, a paired
    bootstrap interval on the perplexity difference (method − full), the MDE from that bootstrap's standard error."""
    full, method = np.asarray(full, dtype=float), np.asarray(method, dtype=float)
    low, high, stderr = paired_bootstrap(full, method, perplexity, seed)
    difference = perplexity(method) - perplexity(full)
    mde = (z(1 - ALPHA / 2) + z(POWER)) * stderr
    return Comparison("sign-flip permutation (log-likelihood per document)", len(full), difference, low, high,
                      sign_flip_test(method[:, 0] - full[:, 0], seed), mde)


def minimum_detectable_effect(n: int, discordance: float | None = None, sd: float | None = None) -> float:
    """The smallest difference the paired test detects at ``n`` with alpha 0.05 (two-sided) and power 0.8.

    Binary (``discordance`` = the share of discordant pairs): McNemar needs n ≈ (z₀.₉₇₅ + z₀.₈)² · d / Δ², so
    Δ = (z₀.₉₇₅ + z₀.₈) · √(d / n); and since an exact test rejects only with at least 6 discordant pairs all one
    way (2 · 0.5⁶ < 0.05), never below 6 / n. Continuous (``sd`` of the differences): (z₀.₉₇₅ + z₀.₈) · sd / √n."""
    k = z(1 - ALPHA / 2) + z(POWER)
    if sd is not None:
        return k * sd / math.sqrt(n)
    fewest = next(m for m in range(1, 64) if 2 * 0.5 ** m < ALPHA)
    return min(1.0, max(k * math.sqrt((discordance or 0.0) / n), fewest / n))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): the i-th smallest times (m − i), kept monotone, capped at 1."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def compare(full_rows: dict[str, dict], method_rows: dict[str, dict], scale: float = 1.0,
            seed: int = SEED, binary: bool | None = None) -> Comparison | None:
    """The paired test for one task: sidecar rows (``{id: row}``) of full and of the method, matched by id; the test
    follows the rows' type (log-likelihood pairs, binary or continuous scores; ``binary`` says whether the metric is a
    proportion when the caller knows it from more rows than these two). None when no id pairs."""
    ids = sorted(set(full_rows) & set(method_rows))
    if not ids:
        return None
    if all("loglikelihood" in full_rows[i] and "loglikelihood" in method_rows[i] for i in ids):
        pairs = [[(r["loglikelihood"], r["weight"]) for r in (full_rows[i], method_rows[i])] for i in ids]
        return perplexity_comparison([p[0] for p in pairs], [p[1] for p in pairs], seed)
    usable = [i for i in ids if "score" in full_rows[i] and "score" in method_rows[i]]
    if not usable:
        return None
    full, method = [full_rows[i]["score"] for i in usable], [method_rows[i]["score"] for i in usable]
    if (is_binary(full) and is_binary(method)) if binary is None else binary:
        return mcnemar_exact(full, method, scale)
    return continuous_comparison(full, method, scale, seed)
