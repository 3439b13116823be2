"""Every method that replaces attention (modules or the attention function) really fills its cache.

A replacement attention that misses the cache argument runs cacheless and still produces logits; these
tests catch that: after a prefill through the protocol, every layer holds the expected KV heads and
tokens, and a cache left empty is an error, never a number.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BloomConfig, BloomForCausalLM

from kvbench.cache.base import PlainCache

from kvbench.eval.protocol import CacheNotWrittenError, CompressionProtocol
from kvbench.methods import build_method
from kvbench.models import byte_tokenizer, tiny_llama

SVD_FAST = dict(calibration_sequences=2, calibration_length=64, reuse_calibration=False)
PROMPT = 40  # tokens; H2O's default budget keeps 10% + 10% = 8 of them


def _stored(cache, layer_idx: int) -> tuple[int, int]:
    """(KV heads, tokens) a layer stores: a merged pair's restored past, a quantized layer's keys (codes +
    residual), else the layer's keys."""
    layer = cache.layers[layer_idx]
    pair = getattr(layer, "pair", None)
    if pair is not None:
        keys = pair.keys.restore(layer.role)
    elif getattr(layer, "key_stream", None) is not None:
        keys = layer.key_stream.read()
    else:
        keys = layer.keys
    return keys.shape[1], keys.shape[2]


def _prefill(model, tokenizer, method):
    reference = copy.deepcopy(model.config)
    model = method.apply(copy.deepcopy(model), tokenizer)
    ids = torch.randint(0, 256, (PROMPT,), generator=torch.Generator().manual_seed(0)).tolist()
    return CompressionProtocol(model, method, reference).prefill(ids)


@pytest.mark.parametrize("name, params, rope, expected", [
    ("full", {}, True, [(2, PROMPT)] * 4),
    ("meanpool_gqa", {"kv_heads": 1}, True, [(1, PROMPT)] * 4),
    ("svd_gqa", {"kv_heads": 1, **SVD_FAST}, True, [(1, PROMPT)] * 4),  # SVDRopeAttention caches k̃
    ("svd_gqa", {"kv_heads": 1, **SVD_FAST}, False, [(1, PROMPT)] * 4),  # keys fused into k_proj
    ("h2o", {}, True, [(2, 8)] * 4),
    ("minicache", {}, True, [(2, PROMPT)] * 4),  # layers 2-3 share one merged direction
    ("combined", {"heads_params": {"kv_heads": 1, **SVD_FAST}}, True, [(1, 8)] * 4),
    ("streaming_llm", {}, True, [(2, 8)] * 4),  # default budget: 20% of the prompt
    ("snapkv", {"budget_tokens": 12, "window": 4}, True, [(2, 12)] * 4),
    ("pyramidkv", {"budget_tokens": 12, "window": 4}, True, [(2, 20), (2, 15), (2, 9), (2, 4)]),
    ("tova", {}, True, [(2, 8)] * 4),
    ("knorm", {}, True, [(2, 8)] * 4),
    ("kivi", {"group_size": 8, "residual_length": 16}, True, [(2, PROMPT)] * 4),  # 32 quantized + 8 exact
    ("rtn", {"group_size": 8}, True, [(2, PROMPT)] * 4),
    ("combined", {"heads": None, "tokens": None, "bits": "kivi", "bits_params": {"group_size": 8}}, True,
     [(2, PROMPT)] * 4),
])
def test_every_layer_holds_the_expected_heads_and_tokens_after_prefill(name, params, rope, expected):
    model, tokenizer = tiny_llama("llama-gqa", seed=0)
    if not rope:
        model.model.rotary_emb.inv_freq.zero_()
    cache = _prefill(model, tokenizer, build_method(name, **params))
    assert cache.get_seq_length() == PROMPT
    assert [_stored(cache, i) for i in range(4)] == expected


def test_bloom_grouped_attention_fills_a_one_head_cache():
    config = BloomConfig(vocab_size=259, hidden_size=64, n_layer=2, n_head=4, bos_token_id=256,
                         eos_token_id=257, pad_token_id=258)
    torch.manual_seed(0)
    cache = _prefill(BloomForCausalLM(config).eval(), byte_tokenizer(), build_method("meanpool_gqa", kv_heads=1))
    assert [_stored(cache, i) for i in range(2)] == [(1, PROMPT)] * 2


class _ForgetfulCache(PlainCache):
    """Returns the new states to attention but stores nothing: what a cacheless attention looks like."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return key_states, value_states


def test_a_cache_left_empty_is_an_error_naming_the_method_and_what_it_held(monkeypatch):
    model, tokenizer = tiny_llama("llama-gqa", seed=0)
    method = build_method("full")
    monkeypatch.setattr(type(method), "new_cache", lambda self, model: _ForgetfulCache(config=model.config))
    with pytest.raises(CacheNotWrittenError) as error:
        _prefill(model, tokenizer, method)
    message = str(error.value)
    assert message.startswith("method=full: after prefilling 40 tokens the KV cache holds 0 bytes")
    assert "reports 0 tokens seen" in message and "never written" in message
