"""The cache contract: every cache kvbench builds reports exactly the bytes of the tensors it holds."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import QuantizedCache, QuantizedLayer

from kvbench.cache import cache_nbytes
from kvbench.methods import METHODS, Method
from kvbench.models import tiny_llama
from tests.conftest import random_ids
from tests.contracts import assert_cache_counts_every_tensor, byte_contract_cases

SVD_FAST = dict(calibration_sequences=2, calibration_length=64, reuse_calibration=False)
#: Parameter sets per method: settings that fit the tiny model (or keep the test fast), and variants worth their own
#: case. Every registered method is checked whether it is listed here or not (unlisted: its defaults).
PARAMS = {
    "meanpool_gqa": [{"kv_heads": 1}],
    "svd_gqa": [{"kv_heads": 1, **SVD_FAST}],
    "minicache": [{"start_layer": 1}, {"start_layer": 1, "norm": "per_head", "gamma": 0.3}],
    "combined": [
        {"heads_params": {"kv_heads": 1, **SVD_FAST}, "layers_params": {"start_layer": 1}},
        {"heads": None, "layers_params": {"start_layer": 1, "norm": "per_head", "retention": "range"}},
        {"heads": None, "layers": None, "tokens": "pyramidkv", "tokens_params": {"budget_tokens": 12, "window": 4}},
        {"heads": None, "tokens": None, "layers_params": {"start_layer": 1}, "bits": "kivi",
         "bits_params": {"group_size": 8, "residual_length": 16}},
        {"heads": "meanpool_gqa", "tokens": None, "layers_params": {"start_layer": 1, "norm": "per_head"},
         "bits": "rtn", "bits_params": {"group_size": 8}},
    ],
    "snapkv": [{"budget_tokens": 12, "window": 4}],
    "pyramidkv": [{"budget_tokens": 12, "window": 4}],
    "tova": [{}, {"heads": "group"}],
    "adakv": [{"budget_tokens": 12, "window": 4}, {"budget_tokens": 12, "window": 4, "layout": "masked"}],
    "expected_attention": [{"budget_tokens": 10}, {"budget_tokens": 10, "allocation": "authors"}],
    "kvzip": [{"budget_tokens": 10, "chunk": 16}],
    "duo_attention": [{"sink_tokens": 2, "recent_tokens": 8, "calibration_sequences": 1, "calibration_length": 32,
                       "positions": 64, "reuse_calibration": False}],
    "kivi": [{"group_size": 8, "residual_length": 16}, {"group_size": 8, "residual_length": 0, "nbits": 4}],
    "rtn": [{"group_size": 8}, {"group_size": 16, "nbits": 2}],
}


@pytest.mark.parametrize("name, params", byte_contract_cases(PARAMS))
def test_nbytes_equals_the_bytes_of_every_tensor_the_cache_holds(name, params):
    assert_cache_counts_every_tensor(name, params)


def test_every_registered_method_is_a_byte_contract_case_and_stale_entries_fail():
    assert {name for name, _ in byte_contract_cases(PARAMS)} == set(METHODS)
    with pytest.raises(KeyError, match="unregistered method.*: no_such_method"):
        byte_contract_cases({"no_such_method": [{}]})


def test_a_method_exempt_from_the_byte_contract_is_skipped_with_its_reason(monkeypatch):
    class Exempt(Method):
        cache_contract_exempt = "needs a CUDA kernel"

    monkeypatch.setitem(METHODS, "exempt_toy", Exempt)
    with pytest.raises(pytest.skip.Exception, match="method=exempt_toy is exempt from the cache contract: needs a CUDA"):
        assert_cache_counts_every_tensor("exempt_toy", {})


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
