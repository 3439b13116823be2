"""Replacement attentions take the cache under every name transformers has used, and refuse unknown ones."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BloomConfig, BloomForCausalLM, DynamicCache

from kvbench.methods import build_method
from kvbench.models import byte_tokenizer
from kvbench.surgery.attention_cache import UnknownCacheArgumentError, cache_argument
from kvbench.surgery.bloom import BloomGroupedAttention
from kvbench.surgery.svd_attention import SVDRopeAttention

FAST = dict(calibration_sequences=2, calibration_length=64, reuse_calibration=False)


def _svd_attention(tiny_gqa):
    model, tok = tiny_gqa
    converted = build_method("svd_gqa", kv_heads=1, **FAST).apply(copy.deepcopy(model), tok)
    attn = converted.model.layers[0].self_attn
    assert isinstance(attn, SVDRopeAttention)
    hidden = torch.randn(1, 5, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    positions = converted.model.rotary_emb(hidden, torch.arange(5)[None])
    return converted, attn, hidden, positions


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_svd_attention_updates_a_cache_passed_under_either_known_name(tiny_gqa, name):
    converted, attn, hidden, positions = _svd_attention(tiny_gqa)
    cache = DynamicCache(config=converted.config)
    attn(hidden, position_embeddings=positions, attention_mask=None, **{name: cache})
    assert cache.layers[0].keys.shape == (1, 1, 5, 16)


def test_svd_attention_given_a_cache_under_an_unknown_name_raises_instead_of_running_cacheless(tiny_gqa):
    converted, attn, hidden, positions = _svd_attention(tiny_gqa)
    cache = DynamicCache(config=converted.config)
    with pytest.raises(UnknownCacheArgumentError, match=r"SVDRopeAttention received the KV cache as `kv_cache`"):
        attn(hidden, position_embeddings=positions, attention_mask=None, kv_cache=cache)
    assert not cache.layers[0].is_initialized


def test_bloom_grouped_attention_given_a_cache_under_an_unknown_name_raises():
    config = BloomConfig(vocab_size=259, hidden_size=64, n_layer=1, n_head=4, bos_token_id=256,
                         eos_token_id=257, pad_token_id=258)
    model = BloomForCausalLM(config).eval()
    model = build_method("meanpool_gqa", kv_heads=2).apply(model, byte_tokenizer())
    attn = model.transformer.h[0].self_attention
    assert isinstance(attn, BloomGroupedAttention)
    hidden = torch.randn(1, 3, 64)
    alibi = torch.zeros(4, 1, 3)
    with pytest.raises(UnknownCacheArgumentError, match="`kv_states`"):
        attn(hidden, hidden, alibi, None, kv_states=DynamicCache(config=model.config))


def test_two_different_caches_at_once_are_refused():
    a, b = DynamicCache(), DynamicCache()
    with pytest.raises(UnknownCacheArgumentError, match="two different caches"):
        cache_argument("X", {"cache": a, "past_key_values": b}, {})
    assert cache_argument("X", {"cache": a, "past_key_values": a}, {"use_cache": True}) is a
    assert cache_argument("X", {"cache": None}, {"position_ids": torch.zeros(1)}) is None
