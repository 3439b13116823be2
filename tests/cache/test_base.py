"""The cache contract: every cache kvbench builds reports exactly the bytes of the tensors it holds."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import QuantizedCache, QuantizedLayer

from kvbench.cache import cache_nbytes
from kvbench.cache.base import KVCache
from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import build_method
from kvbench.models import tiny_llama
from tests.conftest import random_ids

SVD_FAST = dict(calibration_sequences=2, calibration_length=64, reuse_calibration=False)


def held_tensors(obj, seen=None) -> dict[int, torch.Tensor]:
    """Every tensor reachable from ``obj`` through attributes, lists, tuples and dicts (by identity)."""
    seen = set() if seen is None else seen
    found: dict[int, torch.Tensor] = {}
    if id(obj) in seen:
        return found
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        found[id(obj)] = obj
    elif isinstance(obj, (list, tuple, set)):
        for item in obj:
            found.update(held_tensors(item, seen))
    elif isinstance(obj, dict):
        for item in obj.values():
            found.update(held_tensors(item, seen))
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        for item in vars(obj).values():
            found.update(held_tensors(item, seen))
    return found


@pytest.mark.parametrize("name, params", [
    ("full", {}), ("meanpool_gqa", {"kv_heads": 1}), ("svd_gqa", {"kv_heads": 1, **SVD_FAST}), ("h2o", {}),
    ("minicache", {"start_layer": 1}), ("minicache", {"start_layer": 1, "norm": "per_head", "gamma": 0.3}),
    ("combined", {"heads_params": {"kv_heads": 1, **SVD_FAST}, "layers_params": {"start_layer": 1}}),
    ("combined", {"heads": None, "layers_params": {"start_layer": 1, "norm": "per_head", "retention": "range"}}),
    ("streaming_llm", {}), ("snapkv", {"budget_tokens": 12, "window": 4}), ("pyramidkv", {"budget_tokens": 12, "window": 4}),
    ("tova", {}), ("tova", {"heads": "group"}), ("knorm", {}),
    ("combined", {"heads": None, "layers": None, "tokens": "pyramidkv", "tokens_params": {"budget_tokens": 12, "window": 4}}),
    ("kivi", {"group_size": 8, "residual_length": 16}), ("kivi", {"group_size": 8, "residual_length": 0, "nbits": 4}),
    ("rtn", {"group_size": 8}), ("rtn", {"group_size": 16, "nbits": 2}),
    ("combined", {"heads": None, "tokens": None, "layers_params": {"start_layer": 1}, "bits": "kivi",
                  "bits_params": {"group_size": 8, "residual_length": 16}}),
    ("combined", {"heads": "meanpool_gqa", "tokens": None, "layers_params": {"start_layer": 1, "norm": "per_head"},
                  "bits": "rtn", "bits_params": {"group_size": 8}}),
])
def test_nbytes_equals_the_bytes_of_every_tensor_the_cache_holds(name, params):
    model, tokenizer = tiny_llama("llama-gqa", seed=0)
    method = build_method(name, **params)
    converted = method.apply(copy.deepcopy(model), tokenizer)
    protocol = CompressionProtocol(converted, method, model.config)
    ids = random_ids(50)[0].tolist()
    cache = protocol.prefill(ids[:40])
    with torch.no_grad():
        for token in ids[40:]:  # decode steps: retention, eviction and merging of new tokens
            protocol.forward(cache, [token])
    assert isinstance(cache, KVCache)
    tensors = held_tensors(cache)
    assert tensors, "the cache holds no tensor"
    assert cache.nbytes() == sum(t.element_size() * t.nelement() for t in tensors.values())
    assert cache_nbytes(cache) == cache.nbytes()


def test_a_plain_transformers_cache_is_counted_and_a_quantized_one_refused():
    model, _ = tiny_llama("llama-gqa", seed=0)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=random_ids(10), cache=cache)
    assert cache_nbytes(cache) == 2 * 4 * 2 * 10 * 16 * 4  # K and V, 4 layers, 2 heads, 10 tokens, dim 16, fp32
    # transformers' quantized layers subclass DynamicLayer but hold packed codes besides keys/values:
    # counting their keys and values would under-count, so kvbench refuses to count them at all
    class PackedLayer(QuantizedLayer):
        def _quantize(self, tensor, axis):
            return tensor

        def _dequantize(self, q_tensor):
            return q_tensor

    quantized = QuantizedCache.__new__(QuantizedCache)
    quantized.layers = [PackedLayer.__new__(PackedLayer)]
    with pytest.raises(TypeError, match="cannot count the bytes of a PackedLayer"):
        cache_nbytes(quantized)
