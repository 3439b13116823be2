"""method=snapkv: observation window + pooled top-k per KV head, once after prefill; exactness, positions, bytes."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache, LlamaConfig

from kvbench.cache import cache_nbytes
from kvbench.cache.eviction import TokenBudget
from kvbench.methods import MethodConfigError, build_method
from kvbench.methods.snapkv import SnapKVLayer
from tests.cache.test_h2o import _causal_probs, _run
from tests.conftest import (applied, assert_lm_eval_matches_full, assert_protocol_matches_full, method_from_config,
                            random_ids, reference_logits)

pytestmark = pytest.mark.usefixtures("no_grad")

# Ten prompt tokens, window = the last two. Their attention rows (keys 0..8 and 0..9) sum, over keys 0..7, to
# [0.1, 0.5, 0.3, 0, 0, 0.45, 0, 0]: without pooling the top 3 are {1, 5, 2}; averaged over 3 neighbours
# ([.2, .3, .267, .1, .15, .15, .15, 0]) they are {1, 2, 0}: token 5 is an isolated peak, 0 sits by the big one.
WINDOW_ROWS = [[0.05, 0.25, 0.15, 0, 0, 0.2, 0, 0, 0.35], [0.05, 0.25, 0.15, 0, 0, 0.25, 0, 0, 0.1, 0.2]]


def _prompt_probs(window_rows=WINDOW_ROWS) -> torch.Tensor:
    earlier = [[1 / (i + 1)] * (i + 1) for i in range(8)]  # rows 0..7 are not scored
    return _causal_probs(earlier + window_rows)[None]  # one head


@pytest.mark.parametrize("kernel_size, kept", [(1, [1, 2, 5, 8, 9]), (3, [0, 1, 2, 8, 9])])
def test_window_and_pooled_top_k_are_kept_from_known_attention(kernel_size, kept):
    layer = SnapKVLayer(TokenBudget(tokens=5), window=2, kernel_size=kernel_size)
    _run(layer, _prompt_probs(), first=0, n_kv_heads=1, dim=16)
    assert layer.positions.tolist() == [[kept]]
    assert torch.equal(layer.keys[0, 0].argmax(-1), torch.tensor(kept))  # the kept keys are the right ones


def test_gqa_heads_keep_their_own_tokens_from_the_summed_scores_of_their_query_heads():
    # 2 KV heads x 2 query heads; KV head 0's query heads both look at token 1, KV head 1's split 3 vs 6
    rows_a = [[0, 0.9, 0, 0, 0, 0, 0, 0, 0.1], [0, 0.9, 0, 0, 0, 0, 0, 0, 0.05, 0.05]]
    rows_b = [[0, 0, 0, 0.6, 0, 0, 0.3, 0, 0.1], [0, 0, 0, 0.1, 0, 0, 0.8, 0, 0.05, 0.05]]  # sums: 3 -> .7, 6 -> 1.1
    rows_c = [[0, 0, 0, 0.7, 0, 0, 0.2, 0, 0.1], [0, 0, 0, 0.7, 0, 0, 0.2, 0, 0.05, 0.05]]  # sums: 3 -> 1.4, 6 -> .4
    probs = torch.cat([_prompt_probs(rows_a), _prompt_probs(rows_a), _prompt_probs(rows_b), _prompt_probs(rows_c)])
    layer = SnapKVLayer(TokenBudget(tokens=3), window=2, kernel_size=1)
    _run(layer, probs, first=0, n_kv_heads=2, dim=16)
    # KV head 1: token 3 gets .7 + 1.4 = 2.1 from its two query heads, token 6 gets 1.1 + .4 = 1.5
    assert layer.positions.tolist() == [[[1, 8, 9], [3, 8, 9]]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_budget_covering_all_tokens_reproduces_full_logits_and_greedy_tokens(attn):
    from kvbench.models import tiny_llama

    model, _ = tiny_llama("llama-gqa", seed=0, attn_implementation=attn)
    method, scored = applied(model, "snapkv", budget_ratio=1.0)  # SnapKV never evicts after the prefill
    prompt, continuation = random_ids(40), random_ids(6, seed=1)
    full, cache = DynamicCache(config=model.config), method.new_cache(scored)
    assert torch.equal(scored(input_ids=prompt, cache=cache).logits, model(input_ids=prompt, cache=full).logits)
    method.compress(cache)
    assert torch.equal(scored(input_ids=continuation, cache=cache).logits, model(input_ids=continuation, cache=full).logits)
    expected = model.generate(prompt, max_new_tokens=16, do_sample=False)
    assert torch.equal(scored.generate(prompt, cache=method.new_cache(scored), max_new_tokens=16, do_sample=False),
                       expected)


def test_budget_covering_all_tokens_matches_full_through_the_protocol_and_lm_eval(tiny_gqa):
    model, tokenizer = tiny_gqa
    assert_protocol_matches_full(model, *applied(model, "snapkv", budget_ratio=1.0))
    assert_lm_eval_matches_full(model, tokenizer, "snapkv", budget_ratio=1.0)


def test_heads_keep_different_tokens_and_a_continuation_matches_the_hand_built_reduced_cache(tiny_gqa):
    model, _ = tiny_gqa
    method, scored = applied(model, "snapkv", budget_tokens=12, window=4)
    cache = method.new_cache(scored)
    scored(input_ids=random_ids(40), cache=cache)
    method.compress(cache)
    assert [cache.stored_length(i) for i in range(4)] == [12] * 4 and cache.get_seq_length() == 40
    kept = torch.stack([cache.kept_positions(i)[0] for i in range(4)]).flatten(0, 1)
    assert len({tuple(row.tolist()) for row in kept}) > 1  # per-KV-head selection
    assert all(row[-4:].tolist() == [36, 37, 38, 39] for row in kept)  # the window, in every head
    continuation, snapshot = random_ids(5, seed=3), copy.deepcopy(cache)
    got = scored(input_ids=continuation, cache=cache).logits
    assert torch.allclose(got, reference_logits(model, snapshot, continuation), atol=1e-5)
    assert not torch.allclose(got, reference_logits(model, snapshot, continuation, "stored"), atol=1e-3)
    assert cache.stored_length() == 17  # no decode-time eviction


def test_stored_bytes_are_budget_over_length_of_full(tiny_mha):
    model, _ = tiny_mha
    method, scored = applied(model, "snapkv", budget_tokens=40)
    prompt, full = random_ids(100), DynamicCache(config=model.config)
    model(input_ids=prompt, cache=full)
    cache = method.new_cache(scored)
    scored(input_ids=prompt, cache=cache)
    kv_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert kv_bytes * 100 == cache_nbytes(full) * 40
    cfg = model.config
    assert cache_nbytes(cache) == kv_bytes + cfg.num_hidden_layers * cfg.num_key_value_heads * 40 * 4  # + positions


def test_ratio_budget_too_small_for_the_window_cuts_the_window_and_says_so(tiny_gqa):
    model, _ = tiny_gqa
    method, scored = applied(model, "snapkv", budget_ratio=0.1)  # 60 tokens -> 6 < window 32
    cache = method.new_cache(scored)
    scored(input_ids=random_ids(60), cache=cache)
    assert cache.kept_positions(2)[0].tolist() == [list(range(54, 60))] * 2
    assert cache.notes() == ["snapkv: budget_ratio=0.1 gave a budget smaller than window=32 (short prompt): the "
                             "window was cut to the budget, only the last tokens kept"]


@pytest.mark.parametrize("params,message", [
    (dict(budget_ratio=0.0), r"method.budget_ratio=0.0 must lie in \(0, 1\]"),
    (dict(budget_tokens=-5), r"method.budget_tokens=-5 must be a token count >= 1"),
    (dict(budget_ratio=0.5, budget_tokens=64), r"both set"),
    (dict(budget_tokens=16), r"method.window=32 is larger than method.budget_tokens=16"),
    (dict(window=0), r"method.window=0 must be a token count >= 1"),
    (dict(kernel_size=4), r"method.kernel_size=4 must be an odd number >= 1"),
    (dict(pooling="median"), r"method.pooling='median' is not supported \(choose one of: avg, max\)"),
])
def test_bad_parameters_are_rejected_in_one_line_naming_the_value(params, message):
    with pytest.raises(MethodConfigError, match=message) as error:
        build_method("snapkv", **params)
    assert "\n" not in str(error.value)


def test_attention_implementations_that_cannot_be_scored_are_refused_before_loading(tiny_gqa):
    method = build_method("snapkv")
    method.check_model(LlamaConfig(num_hidden_layers=2, attn_implementation="eager"))
    with pytest.raises(MethodConfigError, match=r"method=snapkv cannot score attention with "
                                                r"model.attn_implementation='flash_attention_2' \(choose sdpa or eager\)"):
        method.check_model(LlamaConfig(num_hidden_layers=2, attn_implementation="flash_attention_2"))
    with pytest.raises(RuntimeError, match="method.apply"):
        method.new_cache(tiny_gqa[0])


def test_config_file_composes_into_the_papers_defaults():
    method = method_from_config("method=snapkv")
    assert (method.window, method.kernel_size, method.pooling) == (32, 5, "avg")
    assert method.budget().resolve(1000) == 200
