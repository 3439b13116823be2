"""suite.query_aware: where a question kept apart from its document goes, in every suite that has one."""

from __future__ import annotations

import json

import pytest

from kvbench.config import ModelConfig, SuiteConfig
from kvbench.errors import SuiteConfigError
from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import build_method
from kvbench.suites import build_suite
from kvbench.suites.lm_eval import LmEvalConfig
from kvbench.suites.longbench import LongBenchConfig
from kvbench.suites.ruler import RulerConfig
from tests.conftest import applied, longbench_record, run_suite, write_jsonl


def test_query_agnostic_prefills_the_context_only_and_query_aware_the_question_too(tiny_gqa):
    model, _ = tiny_gqa
    context, query = list(range(30)), [40, 41, 42, 43, 44]
    agnostic, aware = (CompressionProtocol(model, build_method("full")) for _ in range(2))
    agnostic.generate(context, 2, query=query)
    aware.generate(context, 2, query=query, query_aware=True)
    assert agnostic.stats.prefill_tokens == 30 and aware.stats.prefill_tokens == 34
    without_query = CompressionProtocol(model, build_method("full"))
    without_query.generate(context, 2, query_aware=True)
    assert without_query.stats.prefill_tokens == 29  # as before: all but the last token


def test_query_aware_lets_the_method_keep_the_question(tiny_gqa):
    model, _ = tiny_gqa
    method, same = applied(model, "streaming_llm", budget_tokens=6, sink_tokens=0)
    context, query = list(range(30)), [40, 41, 42, 43, 44]
    kept = {}
    for aware in (False, True):
        protocol = CompressionProtocol(same, method)
        cache = protocol.prefill(context if not aware else (context + query)[:-1])
        kept[aware] = cache.kept_positions(0)[0, 0].tolist()
    assert kept[False] == [24, 25, 26, 27, 28, 29]  # the end of the document: the question comes later
    assert kept[True] == [28, 29, 30, 31, 32, 33]  # four question tokens are inside the compressed prompt


@pytest.mark.parametrize("aware", [False, True])
def test_ruler_records_the_protocol_and_prefills_accordingly(tiny_gqa, tmp_path, aware):
    model, tokenizer = tiny_gqa
    cfg = RulerConfig(name="ruler", tasks=["passkey"], query_aware=aware,
                      options={"lengths": [512], "samples_per_length": 2})
    _, protocol = run_suite(cfg, model, tokenizer, ModelConfig(max_length=512, chat=False), tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "ruler" / "predictions.jsonl").read_text().splitlines()]
    assert all(r["query_aware"] is aware for r in rows)
    context = sum(r["context_tokens"] for r in rows)
    query = sum(r["query_tokens"] for r in rows)
    assert protocol.stats.prefill_tokens == (context + query - len(rows) if aware else context)


def test_longbench_passes_the_protocol_to_its_predictions(tiny_gqa, tmp_path):
    model, tokenizer = tiny_gqa
    data = tmp_path / "lb"
    data.mkdir()
    write_jsonl(data / "hotpotqa.jsonl", [longbench_record(0)])
    cfg = LongBenchConfig(name="longbench", tasks=["hotpotqa"], max_gen_toks=2, query_aware=True,
                          options={"data_dir": str(data)})
    _, protocol = run_suite(cfg, model, tokenizer, ModelConfig(max_length=512, chat=False), tmp_path / "out")
    row = json.loads((tmp_path / "out" / "longbench" / "hotpotqa.jsonl").read_text())
    assert row["query_aware"] is True and row["query_tokens"] > 0
    assert protocol.stats.prefill_tokens == row["context_tokens"] + row["query_tokens"] - 1


