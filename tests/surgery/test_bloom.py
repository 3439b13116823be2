"""BLOOM (ALiBi, fused query_key_value): exact unfusing, then both GQA conversions on the fused-keys path."""

import copy

import pytest
import torch
from transformers import BloomConfig, BloomForCausalLM, DynamicCache

from kvbench.methods import build_method
from kvbench.models import byte_tokenizer
from kvbench.surgery.bloom import BloomGroupedAttention, unfuse_qkv
from kvbench.surgery.svd_attention import has_rope
from tests.conftest import random_ids

FAST = dict(calibration_sequences=4, calibration_length=64)


@pytest.fixture
def tiny_bloom():
    config = BloomConfig(vocab_size=259, hidden_size=64, n_layer=2, n_head=4, initializer_range=0.2,
                         bos_token_id=256, eos_token_id=257, pad_token_id=258)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BloomForCausalLM(config).eval()
    return model, byte_tokenizer()


def _duplicate_kv_heads(model):
    """Heads 1 and 3 get the key/value weights of heads 0 and 2: pairs of identical KV heads."""
    with torch.no_grad():
        for block in model.transformer.h:
            qkv = block.self_attention.query_key_value
            w, b = qkv.weight.view(4, 3, 16, 64), qkv.bias.view(4, 3, 16)
            w[[1, 3], 1:] = w[[0, 2], 1:]
            b[[1, 3], 1:] = b[[0, 2], 1:]
    return model


def test_unfused_attention_reproduces_bloom_exactly(tiny_bloom):
    model, _ = tiny_bloom
    reference = model(random_ids(25)).logits
    unfused = unfuse_qkv(copy.deepcopy(model))
    assert isinstance(unfused.transformer.h[0].self_attention, BloomGroupedAttention)
    torch.testing.assert_close(unfused(random_ids(25)).logits, reference, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("method", ["meanpool_gqa", "svd_gqa"])
def test_duplicate_head_bloom_converted_to_half_the_heads_reproduces_logits(tiny_bloom, method, tmp_path,
                                                                            monkeypatch):
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path))
    model, tok = tiny_bloom
    assert not has_rope(model)  # ALiBi: rope=auto takes the fused path
    _duplicate_kv_heads(model)
    reference = model(random_ids(25)).logits
    params = FAST if method == "svd_gqa" else {}
    converted = build_method(method, kv_heads=2, **params).apply(copy.deepcopy(model), tok)
    cache = DynamicCache(config=converted.config)
    assert (converted(random_ids(25), cache=cache).logits - reference).abs().max() <= 1e-4
    assert all(layer.keys.shape == (1, 2, 25, 16) for layer in cache.layers)
    assert converted.generate(random_ids(10), max_new_tokens=4, do_sample=False).shape == (1, 14)
    # without duplicated heads the same conversion is lossy (the check above can fail)
    lossy = build_method(method, kv_heads=1, **params).apply(copy.deepcopy(model), tok)
    assert (lossy(random_ids(25)).logits - reference).abs().max() > 1e-3


def test_forcing_the_rotary_path_on_an_alibi_model_is_a_clear_error(tiny_bloom):
    from kvbench.methods import MethodConfigError

    model, tok = tiny_bloom
    with pytest.raises(MethodConfigError, match="has no rotary embedding"):
        build_method("svd_gqa", kv_heads=2, rope="rotary", **FAST).apply(model, tok)
