"""meanpool_gqa: identity when g = h, exact on duplicated heads, real g-head cache, clear errors."""

import copy
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from kvbench.cache import cache_nbytes, full_cache_nbytes
from kvbench.methods import MethodConfigError, build_method
from kvbench.models import tiny_llama_config
from kvbench.surgery.heads import expand_kv_heads
from tests.conftest import method_from_config, random_ids


@pytest.mark.parametrize("fixture, kv_heads", [("tiny_gqa", 2), ("tiny_mha", 4)])
def test_kv_heads_equal_to_the_models_own_reproduces_logits(request, fixture, kv_heads):
    model, tok = request.getfixturevalue(fixture)
    reference = model(random_ids(30)).logits
    converted = build_method("meanpool_gqa", kv_heads=kv_heads).apply(copy.deepcopy(model), tok)
    assert (converted(random_ids(30)).logits - reference).abs().max() <= 1e-4


@pytest.mark.parametrize("rope", [True, False])
def test_duplicate_head_model_converted_back_reproduces_original_logits(tiny_gqa, rope):
    model, tok = tiny_gqa
    if not rope:
        model.model.rotary_emb.inv_freq.zero_()  # a position-free (NoPE) variant
    reference = model(random_ids(30)).logits
    mha = expand_kv_heads(copy.deepcopy(model))  # 4 KV heads, pairs of identical heads
    converted = build_method("meanpool_gqa", kv_heads=2).apply(mha, tok)
    assert (converted(random_ids(30)).logits - reference).abs().max() <= 1e-4


def test_generate_works_and_the_cache_holds_g_heads_per_layer(tiny_mha):
    model, tok = tiny_mha
    converted = build_method("meanpool_gqa", kv_heads=1).apply(model, tok)
    cache = DynamicCache(config=converted.config)
    out = converted.generate(random_ids(12), cache=cache, max_new_tokens=6, do_sample=False)
    assert out.shape == (1, 18)
    assert all(layer.keys.shape == (1, 1, 17, 16) and layer.values.shape == (1, 1, 17, 16) for layer in cache.layers)


def test_chunked_forward_with_dynamic_cache_matches_one_forward_and_bytes_are_g_over_h(tiny_mha):
    model, tok = tiny_mha
    full_bytes = full_cache_nbytes(model.config, 40, torch.float32)
    converted = build_method("meanpool_gqa", kv_heads=2).apply(model, tok)
    ids = random_ids(40)
    one = converted(ids).logits
    cache = DynamicCache(config=converted.config)
    first = converted(input_ids=ids[:, :25], cache=cache, use_cache=True).logits
    rest = converted(input_ids=ids[:, 25:], cache=cache, use_cache=True).logits
    torch.testing.assert_close(torch.cat([first, rest], 1), one, atol=1e-5, rtol=1e-5)
    assert cache_nbytes(cache) * 4 == full_bytes * 2  # g/h = 2/4 of the original model's full cache


@pytest.mark.parametrize("kv_heads", [0, -1])
def test_non_positive_kv_heads_is_rejected_at_construction(kv_heads):
    with pytest.raises(MethodConfigError, match=f"method.kv_heads={kv_heads} must be a positive"):
        build_method("meanpool_gqa", kv_heads=kv_heads)


@pytest.mark.parametrize("kv_heads, message", [(3, "must divide the model's 4 KV heads"), (8, "is larger than")])
def test_kv_heads_that_do_not_fit_the_model_are_rejected_before_loading_weights(kv_heads, message):
    method = build_method("meanpool_gqa", kv_heads=kv_heads)
    with pytest.raises(MethodConfigError, match=message):
        method.check_model(tiny_llama_config("llama-mha"))


def test_hydra_config_composes_to_a_working_method(tiny_gqa):
    method = method_from_config("method=meanpool_gqa")
    assert (method.name, method.kv_heads) == ("meanpool_gqa", 1)
    model, tok = tiny_gqa
    method.check_model(model.config)
    assert method.apply(model, tok).config.num_key_value_heads == 1
