"""suite.runner=shared_context: a question never changes the shared compressed context (same answers in any
order, even for a method that evicts while decoding); per-turn scores and the reuse cost; bad input is one line."""

from __future__ import annotations

import copy
import random

import pytest

from kvbench.config import ModelConfig
from kvbench.errors import SuiteConfigError
from kvbench.eval.protocol import CompressionProtocol
from kvbench.eval.shared_context import draw, multi_request
from kvbench.methods import build_method
from kvbench.suites import RunContext, build_suite
from kvbench.suites.shared_context import SharedContextConfig

TINY = ModelConfig(pretrained="tiny:llama-gqa", max_length=2048, chat=False)
pytestmark = pytest.mark.usefixtures("no_grad")


def test_multi_request_answers_each_question_the_same_in_any_order_though_decoding_evicts(tiny_gqa):
    model, tokenizer = tiny_gqa
    method = build_method("h2o", heavy_tokens=16, recent_tokens=16, decode_budget_tokens=24)
    protocol = CompressionProtocol(method.apply(copy.deepcopy(model)), method)
    sample = draw(random.Random(0), tokenizer, units=2, questions=3)
    forward, _ = multi_request(protocol, sample, max_new_tokens=6)
    sample.question_ids.reverse()
    backward, _ = multi_request(protocol, sample, max_new_tokens=6)
    assert forward == backward[::-1]
    alone = protocol.decode(protocol.prefill(sample.context_ids), sample.question_ids[0], 6)
    assert alone == backward[0]  # each question sees the compressed context as if it were the only one


def test_the_suite_reports_per_turn_scores_the_own_compression_score_and_the_reuse_cost(tiny_gqa, tmp_path):
    model, tokenizer = tiny_gqa
    method = build_method("snapkv", budget_tokens=40, window=8)
    cfg = SharedContextConfig(name="shared_context",
                              options={"samples": 2, "units": 2, "questions": 2, "max_new_tokens": 4})
    suite = build_suite(cfg)
    protocol = CompressionProtocol(method.apply(copy.deepcopy(model)), method, model.config)
    results = {r.task: r for r in suite.run(suite.validate(TINY), RunContext(protocol, tokenizer, TINY, tmp_path))}
    for task in ("multi_request", "multi_turn"):
        m = results[task].metrics
        assert set(m) >= {"score", "score_own", "reuse_cost", "score_q1", "score_q2"}
        assert m["reuse_cost"] == pytest.approx(m["score_own"] - m["score"])
    timing = results["multi_request"].metrics
    assert timing["compress_each_s"] > timing["compress_once_s"] > 0  # two compressions against one
    assert (tmp_path / "shared_context" / "answers.jsonl").read_text().count("\n") == 8


def test_a_question_count_of_zero_and_query_aware_are_refused_in_one_line():
    with pytest.raises(SuiteConfigError, match="questions=0 must be an integer >= 1"):
        build_suite(SharedContextConfig(name="shared_context", options={"questions": 0})).validate(TINY)
    with pytest.raises(SuiteConfigError, match="suite.query_aware=true: suite=shared_context") as err:
        build_suite(SharedContextConfig(name="shared_context", query_aware=True))
    assert "\n" not in str(err.value)
