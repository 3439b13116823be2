"""method=h2o end to end: exactness without eviction, positions after eviction, bytes, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache

from kvbench.cache import cache_nbytes
from kvbench.methods import MethodConfigError, build_method
from tests.conftest import method_from_config, random_ids


# as in evaluation; caches built under autograd cannot be deep-copied
pytestmark = pytest.mark.usefixtures("no_grad")


def _h2o_model(model, **params):
    """(method, model switched to scored attention); ``model`` itself stays the plain reference."""
    method = build_method("h2o", **params)
    scored = method.apply(copy.deepcopy(model))
    return method, scored


def _peaky(model, scale: float = 8.0):
    """Sharpen a random model's attention (scale q and k), so heads pick different heavy hitters."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(scale)
            layer.self_attn.k_proj.weight.mul_(scale)
    return model


def _reduced_cache(h2o_cache) -> DynamicCache:
    """A plain DynamicCache holding exactly the keys/values the H2O cache kept (per KV head)."""
    return DynamicCache(ddp_cache_data=[(layer.keys.clone(), layer.values.clone()) for layer in h2o_cache.layers])


def _reference_logits(model, h2o_cache, new_ids, positions_from="logical"):
    """Logits of ``new_ids`` on the hand-built reduced cache, at explicit positions."""
    start = h2o_cache.get_seq_length() if positions_from == "logical" else h2o_cache.stored_length()
    position_ids = torch.arange(start, start + new_ids.shape[1])[None]
    return model(input_ids=new_ids, cache=_reduced_cache(h2o_cache), position_ids=position_ids).logits


# ---------------------------------------------------------------------------------------------
# Budget >= sequence length: nothing is evicted, outputs are those of `full`


