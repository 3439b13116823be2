"""method=knorm: keep the tokens with the lowest key norm per KV head, after prefill, with any attention."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, MistralConfig

from kvbench.cache import cache_nbytes
from kvbench.cache.eviction import TokenBudget
from kvbench.methods import MethodConfigError, build_method
from kvbench.methods.knorm import KnormCache
from tests.conftest import (applied, assert_lm_eval_matches_full, assert_protocol_matches_full, method_from_config,
                            random_ids, reference_logits)

pytestmark = pytest.mark.usefixtures("no_grad")


def test_the_lowest_key_norms_are_kept_per_kv_head_and_later_tokens_appended():
    cache = KnormCache(1, TokenBudget(tokens=3))
    directions = torch.nn.functional.normalize(torch.randn(1, 2, 6, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    norms = torch.tensor([[5.0, 1.0, 3.0, 0.5, 4.0, 2.0], [0.1, 9.0, 8.0, 0.2, 7.0, 0.3]])
    keys = directions * norms[None, :, :, None]
    cache.layers[0].update(keys, keys.clone())
    assert cache.kept_positions(0).tolist() == [[[1, 3, 5], [0, 3, 5]]]
    assert torch.allclose(cache.layers[0].keys.norm(dim=-1), torch.tensor([[[1.0, 0.5, 2.0], [0.1, 0.2, 0.3]]]))
    big = torch.full((1, 2, 1, 4), 100.0)  # decoding never evicts, however large the new key
    cache.layers[0].update(big, big)
    assert cache.kept_positions(0)[0, :, -1].tolist() == [6, 6] and cache.stored_length() == 4


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_budget_covering_all_tokens_reproduces_full_logits_and_greedy_tokens(attn):
    from kvbench.models import tiny_llama

    model, _ = tiny_llama("llama-gqa", seed=0, attn_implementation=attn)
    method, same = applied(model, "knorm", budget_ratio=1.0)
    prompt, continuation = random_ids(40), random_ids(6, seed=1)
    full, cache = DynamicCache(config=model.config), method.new_cache(same)
    assert torch.equal(same(input_ids=prompt, cache=cache).logits, model(input_ids=prompt, cache=full).logits)
    method.compress(cache)
    assert torch.equal(same(input_ids=continuation, cache=cache).logits, model(input_ids=continuation, cache=full).logits)
    expected = model.generate(prompt, max_new_tokens=16, do_sample=False)
    assert torch.equal(same.generate(prompt, cache=method.new_cache(same), max_new_tokens=16, do_sample=False), expected)


def test_budget_covering_all_tokens_matches_full_through_the_protocol_and_lm_eval(tiny_gqa):
    model, tokenizer = tiny_gqa
    assert_protocol_matches_full(model, *applied(model, "knorm", budget_ratio=1.0))
    assert_lm_eval_matches_full(model, tokenizer, "knorm", budget_ratio=1.0)


def test_the_model_is_left_untouched_and_any_attention_implementation_is_accepted(tiny_gqa):
    model, _ = tiny_gqa
    method = build_method("knorm")
    assert not method.changes_model and method.apply(model) is model
    assert model.config._attn_implementation == "sdpa"
    for impl in ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"):
        method.check_model(LlamaConfig(num_hidden_layers=2, attn_implementation=impl))
    with pytest.raises(MethodConfigError, match="method=knorm needs full-attention layers only"):
        method.check_model(MistralConfig(num_hidden_layers=2, sliding_window=64))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_continuation_after_eviction_matches_hand_built_reduced_cache_at_logical_positions(attn):
    from kvbench.models import tiny_llama

    model, _ = tiny_llama("llama-gqa", seed=0, attn_implementation=attn)
    method = build_method("knorm", budget_tokens=9)
    cache = method.new_cache(model)
    model(input_ids=random_ids(40), cache=cache)
    method.compress(cache)
    assert cache.stored_length() == 9 and cache.get_seq_length() == 40
    kept = torch.stack([cache.kept_positions(i)[0] for i in range(4)]).flatten(0, 1)
    assert len({tuple(row.tolist()) for row in kept}) > 1  # per-KV-head selection
    continuation, snapshot = random_ids(5, seed=3), copy.deepcopy(cache)
    got = model(input_ids=continuation, cache=cache).logits
    assert torch.allclose(got, reference_logits(model, snapshot, continuation), atol=1e-5)
    assert not torch.allclose(got, reference_logits(model, snapshot, continuation, "stored"), atol=1e-3)


def test_stored_bytes_are_budget_over_length_of_full(tiny_mha):
    model, _ = tiny_mha
    method = build_method("knorm")  # 20% of 50 = 10
    prompt, full = random_ids(50), DynamicCache(config=model.config)
    model(input_ids=prompt, cache=full)
    cache = method.new_cache(model)
    model(input_ids=prompt, cache=cache)
    kv_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert kv_bytes * 50 == cache_nbytes(full) * 10
    cfg = model.config
    assert cache_nbytes(cache) == kv_bytes + cfg.num_hidden_layers * cfg.num_key_value_heads * 10 * 4


@pytest.mark.parametrize("params,message", [
    (dict(budget_ratio=0.0), r"method.budget_ratio=0.0 must lie in \(0, 1\]"),
    (dict(budget_ratio=1.2), r"method.budget_ratio=1.2 must lie in \(0, 1\]"),
    (dict(budget_tokens=0), r"method.budget_tokens=0 must be a token count >= 1"),
    (dict(budget_ratio=0.2, budget_tokens=3), r"both set"),
    (dict(norm="l1"), r"method=knorm has no parameter norm \(valid: budget_ratio, budget_tokens, compress_every, "
     r"decode_budget_ratio, decode_budget_tokens\)"),
])
def test_bad_parameters_are_rejected_in_one_line_naming_the_value(params, message):
    with pytest.raises(MethodConfigError, match=message) as error:
        build_method("knorm", **params)
    assert "\n" not in str(error.value)


def test_config_file_composes(tiny_gqa):
    method = method_from_config("method=knorm", "method.budget_tokens=7")
    cache = method.new_cache(tiny_gqa[0])
    tiny_gqa[0](input_ids=random_ids(30), cache=cache)
    assert cache.stored_length() == 7
