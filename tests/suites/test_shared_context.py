"""suite.runner=shared_context: a question never changes the shared compressed context (same answers in any
order, even for a method that evicts while decoding; the head-wise and query-agnostic methods' ragged caches are
bit-identical after every question); per-turn scores and the reuse cost; bad input is one line."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from kvbench.cache import cache_nbytes
from kvbench.config import ModelConfig
from kvbench.errors import SuiteConfigError
from kvbench.eval.protocol import CompressionProtocol
from kvbench.eval.shared_context import draw, multi_request
from kvbench.methods import build_method
from kvbench.suites import RunContext, build_suite
from kvbench.suites.shared_context import SharedContextConfig
from tests.contracts import held_tensors

TINY = ModelConfig(pretrained="tiny:llama-gqa", max_length=2048, chat=False)
#: The head-wise methods (issue 26) at settings that compress the tiny model's ~500-token haystack: each KV head keeps
#: its own tokens (adakv, duo_attention, kvzip's global budget) or its own top tokens (expected_attention).
HEADWISE = {
    "adakv": dict(budget_tokens=24, window=4),
    "duo_attention": dict(sparsity=0.75, sink_tokens=2, recent_tokens=6, calibration_sequences=1,
                          calibration_length=32, positions=64),
    "kvzip": dict(budget_tokens=24, chunk=128),
    "expected_attention": dict(budget_tokens=24),
}
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


def _snapshot(cache) -> list:
    return [t.clone() for t in held_tensors(cache).values()]


@pytest.mark.parametrize("name", sorted(HEADWISE))
def test_a_headwise_method_runs_the_suite_and_no_question_changes_its_compressed_shared_context(
        tiny_gqa, tmp_path, monkeypatch, name):
    model, tokenizer = tiny_gqa
    method = build_method(name, **HEADWISE[name])
    protocol = CompressionProtocol(method.apply(copy.deepcopy(model), tokenizer), method, model.config)
    shared, prefill = [], protocol.prefill

    def recording_prefill(ids, *args, **kwargs):
        cache = prefill(ids, *args, **kwargs)
        shared.append((cache, _snapshot(cache), len(ids)))
        return cache

    monkeypatch.setattr(protocol, "prefill", recording_prefill)
    sample = draw(random.Random(0), tokenizer, units=2, questions=3)
    multi_request(protocol, sample, max_new_tokens=4)
    (cache, before, n_context), = shared
    after = _snapshot(cache)
    assert len(after) == len(before) and all(torch.equal(a, b) for a, b in zip(after, before))
    stored, full = protocol.measure(cache, n_context)
    assert cache_nbytes(cache) == stored < full / 2  # compressed once, without any question
    monkeypatch.undo()
    cfg = SharedContextConfig(name="shared_context",
                              options={"samples": 1, "units": 2, "questions": 2, "max_new_tokens": 4})
    suite = build_suite(cfg)
    results = {r.task: r.metrics for r in suite.run(suite.validate(TINY), RunContext(protocol, tokenizer, TINY, tmp_path))}
    assert set(results) == {"multi_request", "multi_turn"}
    assert all({"score", "score_own", "reuse_cost"} <= set(m) for m in results.values())