@pytest.mark.parametrize("kind", ["llama-gqa", "llama-mha"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_budget_covering_all_tokens_reproduces_full_logits_and_greedy_tokens(kind, attn):
    from kvbench.models import tiny_llama

    model, _ = tiny_llama(kind, seed=0, attn_implementation=attn)
    method, scored = _h2o_model(model, heavy_ratio=1.0, recent_ratio=1.0)  # budget 2x the prompt
    prompt, continuation = random_ids(24), random_ids(6, seed=1)

    full = DynamicCache(config=model.config)
    cache = method.new_cache(scored)
    # eager: its own probabilities are scored, the output is eager's, bit for bit; sdpa: a causal prefill runs the
    # flash kernel itself (with the scores from its log-sum-exp, attention_scores.FUSED), equal within float rounding
    same = torch.equal if attn == "eager" else lambda a, b: torch.allclose(a, b, rtol=0, atol=1e-5)
    assert same(scored(input_ids=prompt, cache=cache).logits, model(input_ids=prompt, cache=full).logits)
    method.compress(cache)
    assert same(scored(input_ids=continuation, cache=cache).logits, model(input_ids=continuation, cache=full).logits)

    expected = model.generate(prompt, max_new_tokens=16, do_sample=False)
    got = scored.generate(prompt, cache=method.new_cache(scored), max_new_tokens=16, do_sample=False)
    assert torch.equal(got, expected)


def test_beam_search_reorders_the_cache_like_full(tiny_gqa):
    model, _ = tiny_gqa
    method, scored = _h2o_model(model, heavy_ratio=1.0, recent_ratio=1.0)
    prompt = random_ids(20)
    expected = model.generate(prompt, max_new_tokens=6, num_beams=3, do_sample=False)
    got = scored.generate(prompt, cache=method.new_cache(scored), max_new_tokens=6, num_beams=3,
                          do_sample=False)
    assert torch.equal(got, expected)


# ---------------------------------------------------------------------------------------------
# After eviction: positions are logical, the mask covers every kept token


def test_continuation_after_eviction_matches_hand_built_reduced_cache_at_logical_positions(tiny_gqa):
    model = _peaky(tiny_gqa[0])
    method, scored = _h2o_model(model, heavy_tokens=5, recent_tokens=4)
    cache = method.new_cache(scored)
    scored(input_ids=random_ids(40), cache=cache)
    method.compress(cache)
    assert cache.stored_length() == 9 and cache.get_seq_length() == 40
    # heads keep different token sets (per-head eviction really happened)
    kept = torch.stack([cache.kept_positions(i)[0] for i in range(4)]).flatten(0, 1)  # [layers*heads, 9]
    assert len({tuple(row.tolist()) for row in kept}) > 1

    continuation = random_ids(5, seed=3)
    snapshot = copy.deepcopy(cache)
    got = scored(input_ids=continuation, cache=cache).logits
    expected = _reference_logits(model, snapshot, continuation)
    assert torch.allclose(got, expected, atol=1e-5)
    # the check can fail: the same reduced cache at stored (not logical) positions gives other logits
    wrong = _reference_logits(model, snapshot, continuation, positions_from="stored")
    assert not torch.allclose(got, wrong, atol=1e-3)


@pytest.mark.parametrize("group_reduction", ["sum", "max"])
def test_greedy_decoding_after_eviction_matches_reference_step_by_step(tiny_gqa, group_reduction):
    model = _peaky(tiny_gqa[0])
    method, scored = _h2o_model(model, heavy_ratio=0.2, recent_ratio=0.1, group_reduction=group_reduction)
    prompt = random_ids(30)
    cache = method.new_cache(scored)
    logits = scored(input_ids=prompt, cache=cache).logits
    method.compress(cache)
    budget = 6 + 3
    assert cache.stored_length() == budget
    budget_bytes = cache_nbytes(cache)
    tokens = []
    for _ in range(8):
        next_id = logits[:, -1:].argmax(-1)
        tokens.append(int(next_id))
        snapshot = copy.deepcopy(cache)
        logits = scored(input_ids=next_id, cache=cache).logits
        assert torch.allclose(logits, _reference_logits(model, snapshot, next_id), atol=1e-5)
        # never above budget; the bytes are the budget + the one slot an in-place step writes its token into
        assert cache.stored_length() == budget and cache_nbytes(cache) == budget_bytes * (budget + 1) // budget
    assert cache.get_seq_length() == 38
    # model.generate on the same method gives the same tokens as this hand-driven loop
    scored.generation_config.eos_token_id = None  # the loop above does not stop at </s> either
    generated = scored.generate(prompt, cache=method.new_cache(scored), max_new_tokens=8, do_sample=False)
    assert generated[0, 30:].tolist() == tokens


def test_streamed_prefill_keeps_the_budget_of_the_first_chunk(tiny_gqa):
    model, _ = tiny_gqa
    method, scored = _h2o_model(model)  # defaults: 10% heavy + 10% recent of the first chunk
    cache = method.new_cache(scored)
    text = random_ids(60)
    for chunk in text.split(30, dim=1):
        scored(input_ids=chunk, cache=cache)
        method.compress(cache)
        assert cache.stored_length() == 6  # 3 heavy + 3 recent of the 30-token first chunk
    assert cache.get_seq_length() == 60
    assert cache.kept_positions(1)[0, :, -3:].tolist() == [[57, 58, 59]] * 2
    snapshot, nxt = copy.deepcopy(cache), random_ids(2, seed=9)
    assert torch.allclose(scored(input_ids=nxt, cache=cache).logits,
                          _reference_logits(model, snapshot, nxt), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Bytes


def test_stored_bytes_after_prefill_are_budget_over_length_of_full(tiny_mha):
    model, _ = tiny_mha
    method, scored = _h2o_model(model)  # 20% of 50 tokens = 5 heavy + 5 recent
    prompt = random_ids(50)
    full = DynamicCache(config=model.config)
    model(input_ids=prompt, cache=full)
    cache = method.new_cache(scored)
    scored(input_ids=prompt, cache=cache)
    method.compress(cache)
    kv_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert kv_bytes * 50 == cache_nbytes(full) * 10  # exactly budget/N of full
    cfg = model.config  # + float32 score and int32 position per kept token, layer and KV head
    assert cache_nbytes(cache) == kv_bytes + cfg.num_hidden_layers * cfg.num_key_value_heads * 10 * (4 + 4)


# ---------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize("params,message", [
    (dict(heavy_ratio=1.5), r"method.heavy_ratio=1.5 must lie in \[0, 1\]"),
    (dict(heavy_ratio=-0.1), r"method.heavy_ratio=-0.1 must lie in \[0, 1\]"),
    (dict(recent_ratio=0.0), r"method.recent_ratio=0.0 must lie in \(0, 1\]"),
    (dict(recent_ratio=2.0), r"method.recent_ratio=2.0 must lie in \(0, 1\]"),
    (dict(heavy_tokens=-3), r"method.heavy_tokens=-3 must be a token count >= 0"),
    (dict(recent_tokens=-1), r"method.recent_tokens=-1 must be a token count >= 0"),
    (dict(heavy_ratio=0.1, heavy_tokens=8), r"method.heavy_ratio=0.1 and method.heavy_tokens=8 both set"),
    (dict(recent_ratio=0.1, recent_tokens=8), r"method.recent_ratio=0.1 and method.recent_tokens=8 both set"),
    (dict(heavy_tokens=0, recent_tokens=0), r"leave no cache"),
    (dict(group_reduction="median"), r"method.group_reduction='median' is not supported \(choose one of: sum, mean, max\)"),
    (dict(heavy_budget=3), r"method=h2o has no parameter heavy_budget"),
])
def test_bad_parameters_are_rejected_with_the_value_and_the_valid_choices(params, message):
    with pytest.raises(MethodConfigError, match=message):
        build_method("h2o", **params)


def test_valid_budgets_resolve_as_documented():
    assert build_method("h2o").budget().resolve(100) == (10, 10)
    assert build_method("h2o", heavy_ratio=0.0, recent_ratio=0.2).budget().resolve(100) == (0, 20)
    assert build_method("h2o", heavy_tokens=16, recent_ratio=0.05).budget().resolve(100) == (16, 5)
    assert build_method("h2o", heavy_tokens=16, recent_tokens=0).budget().resolve(100) == (16, 0)


def test_models_the_cache_cannot_serve_are_rejected_before_loading():
    from transformers import LlamaConfig, MistralConfig

    method = build_method("h2o")
    method.check_model(LlamaConfig(num_hidden_layers=2))
    with pytest.raises(MethodConfigError, match="full-attention layers only"):
        method.check_model(MistralConfig(num_hidden_layers=2, sliding_window=64))
    with pytest.raises(MethodConfigError, match="choose sdpa or eager"):
        method.check_model(LlamaConfig(num_hidden_layers=2, attn_implementation="flex_attention"))


def test_new_cache_requires_apply(tiny_gqa):
    model, _ = tiny_gqa
    with pytest.raises(RuntimeError, match="method.apply"):
        build_method("h2o").new_cache(model)


@pytest.mark.parametrize("config_name,heavy,recent", [("h2o", 5, 5), ("h2o_local", 0, 10)])
def test_config_files_compose_into_working_methods(tiny_gqa, config_name, heavy, recent):
    method = method_from_config(f"method={config_name}")
    model, _ = tiny_gqa
    method.apply(model)
    cache = method.new_cache(model)
    model(input_ids=random_ids(50), cache=cache)
    method.compress(cache)
    layer = cache.layers[0]
    assert (layer.heavy, layer.recent) == (heavy, recent)
    if heavy == 0:  # the local baseline keeps exactly the most recent tokens
        assert cache.kept_positions(0)[0].tolist() == [list(range(40, 50))] * 2


# ---------------------------------------------------------------------------------------------
# Bundled model (short)


def test_bundled_model_full_budget_is_exact_and_evicting_budget_keeps_logical_positions(smollm2, smollm2_shared):
    model, tok = smollm2_shared  # reference, not modified
    method = build_method("h2o", heavy_ratio=1.0, recent_ratio=1.0)
    scored = method.apply(smollm2[0])
    text = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
            "combined movable metal type, oil-based ink and a screw press. Within decades, printing shops "
            "spread across Europe, books became cheaper, and literacy rose. Scholars could now compare")
    prompt = tok(text, return_tensors="pt").input_ids
    assert 40 <= prompt.shape[1] <= 120
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=6, do_sample=False)
        got = scored.generate(prompt, cache=method.new_cache(scored), max_new_tokens=6, do_sample=False)
        assert torch.equal(got, expected)

        evicting = build_method("h2o")  # 10% + 10%
        cache = evicting.new_cache(scored)
        scored(input_ids=prompt, cache=cache)
        evicting.compress(cache)
        n = prompt.shape[1]
        assert cache.stored_length() == 2 * int(0.1 * n) and cache.get_seq_length() == n
        nxt = expected[:, n:n + 3]
        snapshot = copy.deepcopy(cache)
        assert torch.allclose(scored(input_ids=nxt, cache=cache).logits,
                              _reference_logits(model, snapshot, nxt), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Under the evaluation protocol (prefill → compress → deep-copied continuations / streaming)


def test_protocol_scores_equal_full_when_budget_covers_everything_and_respect_budget_otherwise(tiny_gqa):
    from kvbench.eval.protocol import CompressionProtocol

    model, _ = tiny_gqa
    context, continuations = random_ids(40)[0].tolist(), [random_ids(5, seed=s)[0].tolist() for s in (1, 2)]
    full = CompressionProtocol(model, build_method("full"))
    method, scored = _h2o_model(model, heavy_ratio=1.0, recent_ratio=1.0)
    covering = CompressionProtocol(scored, method)
    expected = full.score_continuations(context, continuations)
    got = covering.score_continuations(context, continuations)
    assert [g[1] for g in got] == [e[1] for e in expected]
    assert [g[0] for g in got] == pytest.approx([e[0] for e in expected], abs=1e-5)
    assert full.stream_logprob(context, continuations[0], chunk=2) == pytest.approx(
        covering.stream_logprob(context, continuations[0], chunk=2), abs=1e-5)

    method, scored = _h2o_model(model)  # 20%: the 39-token prefill keeps 3 + 3 tokens
    evicting = CompressionProtocol(scored, method)
    evicted = evicting.score_continuations(context, continuations)
    assert [e[0] for e in evicted] != pytest.approx([e[0] for e in expected], abs=1e-3)
    stats = evicting.stats.summary()
    assert stats["stored_bytes"] < stats["full_bytes"] / 5
    streamed = evicting.stream_logprob(context, continuations[0] * 4, chunk=3)
    assert streamed == streamed and streamed < 0  # finite log-probability
