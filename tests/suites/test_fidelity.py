"""suite.runner=fidelity: full against itself is exactly KL 0 and agreement 1; compression moves the distributions;
batches equal single prompts; methods that change the model or simulate run; a changed vocabulary is refused."""

from __future__ import annotations

import copy
import json

import pytest

from kvbench.compose import compose_config
from kvbench.config import ModelConfig
from kvbench.errors import KvbenchError, SuiteConfigError
from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import METHODS, build_method
from kvbench.suites import RunContext, build_suite
from kvbench.suites.fidelity import FidelityConfig, check_vocabulary
from kvbench.validation import validate

TINY = ModelConfig(pretrained="tiny:llama-gqa", max_length=512, chat=False)


def _run(model, tokenizer, method, tmp_path, **options):
    cfg = FidelityConfig(name="fidelity", options={"prompts": 3, "prompt_tokens": 48, "new_tokens": 8, **options})
    suite = build_suite(cfg)
    applied = method.apply(copy.deepcopy(model), tokenizer)
    protocol = CompressionProtocol(applied, method, model.config)
    results = list(suite.run(suite.validate(TINY), RunContext(protocol, tokenizer, TINY, tmp_path)))
    return {r.task: r for r in results}, protocol


def test_full_against_itself_gives_kl_zero_and_agreement_one_exactly(tiny_gqa, tmp_path):
    results, _ = _run(*tiny_gqa, build_method("full"), tmp_path)
    for task in ("greedy", "prose"):
        assert results[task].metrics == {"kl": 0.0, "top1_agreement": 1.0, "first_disagreement": 8.0}
        assert [row["score"] for row in results[task].scores] == [0.0, 0.0, 0.0]
    lines = (tmp_path / "fidelity" / "prompts.jsonl").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["positions"] == 8


def test_an_evicting_method_moves_the_distributions_and_a_smaller_budget_moves_them_more(tiny_gqa, tmp_path):
    small, _ = _run(*tiny_gqa, build_method("h2o", heavy_ratio=0.05, recent_ratio=0.05), tmp_path / "a")
    large, _ = _run(*tiny_gqa, build_method("h2o", heavy_ratio=0.4, recent_ratio=0.4), tmp_path / "b")
    assert small["prose"].metrics["kl"] > large["prose"].metrics["kl"] > 0
    assert small["greedy"].interval[0] > 0  # every prompt diverges


def test_a_batch_of_prompts_gives_the_numbers_of_one_prompt_at_a_time(tiny_gqa, tmp_path):
    method = build_method("kivi", nbits=2, group_size=16, residual_length=16)
    one, _ = _run(*tiny_gqa, method, tmp_path / "one")
    three, protocol = _run(*tiny_gqa, method, tmp_path / "three", batch_size=3)
    # a KL of ~1e-4 from float32 log-probs carries ~1e-7 of rounding that depends on how the matmuls split the
    # batch (one torch thread: 1.1e-7 apart); a batch that mixed rows up would be orders of magnitude off
    for task in ("greedy", "prose"):
        assert [r["score"] for r in three[task].scores] == pytest.approx([r["score"] for r in one[task].scores],
                                                                         rel=1e-4, abs=1e-6)
    assert protocol.stats.ratio > 1  # the bytes of the compressed cache are counted


@pytest.mark.parametrize("name, params", [("svd_gqa", {"kv_heads": 1, "init": "weight"}),
                                          ("h2o", {"protocol": "simulate"})])
def test_methods_that_change_the_model_or_simulate_are_compared_with_the_model_before_them(tiny_gqa, tmp_path, name,
                                                                                          params):
    results, _ = _run(*tiny_gqa, build_method(name, **params), tmp_path)
    assert results["prose"].metrics["kl"] > 0 and results["prose"].n == 3


def test_a_method_that_changes_the_vocabulary_is_refused_in_one_line(tiny_gqa, monkeypatch):
    from kvbench.models import tiny_llama

    model, _ = tiny_gqa
    wider, _ = tiny_llama("llama-gqa", vocab_size=300)
    with pytest.raises(SuiteConfigError, match=r"^suite=fidelity compares next-token distributions over one "
                                               r"vocabulary, and method=full changes it \(259 -> 300 tokens\)"):
        check_vocabulary(model, wider, build_method("full"))
    monkeypatch.setattr(METHODS["full"], "changes_vocabulary", True, raising=False)
    with pytest.raises(KvbenchError, match="changes the tokenizer or vocabulary") as error:
        validate(compose_config(["model=tiny_llama", "method=full", "suite=fidelity", "logger=none"]))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("option, value", [("prompts", 0), ("new_tokens", -1), ("prompt_tokens", 1), ("batch_size", 0)])
def test_bad_options_are_one_line_before_the_model_loads(option, value):
    with pytest.raises(SuiteConfigError, match=rf"^suite.options.{option}={value} must be a positive integer"):
        build_suite(FidelityConfig(name="fidelity", options={option: value})).validate(TINY)
    with pytest.raises(SuiteConfigError, match="unknown fidelity task"):
        build_suite(FidelityConfig(name="fidelity", tasks=["gready"])).validate(TINY)