def test_the_passkey_question_is_fed_after_compression_unless_query_aware(tiny_gqa):
    from lm_eval.api.instance import Instance

    from kvbench.eval.lm import KvbenchLM
    from kvbench.eval.tasks.quick import passkey_records

    model, tokenizer = tiny_gqa
    doc = passkey_records(n_per_length=1, lengths=(64,))[0]
    prompt = f"{doc['context']}\n\n{doc['question']}"
    for aware in (False, True):
        lm = KvbenchLM(model=model, tokenizer=tokenizer, method_obj=build_method("full"), max_length=2048,
                       query_aware=aware)
        request = Instance(request_type="generate_until", doc=doc, arguments=(prompt, {"until": ["\n"], "max_gen_toks": 2}),
                           idx=0, metadata=("kvbench_passkey", 0, 1))
        lm.generate_until([request])
        whole, head = lm.tok_encode(prompt), lm.tok_encode(f"{doc['context']}\n\n")
        assert lm.protocol.stats.prefill_tokens == (len(whole) - 1 if aware else len(head))
    other = Instance(request_type="generate_until", doc=doc, arguments=(prompt, {"until": ["\n"], "max_gen_toks": 2}),
                     idx=0, metadata=("some_other_task", 0, 1))  # a task that declares no question field
    lm = KvbenchLM(model=model, tokenizer=tokenizer, method_obj=build_method("full"), max_length=2048)
    lm.generate_until([other])
    assert lm.protocol.stats.prefill_tokens == len(lm.tok_encode(prompt)) - 1


def test_query_aware_on_a_suite_without_a_question_part_is_one_line():
    cfg = LmEvalConfig(name="quick", tasks=["kvbench_recall_mc", "kvbench_prose_ppl"], query_aware=True)
    with pytest.raises(SuiteConfigError) as error:
        build_suite(cfg).validate()
    assert str(error.value).startswith("suite.query_aware=true needs prompts with a question kept apart from the "
                                       "context, and none of suite.tasks (kvbench_recall_mc, kvbench_prose_ppl) has one")
    assert "\n" not in str(error.value)
    build_suite(LmEvalConfig(name="quick", tasks=["kvbench_passkey", "kvbench_recall_mc"], query_aware=True)).validate()


def test_a_suite_that_keeps_no_question_refuses_query_aware_rather_than_ignoring_it():
    from kvbench.suites import SUITES, Suite

    class NoQuestion(Suite):
        runner = "no_question"

    SUITES["no_question"] = NoQuestion
    try:
        build_suite(SuiteConfig(name="plain", runner="no_question", tasks=["t"]))
        with_query = sorted(name for name, suite in SUITES.items() if suite.keeps_query)  # from the registry
        assert {"lm_eval", "longbench", "ruler"} <= set(with_query) and "no_question" not in with_query
        with pytest.raises(SuiteConfigError) as error:
            build_suite(SuiteConfig(name="plain", runner="no_question", tasks=["t"], query_aware=True))
        assert "suite=plain (runner no_question) has none" in str(error.value)
        assert str(error.value).endswith(f"use a suite with a question part: {', '.join(with_query)})")
    finally:
        del SUITES["no_question"]


def test_the_record_says_which_protocol_a_run_used(tmp_path, monkeypatch):
    from kvbench import runner
    from kvbench.compose import compose_config

    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose_config(["model=tiny_llama", "logger=none", "suite=ruler", "suite.query_aware=true",
                          "suite.tasks=[passkey]", "suite.options.lengths=[512]", "suite.options.samples_per_length=1",
                          "suite.options.chat_template=false", f"records_dir={tmp_path / 'records'}"])
    record = runner.run(cfg, tmp_path / "run")
    assert record.status == "complete" and record.suite["query_aware"] is True
    bad = compose_config(["model=tiny_llama", "logger=none", "suite.query_aware=true", "suite.tasks=[kvbench_recall_mc]",
                          f"records_dir={tmp_path / 'records'}"])
    with pytest.raises(SuiteConfigError, match="suite.query_aware=true needs prompts with a question"):
        runner.run(bad, tmp_path / "bad")
