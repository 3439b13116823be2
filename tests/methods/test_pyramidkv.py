"""method=pyramidkv: SnapKV with per-layer budgets falling linearly with depth, summing to the uniform total."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache, LlamaConfig

from kvbench.cache import cache_nbytes
from kvbench.methods import MethodConfigError, build_method
from kvbench.methods.pyramidkv import pyramid_budgets
from tests.conftest import (applied, assert_lm_eval_matches_full, assert_protocol_matches_full, method_from_config,
                            random_ids, reference_logits)

pytestmark = pytest.mark.usefixtures("no_grad")
CLAMPED = ("pyramidkv: per-layer budgets clamped to the prompt (budget_tokens=16, beta=20): the first layer keeps the "
           "whole prompt, the others a flatter pyramid with the same mean")


def test_budgets_fall_linearly_and_sum_to_the_uniform_total():
    # B = 16, window 4: the selected parts fall from 2*12 - 12/20 = 23.4 to 12/20 = 0.6 -> 23.4, 15.8, 8.2, 0.6
    budgets, clamped = pyramid_budgets(16, 4, 1000, 4, 20)
    assert budgets == [27, 20, 12, 5] and sum(budgets) == 4 * 16 and not clamped
    assert pyramid_budgets(16, 4, 1000, 4, 1) == ([16, 16, 16, 16], False)  # beta 1: uniform SnapKV


@pytest.mark.parametrize("budget, window, n, layers, beta", [(128, 32, 2000, 30, 20), (2048, 32, 8000, 32, 20),
                                                             (64, 32, 700, 30, 20), (100, 7, 130, 5, 3), (33, 32, 40, 30, 20),
                                                             (256, 32, 400, 30, 20)])
def test_integer_budgets_are_exact_non_increasing_and_hold_the_window(budget, window, n, layers, beta):
    budgets, clamped = pyramid_budgets(budget, window, n, layers, beta)
    assert sum(budgets) == layers * budget  # the same memory as uniform SnapKV, exactly
    assert all(a >= b for a, b in zip(budgets, budgets[1:]))
    assert window <= budgets[-1] and budgets[0] <= n
    if not clamped:  # the official code's smallest layer: the window + (B - window) / beta
        assert abs(budgets[-1] - (window + (budget - window) / beta)) <= 1
    else:
        assert budgets[0] == n


def test_a_top_budget_beyond_the_prompt_is_clamped_keeping_the_mean():
    # B = 16, window 4, 20 tokens: layer 0 would select 23.4 of the 16 tokens outside the window
    budgets, clamped = pyramid_budgets(16, 4, 20, 4, 20)
    assert clamped and budgets == [20, 17, 15, 12] and sum(budgets) == 64


def test_layers_keep_their_budgets_and_the_clamping_is_reported(tiny_gqa):
    model, _ = tiny_gqa
    method, scored = applied(model, "pyramidkv", budget_tokens=16, window=4)
    for n, expected, notes in [(1000, [27, 20, 12, 5], []), (20, [20, 17, 15, 12], [CLAMPED])]:
        cache = method.new_cache(scored)
        scored(input_ids=random_ids(n), cache=cache)
        method.compress(cache)
        assert cache.layer_budgets() == expected and [cache.stored_length(i) for i in range(4)] == expected
        assert cache.notes() == notes
        assert all(cache.kept_positions(i)[0, :, -4:].tolist() == [list(range(n - 4, n))] * 2 for i in range(4))


def test_a_multi_token_continuation_after_compression_matches_token_by_token_on_the_reduced_cache(tiny_gqa):
    # kvpress 0.5.5 fails here: its layers hold different lengths and transformers builds one mask from layer 0
    model, _ = tiny_gqa  # the reference: plain sdpa, whose one-token steps need no mask
    for attn in ("sdpa", "eager"):
        plain = copy.deepcopy(model)
        plain.set_attn_implementation(attn)
        method, scored = applied(plain, "pyramidkv", budget_tokens=16, window=4)
        cache = method.new_cache(scored)
        scored(input_ids=random_ids(60), cache=cache)
        method.compress(cache)
        assert len({cache.stored_length(i) for i in range(4)}) == 4
        continuation, snapshot = random_ids(6, seed=5), copy.deepcopy(cache)
        got = scored(input_ids=continuation, cache=cache).logits
        expected = reference_logits(model, snapshot, continuation, stepwise=True)  # one token at a time: no mask
        assert torch.allclose(got, expected, atol=1e-5), attn
        assert not torch.allclose(got, reference_logits(model, snapshot, continuation, "stored", stepwise=True),
                                  atol=1e-3)


def test_scoring_several_continuations_through_the_protocol_after_compression(tiny_gqa):
    from kvbench.eval.protocol import CompressionProtocol

    model, _ = tiny_gqa
    method, scored = applied(model, "pyramidkv", budget_tokens=16, window=4)
    protocol = CompressionProtocol(scored, method)
    context = random_ids(50)[0].tolist()
    scores = protocol.score_continuations(context, [random_ids(4, seed=s)[0].tolist() for s in (1, 2)])
    assert len(scores) == 2 and all(s[0] < 0 for s in scores)
    assert protocol.generate(context, 4, query=random_ids(5, seed=3)[0].tolist()) != []


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_budget_covering_all_tokens_reproduces_full_logits_and_greedy_tokens(attn):
    from kvbench.models import tiny_llama

    model, _ = tiny_llama("llama-gqa", seed=0, attn_implementation=attn)
    method, scored = applied(model, "pyramidkv", budget_ratio=1.0)
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
    assert_protocol_matches_full(model, *applied(model, "pyramidkv", budget_ratio=1.0))
    assert_lm_eval_matches_full(model, tokenizer, "pyramidkv", budget_ratio=1.0)


def test_stored_bytes_are_the_uniform_budget_over_length_of_full(tiny_mha):
    model, _ = tiny_mha
    method, scored = applied(model, "pyramidkv", budget_tokens=40)  # 100 tokens, window 32
    prompt, full = random_ids(100), DynamicCache(config=model.config)
    model(input_ids=prompt, cache=full)
    cache = method.new_cache(scored)
    scored(input_ids=prompt, cache=cache)
    assert len(set(cache.layer_budgets())) > 1
    kv_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert kv_bytes * 100 == cache_nbytes(full) * 40  # exactly uniform SnapKV's memory


@pytest.mark.parametrize("params,message", [
    (dict(budget_ratio=2.0), r"method.budget_ratio=2.0 must lie in \(0, 1\]"),
    (dict(budget_tokens=0), r"method.budget_tokens=0 must be a token count >= 1"),
    (dict(budget_tokens=64, window=65), r"method.window=65 is larger than method.budget_tokens=64"),
    (dict(beta=0), r"method.beta=0 must be >= 1"),
    (dict(kernel_size=0), r"method.kernel_size=0 must be an odd number >= 1"),
])
def test_bad_parameters_are_rejected_in_one_line_naming_the_value(params, message):
    with pytest.raises(MethodConfigError, match=message) as error:
        build_method("pyramidkv", **params)
    assert "\n" not in str(error.value)


def test_attention_implementations_that_cannot_be_scored_are_refused_before_loading():
    with pytest.raises(MethodConfigError, match=r"method=pyramidkv cannot score attention .*'flex_attention'"):
        build_method("pyramidkv").check_model(LlamaConfig(num_hidden_layers=2, attn_implementation="flex_attention"))


def test_config_file_composes_into_the_papers_defaults():
    method = method_from_config("method=pyramidkv")
    assert (method.window, method.kernel_size, method.pooling, method.beta) == (32, 5, "avg", 20)


def test_clamped_budgets_reach_the_record_through_the_protocol(tiny_gqa):
    from kvbench.eval.protocol import CompressionProtocol

    model, _ = tiny_gqa
    method, scored = applied(model, "pyramidkv", budget_tokens=16, window=4)
    protocol = CompressionProtocol(scored, method)
    for n in (21, 24, 200):  # 20- and 23-token prefills clamp, a 199-token one does not
        protocol.prefill(random_ids(n)[0].tolist()[:-1])
    assert protocol.stats.kv_summary()["notes"] == {CLAMPED: 2}
    assert "notes" not in CompressionProtocol(model, build_method("full")).stats.kv_summary()
