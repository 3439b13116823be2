"""method=tova: drop what the current query attends to least, at prefill and every decode step."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache, LlamaConfig

from kvbench.cache import cache_nbytes
from kvbench.cache.attention_scores import scored_attention
from kvbench.cache.eviction import TokenBudget
from kvbench.methods import MethodConfigError, build_method
from kvbench.methods.tova import TOVALayer
from tests.cache.test_h2o import _Attention, _causal_probs, _one_hot_keys, _run
from tests.conftest import (applied, assert_lm_eval_matches_full, assert_protocol_matches_full, method_from_config,
                            random_ids, reference_logits)

pytestmark = pytest.mark.usefixtures("no_grad")

# 2 KV heads (MHA). The last prompt query's attention: head 0 favours tokens 0 and 3, head 1 tokens 1 and 3.
LAST_ROWS = [[0.4, 0.05, 0.05, 0.3, 0.2], [0.05, 0.45, 0.15, 0.3, 0.05]]  # layer mean: .225 .25 .1 .3 .125


def _prefill(heads: str) -> TOVALayer:
    layer = TOVALayer(TokenBudget(tokens=3), heads=heads)
    earlier = [[1 / (i + 1)] * (i + 1) for i in range(4)]  # rows 0..3 are not scored
    _run(layer, torch.stack([_causal_probs(earlier + [row]) for row in LAST_ROWS]), first=0, n_kv_heads=2)
    return layer


@pytest.mark.parametrize("heads, kept", [("layer", [[0, 1, 3], [0, 1, 3]]), ("group", [[0, 3, 4], [1, 2, 3]])])
def test_prefill_keeps_what_the_last_query_attends_to_most(heads, kept):
    layer = _prefill(heads)
    assert layer.positions.tolist() == [kept]
    assert torch.equal(layer.keys[0].argmax(-1), torch.tensor(kept))


def test_each_decode_step_evicts_exactly_the_token_the_current_query_attends_to_least():
    layer = _prefill("layer")  # keeps 0, 1, 3 in both heads
    for step, (probs, evicted) in enumerate([
        ([[0.5, 0.1, 0.3, 0.1], [0.3, 0.1, 0.45, 0.15]], 1),  # over 0, 1, 3, 5: mean .4 .1 .375 .125 -> token 1
        ([[0.05, 0.2, 0.15, 0.6], [0.05, 0.2, 0.15, 0.6]], 0),  # over 0, 3, 5, 6: token 0 goes
        ([[0.4, 0.3, 0.25, 0.05], [0.4, 0.3, 0.25, 0.05]], 7),  # over 3, 5, 6, 7: the new token itself goes
    ]):
        before = layer.kept_positions()[0, 0].tolist()
        keys = _one_hot_keys(5 + step, 1, 2, 8)
        all_k, all_v = layer.update(keys, keys.clone())
        stored = layer.kept_positions()[0, 0].long()  # probabilities are listed in logical order
        q = torch.zeros(1, 2, 1, 8)
        for h in range(2):
            q[0, h, 0, stored] = torch.log(torch.tensor(probs[h]))
        scored_attention("sdpa")(_Attention(1), q, all_k, all_v, None, scaling=1.0, dropout=0.0)
        after = layer.kept_positions()[0, 0].tolist()
        assert len(after) == 3 and sorted(set(before + [5 + step]) - set(after)) == [evicted]
        assert layer.kept_positions()[0, 1].tolist() == after  # one token set for the layer


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_budget_covering_all_tokens_reproduces_full_logits_and_greedy_tokens(attn):
    from kvbench.models import tiny_llama

    model, _ = tiny_llama("llama-gqa", seed=0, attn_implementation=attn)
    method, scored = applied(model, "tova", budget_tokens=64)
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
    assert_protocol_matches_full(model, *applied(model, "tova", budget_tokens=100))
    assert_lm_eval_matches_full(model, tokenizer, "tova", budget_tokens=4096)


@pytest.mark.parametrize("heads", ["layer", "group"])
def test_greedy_decoding_matches_the_reduced_cache_step_by_step_and_never_exceeds_the_budget(tiny_gqa, heads):
    model, _ = tiny_gqa
    method, scored = applied(model, "tova", budget_ratio=0.3, heads=heads)  # 30 tokens -> 9
    prompt, cache = random_ids(30), method.new_cache(scored)
    logits = scored(input_ids=prompt, cache=cache).logits
    method.compress(cache)
    budget_bytes, tokens = cache_nbytes(cache), []
    for _ in range(8):
        next_id = logits[:, -1:].argmax(-1)
        tokens.append(int(next_id))
        snapshot = copy.deepcopy(cache)
        logits = scored(input_ids=next_id, cache=cache).logits
        assert torch.allclose(logits, reference_logits(model, snapshot, next_id), atol=1e-5)
        assert cache.stored_length() == 9 and cache_nbytes(cache) == budget_bytes * 10 // 9  # + the slot a step writes
    kept = cache.kept_positions(1)[0]
    assert (kept[0] == kept[1]).all() == (heads == "layer")  # group: the KV heads keep their own sets
    scored.generation_config.eos_token_id = None
    generated = scored.generate(prompt, cache=method.new_cache(scored), max_new_tokens=8, do_sample=False)
    assert generated[0, 30:].tolist() == tokens


def test_continuation_after_eviction_matches_hand_built_reduced_cache_at_logical_positions(tiny_gqa):
    model, _ = tiny_gqa
    method, scored = applied(model, "tova", budget_tokens=9)
    cache = method.new_cache(scored)
    scored(input_ids=random_ids(40), cache=cache)
    continuation, snapshot = random_ids(5, seed=3), copy.deepcopy(cache)
    got = scored(input_ids=continuation, cache=cache).logits
    assert torch.allclose(got, reference_logits(model, snapshot, continuation), atol=1e-5)
    assert not torch.allclose(got, reference_logits(model, snapshot, continuation, "stored"), atol=1e-3)
    assert cache.stored_length() == 9  # the five new tokens pushed five out


def test_stored_bytes_are_budget_over_length_of_full(tiny_mha):
    model, _ = tiny_mha
    method, scored = applied(model, "tova")  # 20% of 50 = 10
    prompt, full = random_ids(50), DynamicCache(config=model.config)
    model(input_ids=prompt, cache=full)
    cache = method.new_cache(scored)
    scored(input_ids=prompt, cache=cache)
    kv_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert kv_bytes * 50 == cache_nbytes(full) * 10
    cfg = model.config  # no scores are kept: only an int32 position per token, layer and KV head
    assert cache_nbytes(cache) == kv_bytes + cfg.num_hidden_layers * cfg.num_key_value_heads * 10 * 4


@pytest.mark.parametrize("params,message", [
    (dict(budget_ratio=-0.2), r"method.budget_ratio=-0.2 must lie in \(0, 1\]"),
    (dict(budget_tokens=0), r"method.budget_tokens=0 must be a token count >= 1"),
    (dict(heads="all"), r"method.heads='all' is not supported \(choose one of: layer, group\)"),
])
def test_bad_parameters_are_rejected_in_one_line_naming_the_value(params, message):
    with pytest.raises(MethodConfigError, match=message) as error:
        build_method("tova", **params)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("heads", ["layer", "group"])
def test_attention_implementations_that_cannot_be_scored_are_refused_before_loading(heads):
    method = build_method("tova", heads=heads)
    with pytest.raises(MethodConfigError) as error:
        method.check_model(LlamaConfig(num_hidden_layers=2, attn_implementation="flash_attention_2"))
    assert str(error.value) == ("method=tova cannot score attention with model.attn_implementation='flash_attention_2' "
                                "(choose sdpa or eager)")


def test_config_file_composes_into_the_papers_rule():
    method = method_from_config("method=tova")
    assert method.heads == "layer" and method.params()["heads"] == "layer"
