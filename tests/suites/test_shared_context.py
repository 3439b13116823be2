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
# -- source=longbench: records that share a document, grouped (a local fixture, no hub) ---------------------------
def _longbench_dir(tmp_path, records):
    from tests.conftest import write_jsonl

    root = tmp_path / "longbench"
    root.mkdir()
    write_jsonl(root / "qasper.jsonl", records)
    return root


def test_longbench_records_sharing_a_document_become_one_sample_with_their_questions(tiny_gqa, tmp_path):
    from tests.conftest import longbench_record

    model, tokenizer = tiny_gqa
    shared = "Passage: book 0 was written by Ann and book 1 by Bob. " * 4
    records = [longbench_record(0, context=shared, answers=["Ann"]), longbench_record(1),
               longbench_record(2, context=shared, input="Who wrote book 1?", answers=["Bob"])]
    cfg = SharedContextConfig(name="shared_context", options={
        "source": "longbench", "data_dir": str(_longbench_dir(tmp_path, records)), "dataset": "qasper",
        "questions": 4, "max_new_tokens": 3})
    suite = build_suite(cfg)
    plan = suite.validate(TINY)
    assert [[r["_id"] for r in group] for group in plan] == [["id0", "id2"]]  # id1's document is asked once only
    from kvbench.eval.longbench_shared import shared_samples

    (sample,) = shared_samples(plan, "qasper", tokenizer, 4, chat=False, max_context_tokens=1792)
    assert shared.strip() in sample.context and "Who wrote" not in sample.context  # the document, no question
    assert sample.questions[1].startswith("Who wrote book 1?") and sample.questions[1].endswith("Answer:")
    assert sample.score(1, "Bob") == 1.0 and sample.score(1, "Ann") == 0.0  # qasper's F1 against the gold
    protocol = CompressionProtocol(model, build_method("full"), model.config)
    results = {r.task: r for r in suite.run(plan, RunContext(protocol, tokenizer, TINY, tmp_path / "out"))}
    assert results["multi_request"].n == 1 and set(results["multi_request"].metrics) >= {"score_q2", "reuse_cost"}
    assert results["multi_request"].metrics["reuse_cost"] == pytest.approx(0.0)  # full: reuse costs nothing


def test_longbench_without_shared_documents_or_without_a_question_part_is_refused_in_one_line(tmp_path, monkeypatch):
    from tests.conftest import longbench_record

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = _longbench_dir(tmp_path, [longbench_record(0), longbench_record(1)])
    options = {"source": "longbench", "data_dir": str(root), "dataset": "qasper"}
    with pytest.raises(SuiteConfigError, match="no two records of LongBench dataset 'qasper' share a context"):
        build_suite(SharedContextConfig(name="shared_context", options=options)).validate(TINY)
    (root / "gov_report.jsonl").write_text((root / "qasper.jsonl").read_text())
    with pytest.raises(SuiteConfigError, match="'gov_report' has no question after its document"):
        build_suite(SharedContextConfig(name="shared_context", options=options | {"dataset": "gov_report"})).validate(TINY)
    with pytest.raises(SuiteConfigError, match="LongBench needs suite.options.data_dir when offline"):
        build_suite(SharedContextConfig(name="shared_context", options={"source": "longbench"})).validate(TINY)
    with pytest.raises(SuiteConfigError, match="source='hub' is not a source"):
        build_suite(SharedContextConfig(name="shared_context", options={"source": "hub"})).validate(TINY)
