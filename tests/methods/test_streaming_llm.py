"""method=streaming_llm: sinks + recent window, evicted at prefill and every decode step, per KV head."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, MistralConfig

from kvbench.cache import cache_nbytes
from kvbench.methods import MethodConfigError, build_method
from tests.conftest import (applied, assert_lm_eval_matches_full, assert_protocol_matches_full, method_from_config,
                            random_ids, reference_logits)

pytestmark = pytest.mark.usefixtures("no_grad")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_budget_covering_all_tokens_reproduces_full_logits_and_greedy_tokens(attn):
    from kvbench.models import tiny_llama

    model, _ = tiny_llama("llama-gqa", seed=0, attn_implementation=attn)
    method, same = applied(model, "streaming_llm", budget_tokens=64)  # prompt 24 + 16 generated < 64
    prompt, continuation = random_ids(24), random_ids(6, seed=1)
    full, cache = DynamicCache(config=model.config), method.new_cache(same)
    assert torch.equal(same(input_ids=prompt, cache=cache).logits, model(input_ids=prompt, cache=full).logits)
    method.compress(cache)
    assert torch.equal(same(input_ids=continuation, cache=cache).logits, model(input_ids=continuation, cache=full).logits)
    expected = model.generate(prompt, max_new_tokens=16, do_sample=False)
    assert torch.equal(same.generate(prompt, cache=method.new_cache(same), max_new_tokens=16, do_sample=False), expected)


def test_budget_covering_all_tokens_matches_full_through_the_protocol(tiny_gqa):
    model, _ = tiny_gqa
    method, same = applied(model, "streaming_llm", budget_ratio=1.0, sink_tokens=4)
    with pytest.raises(AssertionError):  # ratio 1.0 fixes the budget at the prompt: decoding evicts
        assert_protocol_matches_full(model, method, same)
    method, same = applied(model, "streaming_llm", budget_tokens=100)
    assert_protocol_matches_full(model, method, same)


def test_budget_covering_all_tokens_matches_full_through_lm_eval(tiny_gqa):
    model, tokenizer = tiny_gqa
    assert_lm_eval_matches_full(model, tokenizer, "streaming_llm", budget_tokens=4096)


def test_sinks_and_the_most_recent_tokens_are_kept_at_prefill_and_every_decode_step(tiny_gqa):
    model, _ = tiny_gqa
    method, same = applied(model, "streaming_llm", budget_tokens=10, sink_tokens=4)
    cache = method.new_cache(same)
    same(input_ids=random_ids(30), cache=cache)
    method.compress(cache)
    expected = list(range(4)) + list(range(24, 30))
    for layer in range(4):
        assert cache.kept_positions(layer)[0].tolist() == [expected] * 2  # both KV heads
    for step in range(3):  # each decode step drops the oldest non-sink token
        same(input_ids=random_ids(1, seed=step), cache=cache)
        assert cache.kept_positions(3)[0, 0].tolist() == list(range(4)) + list(range(25 + step, 31 + step))
        assert cache.stored_length() == 10
    assert cache.get_seq_length() == 33


def test_no_sinks_is_a_recent_window(tiny_gqa):
    model, _ = tiny_gqa
    method, same = applied(model, "streaming_llm", budget_tokens=5, sink_tokens=0)
    cache = method.new_cache(same)
    same(input_ids=random_ids(12), cache=cache)
    assert cache.kept_positions(0)[0, 1].tolist() == [7, 8, 9, 10, 11]


def test_continuation_after_eviction_matches_hand_built_reduced_cache_at_logical_positions(tiny_gqa):
    model, _ = tiny_gqa
    method, same = applied(model, "streaming_llm", budget_tokens=9, sink_tokens=2)
    cache = method.new_cache(same)
    same(input_ids=random_ids(40), cache=cache)
    method.compress(cache)
    assert cache.stored_length() == 9 and cache.get_seq_length() == 40
    continuation, snapshot = random_ids(5, seed=3), copy.deepcopy(cache)
    got = same(input_ids=continuation, cache=cache).logits
    assert torch.allclose(got, reference_logits(model, snapshot, continuation), atol=1e-5)
    assert not torch.allclose(got, reference_logits(model, snapshot, continuation, "stored"), atol=1e-3)


def test_greedy_decoding_matches_reference_step_by_step_and_never_exceeds_the_budget(tiny_gqa):
    model, _ = tiny_gqa
    method, same = applied(model, "streaming_llm", budget_ratio=0.3)  # 30 tokens -> 9
    prompt, cache = random_ids(30), method.new_cache(same)
    logits = same(input_ids=prompt, cache=cache).logits
    method.compress(cache)
    budget_bytes = cache_nbytes(cache)
    tokens = []
    for _ in range(8):
        next_id = logits[:, -1:].argmax(-1)
        tokens.append(int(next_id))
        snapshot = copy.deepcopy(cache)
        logits = same(input_ids=next_id, cache=cache).logits
        assert torch.allclose(logits, reference_logits(model, snapshot, next_id), atol=1e-5)
        for layer in cache.layers:  # apply the evictions that wait for the next forward (they hold a slot index)
            layer.settle()
        assert cache.stored_length() == 9 and cache_nbytes(cache) == budget_bytes * 10 // 9  # + the slot a step writes
    same.generation_config.eos_token_id = None
    generated = same.generate(prompt, cache=method.new_cache(same), max_new_tokens=8, do_sample=False)
    assert generated[0, 30:].tolist() == tokens


def test_stored_bytes_are_budget_over_length_of_full(tiny_mha):
    model, _ = tiny_mha
    method, same = applied(model, "streaming_llm")  # default: 20% of 50 tokens = 10
    prompt, full = random_ids(50), DynamicCache(config=model.config)
    model(input_ids=prompt, cache=full)
    cache = method.new_cache(same)
    same(input_ids=prompt, cache=cache)
    kv_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert kv_bytes * 50 == cache_nbytes(full) * 10
    cfg = model.config  # + one int32 position per kept token, layer and KV head
    assert cache_nbytes(cache) == kv_bytes + cfg.num_hidden_layers * cfg.num_key_value_heads * 10 * 4


def test_ratio_budget_too_small_for_the_sinks_keeps_the_newest_token_and_says_so(tiny_gqa):
    model, _ = tiny_gqa
    method, same = applied(model, "streaming_llm", budget_ratio=0.1)  # 30 tokens -> 3 <= 4 sinks
    cache = method.new_cache(same)
    same(input_ids=random_ids(30), cache=cache)
    assert cache.kept_positions(0)[0, 0].tolist() == [0, 1, 29]
    assert cache.notes() == ["streaming_llm: budget_ratio=0.1 gave a budget of at most sink_tokens=4 (short prompt): "
                             "fewer sinks kept, so the newest token stays"]


@pytest.mark.parametrize("params,message", [
    (dict(budget_ratio=0.0), r"method.budget_ratio=0.0 must lie in \(0, 1\]"),
    (dict(budget_ratio=1.5), r"method.budget_ratio=1.5 must lie in \(0, 1\]"),
    (dict(budget_tokens=0), r"method.budget_tokens=0 must be a token count >= 1"),
    (dict(budget_ratio=0.2, budget_tokens=8), r"method.budget_ratio=0.2 and method.budget_tokens=8 both set"),
    (dict(sink_tokens=-1), r"method.sink_tokens=-1 must be a token count >= 0"),
    (dict(budget_tokens=4), r"method.budget_tokens=4 leaves no recent window beside method.sink_tokens=4"),
])
def test_bad_parameters_are_rejected_in_one_line_naming_the_value(params, message):
    with pytest.raises(MethodConfigError, match=message) as error:
        build_method("streaming_llm", **params)
    assert "\n" not in str(error.value)


def test_every_attention_implementation_is_accepted_and_sliding_window_models_refused():
    method = build_method("streaming_llm")
    for impl in ("sdpa", "eager", "flash_attention_2", "flex_attention"):
        method.check_model(LlamaConfig(num_hidden_layers=2, attn_implementation=impl))
    with pytest.raises(MethodConfigError, match="method=streaming_llm needs full-attention layers only"):
        method.check_model(MistralConfig(num_hidden_layers=2, sliding_window=64))


def test_config_file_composes_into_the_documented_defaults(tiny_gqa):
    method = method_from_config("method=streaming_llm")
    assert (method.budget_ratio, method.budget_tokens, method.sink_tokens) == (None, None, 4)
    assert method.budget().resolve(1500) == 300  # exact floor: float 0.2 * 1500 arithmetic is not trusted
    cache = method.new_cache(tiny_gqa[0])
    tiny_gqa[0](input_ids=random_ids(50), cache=cache)
    assert cache.stored_length() == 10
