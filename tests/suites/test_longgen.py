"""suite.runner=longgen: full against itself diverges nowhere; a small decode budget diverges along the trace, within
the bins the trace reaches; bad options are one line."""

from __future__ import annotations

import copy
import json

import pytest

from kvbench.config import ModelConfig
from kvbench.errors import SuiteConfigError
from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import build_method
from kvbench.suites import RunContext, build_suite
from kvbench.suites.longgen import LonggenConfig, batches

TINY = ModelConfig(pretrained="tiny:llama-gqa", max_length=512, chat=False)


def _run(model, tokenizer, method, tmp_path, tasks=("prose", "progression"), **options):
    cfg = LonggenConfig(name="longgen", tasks=list(tasks),
                        options={"prompts": 2, "prompt_tokens": 24, "max_new_tokens": 40, **options})
    suite = build_suite(cfg)
    protocol = CompressionProtocol(method.apply(copy.deepcopy(model), tokenizer), method, model.config)
    results = list(suite.run(suite.validate(TINY), RunContext(protocol, tokenizer, TINY, tmp_path)))
    return {r.task: r for r in results}, protocol


def test_full_against_itself_diverges_nowhere_and_keeps_its_length(tiny_gqa, tmp_path):
    results, protocol = _run(*tiny_gqa, build_method("full"), tmp_path)
    for task in ("prose", "progression"):
        m = results[task].metrics
        assert m["kl"] == 0.0 and m["top1_agreement"] == 1.0 and m["kl_0_256"] == 0.0
        assert m["length_change"] == 0 and m["output_length"] == m["output_length_full"]
        assert m["departed"] == 0.0 and m["first_disagreement"] == m["output_length"]  # censored at the length
        assert "kl_256_1k" not in m  # 40 tokens never reach the second bin
    assert results["progression"].metrics["accuracy"] == results["progression"].metrics["accuracy_full"]
    lines = (tmp_path / "longgen" / "traces.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["full_length"] == json.loads(lines[0])["length"]
    assert protocol.stats.generations == 4


def test_a_small_decode_budget_diverges_along_the_trace_and_bounds_the_generations_bytes(tiny_gqa, tmp_path):
    method = build_method("streaming_llm", budget_ratio=1.0, decode_budget_tokens=8, sink_tokens=2)
    results, protocol = _run(*tiny_gqa, method, tmp_path, tasks=["prose"])
    m = results["prose"].metrics
    assert m["kl"] > 0
    assert m["departed"] > 0 and m["first_disagreement"] < 40
    assert m["first_disagreement_low"] <= m["first_disagreement"] <= m["first_disagreement_high"]
    _, full = _run(*tiny_gqa, build_method("full"), tmp_path / "full", tasks=["prose"])
    assert protocol.stats.peak_decode_stored_bytes < full.stats.peak_decode_stored_bytes / 4


def test_a_decode_budget_covering_every_token_diverges_nowhere_through_all_three_passes(tiny_gqa, tmp_path):
    """full itself is traced in one pass (its generation is the reference); a method equal to full is traced in
    three -- full's generation, its own, and teacher forcing on full's -- and must find no divergence either."""
    method = build_method("streaming_llm", budget_ratio=1.0, decode_budget_tokens=4096)
    results, _ = _run(*tiny_gqa, method, tmp_path, bins=[8, 16])
    for task in ("prose", "progression"):
        m = results[task].metrics
        assert m["kl"] < 1e-9 and m["top1_agreement"] == 1.0 and m["departed"] == 0.0
        assert m["kl_0_8"] < 1e-9 and m["top1_16_plus"] == 1.0 and m["length_change"] == 0


def test_a_batched_run_gives_the_per_prompt_run_s_numbers_and_names_its_batch_rows(tiny_gqa, tmp_path):
    method = build_method("streaming_llm", budget_ratio=1.0, decode_budget_tokens=8, sink_tokens=2)
    alone, _ = _run(*tiny_gqa, method, tmp_path / "alone", tasks=["prose"], prompts=3)
    batched, protocol = _run(*tiny_gqa, method, tmp_path / "batched", tasks=["prose"], prompts=3, batch=2)
    a, b = alone["prose"].metrics, batched["prose"].metrics
    assert a["kl"] > 0 and b["kl"] == pytest.approx(a["kl"], rel=1e-3)
    assert b["first_disagreement"] == a["first_disagreement"] and b["length_change"] == a["length_change"]
    assert a["decode_rows"] == 1 and b["decode_rows"] == pytest.approx((4 + 4 + 2) / 3)  # 2 prompts, then 1
    assert batches([[1, 2], [3], [4, 5], [6, 7], [8]], 2) == [[0, 2], [1, 4], [3]]
    assert protocol.stats.generations == 6  # 3 prompts, each a generation row and a teacher-forced row


@pytest.mark.parametrize("options, message", [({"max_new_tokens": 0}, "max_new_tokens=0"),
                                              ({"bins": [256, 128]}, r"bins=\[256, 128\] must be increasing"),
                                              ({"batch": 0}, r"batch=0 must be an integer >= 1"),
                                              ({"prompt_tokens": 400, "max_new_tokens": 200}, "exceeds model.max_length")])
def test_bad_options_are_refused_in_one_line_before_the_model_loads(options, message):
    suite = build_suite(LonggenConfig(name="longgen", options=options))
    with pytest.raises(SuiteConfigError, match=message):
        suite.validate(TINY)


def test_instruct_prompts_are_a_seeded_draw_of_distinct_instructions_in_the_chat_template(tiny_gqa):
    from kvbench.eval.longgen import INSTRUCTIONS
    from kvbench.suites.longgen import LonggenOptions, task_prompts

    class Chat:  # a tokenizer with a chat template: the instruction must sit inside one user turn
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt and [m["role"] for m in messages] == ["user"]
            return f"<user>{messages[0]['content']}<assistant>"

        def __call__(self, text, add_special_tokens):
            assert not add_special_tokens
            return {"input_ids": [ord(c) for c in text]}

    drawn = [bytes(ids).decode() for ids, check in task_prompts("instruct", Chat(), 5, LonggenOptions(seed=3))]
    assert len(set(drawn)) == 5 and all(d.startswith("<user>") and d.endswith("<assistant>") for d in drawn)
    assert {d[len("<user>"):-len("<assistant>")] for d in drawn} <= set(INSTRUCTIONS)
    again = [bytes(ids).decode() for ids, _ in task_prompts("instruct", Chat(), 5, LonggenOptions(seed=3))]
    other = [bytes(ids).decode() for ids, _ in task_prompts("instruct", Chat(), 5, LonggenOptions(seed=4))]
    assert drawn == again and drawn != other
    plain, _ = task_prompts("instruct", tiny_gqa[1], 1, LonggenOptions(seed=3))[0]  # no template: Question/Answer
    assert tiny_gqa[1].decode(plain).startswith("Question: ") and tiny_gqa[1].decode(plain).endswith("Answer:")


def test_an_instruct_run_measures_each_prompts_length_against_fulls(tiny_gqa, tmp_path):
    results, protocol = _run(*tiny_gqa, build_method("full"), tmp_path, tasks=["instruct"])
    m = results["instruct"].metrics
    assert m["kl"] == 0.0 and m["length_change"] == 0 and 1 <= m["output_length"] <= 40
    assert protocol.stats.generations == 2


def test_more_instruct_prompts_than_instructions_is_one_line_before_the_model_loads():
    suite = build_suite(LonggenConfig(name="longgen", tasks=["instruct"], limit=None, options={"prompts": 17}))
    with pytest.raises(SuiteConfigError, match="task instruct has 16 instructions; 17 prompts asked"):
        suite.validate(TINY)
