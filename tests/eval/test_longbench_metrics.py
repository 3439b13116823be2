"""LongBench metrics against hand-worked cases, quirks of the official scorer included."""

from __future__ import annotations

import math

import pytest

from kvbench.eval import longbench as lb
from kvbench.eval.longbench_metrics import _jieba_cut


# -- qa_f1 ----------------------------------------------------------------------------------------
def test_qa_f1_normalises_case_punctuation_and_articles():
    # "cat sat" vs "cat sat on mat": 2 shared, precision 1, recall 1/2 -> F1 2/3
    assert lb.qa_f1_score("The cat sat.", "a cat sat on the mat") == pytest.approx(2 / 3)
    assert lb.qa_f1_score("PARIS!", "paris") == 1.0


def test_qa_f1_is_integer_zero_without_overlap_and_for_empty_prediction():
    for pred in ("", "London", "the a an"):
        value = lb.qa_f1_score(pred, "Paris")
        assert value == 0 and type(value) is int


def test_qa_f1_counts_repeated_tokens_as_a_bag():
    # pred tokens [yes, yes], gold [yes]: 1 shared -> precision 1/2, recall 1 -> 2/3
    assert lb.qa_f1_score("yes yes", "yes") == pytest.approx(2 / 3)


def test_qa_f1_zh_uses_jieba_tokens_without_punctuation():
    assert _jieba_cut("北京是中国的首都。") == ["北京", "是", "中国", "的", "首都", "。"]
    assert _jieba_cut("首都是北京") == ["首都", "是", "北京"]
    # 5 tokens vs 3 tokens, 3 shared: precision 3/5, recall 1 -> F1 0.75
    assert lb.qa_f1_zh_score("北京是中国的首都。", "首都是北京") == pytest.approx(0.75)
    assert lb.qa_f1_zh_score("", "首都是北京") == 0
    assert lb.normalize_zh_answer("Ａ，b。 c") == "ａbc"


# -- ROUGE ----------------------------------------------------------------------------------------
def test_rouge_l_of_one_substitution_in_four_words_is_three_quarters():
    # LCS 3 of 4 words on both sides: P = R = 3/4 -> F = 3/4
    assert lb.rouge_score("a b c d", "a b x d") == pytest.approx(0.75, abs=1e-6)


def test_rouge_is_case_sensitive_and_identical_texts_score_just_under_one():
    assert lb.rouge_score("A b c d", "a b c d") == pytest.approx(0.75, abs=1e-6)
    same = lb.rouge_score("the cat sat on the mat", "the cat sat on the mat")
    assert 1 - 1e-6 < same < 1.0


def test_rouge_is_zero_when_the_package_raises():
    assert lb.rouge_score("", "a reference") == 0.0
    assert lb.rouge_score("...", "a reference") == 0.0
    assert lb.rouge_score("a prediction", "") == 0.0


def test_rouge_zh_scores_jieba_words():
    # 北京/是/中国/的/首都 vs 北京/是/首都: LCS 3 -> P 3/5, R 1 -> F 0.75
    assert lb.rouge_zh_score("北京是中国的首都", "北京是首都") == pytest.approx(0.75, abs=1e-6)


# -- classification -------------------------------------------------------------------------------
def test_classification_splits_credit_between_matched_classes():
    classes = ["Number", "Location", "Person"]
    assert lb.classification_score("Location", "Location", all_classes=classes) == 1.0
    assert lb.classification_score("Location or Person", "Location", all_classes=classes) == 0.5
    assert lb.classification_score("Person", "Location", all_classes=classes) == 0.0
    assert lb.classification_score("", "Location", all_classes=classes) == 0.0


def test_classification_drops_class_names_that_are_substrings_of_the_gold_class():
    classes = ["LOC", "LOCATION"]
    assert lb.classification_score("LOC or LOCATION", "LOCATION", all_classes=classes) == 1.0
    assert lb.classification_score("LOC", "LOCATION", all_classes=classes) == 0.0


