"""LongBench v1 metrics, numerically identical to the official scorer (THUDM/LongBench ``metrics.py``).

Published LongBench numbers were computed with the official scorer, so these functions
reproduce its behaviour *including its quirks* (EVALUATION.md):

* ``rouge_score`` is ROUGE-L F from the PyPI ``rouge`` package and is 0.0 whenever that
  package raises (empty or all-``.`` prediction, empty reference, ...);
* ``classification_score`` drops matched class names that are substrings of the gold
  class while walking the same list, so the element after a dropped one is never checked;
* ``code_sim_score`` strips leading newlines only and scores the first line without a
  backtick, ``#`` or ``//`` (possibly an empty line) with ``fuzzywuzzy``'s ``ratio``, pinned
  here to the pure-Python ``difflib`` backend (python-Levenshtein changes the numbers);
* ``qa_f1_score`` returns the integer 0 when nothing overlaps.

Every metric has the official signature ``metric(prediction, ground_truth, **kwargs)``
(``all_classes`` comes in ``kwargs``). :func:`score` and :func:`score_e` are the
per-dataset aggregations of ``eval.py`` (mean x 100, rounded to 2 decimals; LongBench-E
per length bucket).
"""

from __future__ import annotations

import difflib
import logging
import math
import re
import string
import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np

__all__ = [
    "DATASET2METRIC", "FIRST_LINE_DATASETS", "E_BUCKETS",
    "normalize_answer", "normalize_zh_answer", "f1_score",
    "qa_f1_score", "qa_f1_zh_score", "rouge_score", "rouge_zh_score", "classification_score",
    "retrieval_score", "retrieval_zh_score", "count_score", "code_sim_score",
    "score", "score_e", "sample_score",
]

