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


# -- suite.fidelity=true: divergence from full along the answers of a decoding suite --------------------------------
def _ruler(model, tokenizer, method, tmp_path, fidelity: bool, query_aware: bool = False):
    from kvbench.suites.ruler import RulerConfig

    cfg = RulerConfig(name="ruler", tasks=["passkey"], fidelity=fidelity, query_aware=query_aware,
                      options={"lengths": [384], "samples_per_length": 2})
    suite = build_suite(cfg)
    applied = method.apply(copy.deepcopy(model), tokenizer)
    protocol = CompressionProtocol(applied, method, model.config)
    model_cfg = ModelConfig(pretrained="tiny:llama-gqa", max_length=512, chat=False)
    results = list(suite.run(suite.validate(model_cfg), RunContext(protocol, tokenizer, model_cfg, tmp_path)))
    rows = [json.loads(line) for line in (tmp_path / "ruler" / "predictions.jsonl").read_text().splitlines()]
    return results[0], rows, protocol


def test_the_probe_on_full_gives_kl_zero_and_leaves_the_measurements_of_the_task_alone(tiny_gqa, tmp_path):
    probed, rows, protocol = _ruler(*tiny_gqa, build_method("full"), tmp_path / "probed", fidelity=True)
    plain, _, alone = _ruler(*tiny_gqa, build_method("full"), tmp_path / "plain", fidelity=False)
    assert probed.metrics["kl_vs_full"] == 0.0 and probed.metrics["top1_vs_full"] == 1.0
    assert [row["kl_vs_full"] for row in rows] == [0.0, 0.0]
    assert all(row["first_disagreement_vs_full"] == row["reference_tokens"] for row in rows)
    assert probed.metrics["string_match_all"] == plain.metrics["string_match_all"]
    assert set(plain.metrics) == {"string_match_all"}  # off by default: no probe fields
    for field_name in ("n_prefills", "prefill_tokens", "decode_tokens", "stored_bytes", "full_bytes", "peak_stored_bytes"):
        assert getattr(protocol.stats, field_name) == getattr(alone.stats, field_name), field_name


def test_an_evicting_method_diverges_along_the_answers_and_the_interval_is_over_prompts(tiny_gqa, tmp_path):
    method = build_method("h2o", heavy_tokens=8, recent_tokens=8)
    result, rows, _ = _ruler(*tiny_gqa, method, tmp_path, fidelity=True, query_aware=True)
    assert result.metrics["kl_vs_full"] > 0 and all(row["kl_vs_full"] > 0 for row in rows)
    assert result.metrics["kl_vs_full_low"] <= result.metrics["kl_vs_full"] <= result.metrics["kl_vs_full_high"]
    assert 0 <= result.metrics["top1_vs_full"] < 1


@pytest.mark.parametrize("name, params", [("full", {}), ("h2o", {"heavy_tokens": 8, "recent_tokens": 8}),
                                          ("h2o", {"heavy_tokens": 8, "recent_tokens": 8, "protocol": "simulate"})])
@pytest.mark.parametrize("query_aware", [False, True])
def test_teacher_forcing_an_answer_retraces_the_protocols_own_greedy_decoding(tiny_gqa, name, params, query_aware):
    """The probe feeds an answer exactly as generate() produced it: teacher-forcing a method's own greedy answer
    puts every one of its tokens first (so the probe's split of context and question is the protocol's)."""
    from kvbench.eval.fidelity import teacher_forced_after

    model, tokenizer = tiny_gqa
    method = build_method(name, **params)
    protocol = CompressionProtocol(method.apply(copy.deepcopy(model), tokenizer), method, model.config)
    context, query = list(range(3, 83)), [90, 91, 92, 93]
    answer = protocol.generate(context, 10, query=query, query_aware=query_aware)
    logprobs = teacher_forced_after(protocol, context, query, query_aware, answer)
    assert logprobs.shape[0] == len(answer) == 10
    assert logprobs.argmax(-1).tolist() == answer


def test_fidelity_on_a_suite_that_generates_nothing_through_the_protocol_is_one_line():
    with pytest.raises(KvbenchError, match=r"^suite.fidelity=true measures divergence from full .* suite=quick "
                                           r"\(runner lm_eval\) generates none that way") as error:
        validate(compose_config(["model=tiny_llama", "method=full", "suite=quick", "suite.fidelity=true",
                                 "logger=none"]))
    assert "\n" not in str(error.value)