def test_classification_skips_the_item_after_a_removed_substring_so_order_matters():
    pred, gold = "Number of people, or a Number", "Number of people"
    # Matches [Num, Number, Number of people]: "Num" is removed, the walk then skips "Number"
    # (it shifted into the visited slot), so two matches remain -> 1/2.
    assert lb.classification_score(pred, gold, all_classes=["Num", "Number", "Number of people"]) == 0.5
    # Same classes, other order: both substrings are visited and removed -> 1.
    assert lb.classification_score(pred, gold, all_classes=["Num", "Number of people", "Number"]) == 1.0


def test_classification_without_all_classes_is_an_error():
    with pytest.raises(ValueError, match="all_classes"):
        lb.classification_score("x", "x")


# -- retrieval and counting -----------------------------------------------------------------------
def test_retrieval_is_the_fraction_of_numbers_equal_to_the_gold_paragraph():
    assert lb.retrieval_score("Paragraph 3", "Paragraph 3") == 1.0
    assert lb.retrieval_score("Paragraph 3 or Paragraph 12", "Paragraph 3") == 0.5
    assert lb.retrieval_score("Paragraph 13", "Paragraph 3") == 0.0
    assert lb.retrieval_score("no idea", "Paragraph 3") == 0.0
    assert lb.retrieval_zh_score("答案是段落5，不是段落6", "段落5") == 0.5
    with pytest.raises(ValueError, match="paragraph number"):
        lb.retrieval_score("Paragraph 1", "first one")


def test_count_is_the_fraction_of_numbers_equal_to_the_gold_count():
    assert lb.count_score("There are 5 unique paragraphs.", "5") == 1.0
    assert lb.count_score("5, or maybe 6, 7 or 5", "5") == 0.5
    assert lb.count_score("", "5") == 0.0


# -- code -----------------------------------------------------------------------------------------
def test_code_sim_skips_comment_and_fence_lines_of_a_multi_line_answer():
    pred = "\n\n# compute x\n```python\n// also a comment\nx = compute(1)\ny = 2\n"
    assert lb.code_sim_score(pred, "x = compute(1)") == 1.0


def test_code_sim_takes_an_empty_first_line_if_it_comes_first():
    # Only leading newlines are stripped; "   # c" is skipped, the empty line is taken.
    assert lb.code_sim_score("   # c\n\nx = 1", "x = 1") == 0.0
    assert lb.code_sim_score("", "x = 1") == 0.0


def test_code_sim_is_fuzzywuzzy_ratio_over_100():
    # difflib ratio of "abcd" vs "abce": 2 * 3 matches / 8 chars = 0.75
    assert lb.code_sim_score("abcd", "abce") == 0.75
    # a line with an inline comment is skipped entirely
    assert lb.code_sim_score("abcd  # comment\nabce", "abce") == 1.0


# -- dataset scores -------------------------------------------------------------------------------
def test_score_takes_the_best_of_several_gold_answers_and_rounds_mean_times_100():
    preds = ["Paris", "Berlin", "Rome"]
    answers = [["London", "Paris"], ["Madrid"], ["Madrid"]]
    assert lb.score("2wikimqa", preds, answers) == 33.33


def test_score_cuts_few_shot_datasets_to_the_first_line():
    classes = ["Number", "Location"]
    assert lb.score("trec", ["\nNumber\nLocation"], [["Location"]], classes) == 0.0
    assert lb.score("trec", ["\nLocation\nNumber"], [["Location"]], classes) == 100.0
    # not cut for other datasets: "i think paris" vs "paris" -> precision 1/3, recall 1 -> F1 1/2
    assert lb.score("hotpotqa", ["I think\nParis"], [["Paris"]]) == 50.0


def test_score_e_buckets_by_length_and_gives_nan_for_an_empty_bucket():
    preds, answers = ["Paris", "Rome", "Paris"], [["Paris"], ["Paris"], ["Paris"]]
    out = lb.score_e("hotpotqa", preds, answers, [100, 3999, 4000])
    assert out["0-4k"] == 50.0 and out["4-8k"] == 100.0 and math.isnan(out["8k+"])


def test_score_rejects_unknown_datasets_and_mismatched_inputs():
    with pytest.raises(ValueError, match="choose one of"):
        lb.score("nq", ["a"], [["a"]])
    with pytest.raises(ValueError, match="predictions"):
        lb.score("hotpotqa", ["a", "b"], [["a"]])