_PUNCTUATION = frozenset(string.punctuation)
# The Chinese punctuation the official scorer strips (plus ASCII punctuation), as data.
_ZH_PUNCTUATION = frozenset(
    string.punctuation
    + "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


# -- text normalisation ---------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """Lowercase, drop ASCII punctuation, replace articles by spaces, squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def normalize_zh_answer(text: str) -> str:
    """Lowercase, drop Chinese and ASCII punctuation, remove all whitespace."""
    return "".join("".join(ch for ch in text.lower() if ch not in _ZH_PUNCTUATION).split())


def _jieba_cut(text: str) -> list[str]:
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return list(jieba.cut(text, cut_all=False))


# -- token F1 -----------------------------------------------------------------------------------
def f1_score(prediction: Sequence[str], ground_truth: Sequence[str], **kwargs) -> float:
    """Bag-of-tokens F1; the integer 0 when no token is shared (as the official scorer)."""
    shared = sum((Counter(prediction) & Counter(ground_truth)).values())
    if shared == 0:
        return 0
    precision = shared / len(prediction)
    recall = shared / len(ground_truth)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """F1 over whitespace tokens of the normalised answers (English QA)."""
    return f1_score(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def qa_f1_zh_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """F1 over jieba tokens, each normalised, empty ones dropped (Chinese QA)."""

    def tokens(text: str) -> list[str]:
        return [t for t in (normalize_zh_answer(tok) for tok in _jieba_cut(text)) if t]

    return f1_score(tokens(prediction), tokens(ground_truth))


# -- ROUGE ----------------------------------------------------------------------------------------
def rouge_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """ROUGE-L F of the ``rouge`` package; 0.0 whenever the package raises."""
    from rouge import Rouge

    try:
        scores = Rouge().get_scores([prediction], [ground_truth], avg=True)
    except Exception:  # the official scorer swallows every error the same way
        return 0.0
    return scores["rouge-l"]["f"]


def rouge_zh_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """ROUGE-L F over jieba tokens joined by spaces (Chinese summarisation)."""
    return rouge_score(" ".join(_jieba_cut(prediction)), " ".join(_jieba_cut(ground_truth)))


# -- classification, retrieval, counting ----------------------------------------------------------
def classification_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """1/len(matches) if the gold class is among the class names found in the prediction.

    Official quirk kept: a matched name that is a proper substring of the gold class is
    removed *while walking the list*, so the name right after it is skipped (never
    checked for removal). The order of ``all_classes`` therefore matters.
    """
    all_classes = kwargs.get("all_classes")
    if all_classes is None:
        raise ValueError("classification_score needs all_classes (the dataset's list of class names)")
    matches = [name for name in all_classes if name in prediction]
    i = 0
    while i < len(matches):
        term = matches[i]
        if term in ground_truth and term != ground_truth:
            matches.remove(term)  # first equal element, like list.remove in the official loop
        i += 1  # a Python list iterator advances even after a removal -> skips one element
    return 1.0 / len(matches) if ground_truth in matches else 0.0


def _fraction_equal(numbers: list[str], target: str) -> float:
    return 0.0 if not numbers else sum(n == target for n in numbers) / len(numbers)


def _gold_paragraph(ground_truth: str, pattern: str) -> str:
    found = re.findall(pattern, ground_truth)
    if not found:
        raise ValueError(f"retrieval answer {ground_truth!r} has no paragraph number (expected {pattern!r})")
    return found[0]


def retrieval_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """Fraction of the numbers in the prediction equal to the gold ``Paragraph N``."""
    return _fraction_equal(re.findall(r"\d+", prediction), _gold_paragraph(ground_truth, r"Paragraph (\d+)"))


def retrieval_zh_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """Fraction of the numbers in the prediction equal to the gold ``段落N``."""
    return _fraction_equal(re.findall(r"\d+", prediction), _gold_paragraph(ground_truth, r"段落(\d+)"))


def count_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """Fraction of the numbers in the prediction equal to the gold count."""
    return _fraction_equal(re.findall(r"\d+", prediction), str(ground_truth))


# -- code -----------------------------------------------------------------------------------------
def _fuzz_ratio(a: str, b: str) -> int:
    """``fuzzywuzzy.fuzz.ratio`` with the difflib backend whatever is installed.

    fuzzywuzzy switches to python-Levenshtein when that is importable, which changes
    scores; the official numbers are reproduced with difflib, so it is pinned here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Using slow pure-python SequenceMatcher"
        from fuzzywuzzy import fuzz

    if fuzz.SequenceMatcher is difflib.SequenceMatcher:
        return fuzz.ratio(a, b)
    # Same guards as fuzzywuzzy's decorators, in the same order.
    if a is None or b is None:
        return 0
    if a == b:
        return 100
    if not a or not b:
        return 0
    return int(round(100 * difflib.SequenceMatcher(None, a, b).ratio()))


def code_sim_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """Edit similarity of the first code line of the prediction to the gold next line."""
    first = ""
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            first = line
            break
    return _fuzz_ratio(first, ground_truth) / 100


# -- per-dataset aggregation ------------------------------------------------------------------------
DATASET2METRIC = {
    "narrativeqa": qa_f1_score,
    "qasper": qa_f1_score,
    "multifieldqa_en": qa_f1_score,
    "multifieldqa_zh": qa_f1_zh_score,
    "hotpotqa": qa_f1_score,
    "2wikimqa": qa_f1_score,
    "musique": qa_f1_score,
    "dureader": rouge_zh_score,
    "gov_report": rouge_score,
    "qmsum": rouge_score,
    "multi_news": rouge_score,
    "vcsum": rouge_zh_score,
    "trec": classification_score,
    "triviaqa": qa_f1_score,
    "samsum": rouge_score,
    "lsht": classification_score,
    "passage_retrieval_en": retrieval_score,
    "passage_count": count_score,
    "passage_retrieval_zh": retrieval_zh_score,
    "lcc": code_sim_score,
    "repobench-p": code_sim_score,
}
#: Datasets whose prediction is cut to its first line before scoring (few-shot formats).
FIRST_LINE_DATASETS = frozenset({"trec", "triviaqa", "samsum", "lsht"})
#: LongBench-E length buckets (``length`` field: words for English, characters for Chinese).
E_BUCKETS = ("0-4k", "4-8k", "8k+")


def _metric(dataset: str):
    if dataset not in DATASET2METRIC:
        raise ValueError(f"unknown LongBench dataset {dataset!r} (choose one of: {', '.join(DATASET2METRIC)})")
    return DATASET2METRIC[dataset]


def sample_score(dataset: str, prediction: str, answers: Sequence[str], all_classes=None) -> float:
    """One sample's score in [0, 1]: max over gold answers (after the first-line cut)."""
    metric = _metric(dataset)
    if dataset in FIRST_LINE_DATASETS:
        prediction = prediction.lstrip("\n").split("\n")[0]
    best = 0.0
    for answer in answers:
        best = max(best, metric(prediction, answer, all_classes=all_classes))
    return best


def score(dataset: str, predictions: Sequence[str], answers: Sequence[Sequence[str]], all_classes=None) -> float:
    """The official dataset score: ``round(100 * mean sample score, 2)``."""
    _metric(dataset)
    if len(predictions) != len(answers):
        raise ValueError(f"{dataset}: {len(predictions)} predictions but {len(answers)} answer lists")
    if not predictions:
        raise ValueError(f"{dataset}: no predictions to score")
    total = sum(sample_score(dataset, p, a, all_classes) for p, a in zip(predictions, answers))
    return round(100 * total / len(predictions), 2)


def _bucket(length: int) -> str:
    return E_BUCKETS[0] if length < 4000 else E_BUCKETS[1] if length < 8000 else E_BUCKETS[2]


def score_e(dataset: str, predictions: Sequence[str], answers: Sequence[Sequence[str]],
            lengths: Sequence[int], all_classes=None) -> dict[str, float]:
    """LongBench-E: ``round(100 * mean, 2)`` per length bucket (<4000, 4000-8000, 8000+); NaN if empty."""
    if not (len(predictions) == len(answers) == len(lengths)):
        raise ValueError(f"{dataset}: predictions, answers and lengths differ in number")
    buckets: dict[str, list[float]] = {key: [] for key in E_BUCKETS}
    for p, a, n in zip(predictions, answers, lengths):
        buckets[_bucket(n)].append(sample_score(dataset, p, a, all_classes))
    # np.mean (pairwise summation) as the official scorer: can differ from score() in the last digit.
    return {key: float(round(100 * np.mean(v), 2)) if v else math.nan for key, v in buckets.items()}
