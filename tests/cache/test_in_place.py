"""Eviction in place: the newest token takes the evicted slot, yet every method keeps the same tokens as the
gather layout (slots in logical order), per layer and KV head; a decode step reallocates nothing."""

from __future__ import annotations

import copy

import pytest
import torch

from kvbench.cache import attention_scores
from kvbench.cache.base import EvictingLayer
from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import build_method
from tests.conftest import random_ids

pytestmark = pytest.mark.usefixtures("no_grad")

#: Every token-eviction method (and kivi under eviction), at budgets that evict from the tiny model's 40-token prompt.
CASES = {
    "h2o": dict(heavy_ratio=0.2, recent_ratio=0.1),
    "h2o_local": dict(heavy_ratio=0.0, recent_ratio=0.25),
    "snapkv": dict(budget_ratio=0.4, window=8),
    "tova": dict(budget_ratio=0.3),
    "tova_group": dict(budget_ratio=0.3, heads="group"),
    "knorm": dict(budget_ratio=0.3),
    "streaming_llm": dict(budget_ratio=0.3, sink_tokens=3),
    "pyramidkv": dict(budget_ratio=0.4, window=8, beta=2),
    "combined_kivi": dict(heads=None, layers=None, tokens="h2o", bits="kivi",
                          bits_params=dict(group_size=4, residual_length=4)),
}


def build(case: str):
    name = {"h2o_local": "h2o", "tova_group": "tova", "combined_kivi": "combined"}.get(case, case)
    return build_method(name, **CASES[case])


def kept_after_decoding(model, case: str, in_place: bool, monkeypatch) -> list[torch.Tensor]:
    """Kept logical positions (sorted) of every layer after a batch-2 prefill, 6 decode steps, a 3-token forward
    (a multi-token forward after in-place evictions) and 4 more steps."""
    monkeypatch.setattr(EvictingLayer, "in_place", in_place)
    method = build(case)
    protocol = CompressionProtocol(method.apply(copy.deepcopy(model)), method, model.config)
    cache = protocol.prefill_batch([random_ids(40, seed=s)[0].tolist() for s in (0, 1)])
    for step, width in enumerate([1] * 6 + [3] + [1] * 4):
        protocol.forward_batch(cache, random_ids(2 * width, seed=10 + step).view(2, width))
        method.compress(cache)
    return [layer.kept_positions() for layer in cache.layers]


@pytest.mark.parametrize("case", sorted(CASES))
def test_in_place_eviction_keeps_the_same_tokens_as_the_gather_layout_per_layer_and_head(tiny_gqa, case, monkeypatch):
    model, _ = tiny_gqa
    gathered = kept_after_decoding(model, case, False, monkeypatch)
    in_place = kept_after_decoding(model, case, True, monkeypatch)
    for layer, (want, got) in enumerate(zip(gathered, in_place)):
        assert torch.equal(want, got), f"{case}: layer {layer} keeps other tokens in place"


@pytest.mark.parametrize("case", ["h2o", "h2o_local", "tova", "streaming_llm"])
def test_decode_steps_that_evict_write_into_the_same_allocation(tiny_gqa, case):
    model, _ = tiny_gqa
    method = build(case)
    protocol = CompressionProtocol(method.apply(copy.deepcopy(model)), method, model.config)
    cache = protocol.prefill_batch([random_ids(40, seed=s)[0].tolist() for s in (0, 1)])
    protocol.forward_batch(cache, random_ids(2, seed=5).view(2, 1))  # the one reallocation: budget + 1 slots
    buffers = [layer.store.arrays[0] for layer in cache.layers]
    stored = cache.layers[0].stored_tokens()
    for step in range(5):
        protocol.forward_batch(cache, random_ids(2, seed=6 + step).view(2, 1))
        assert cache.layers[0].stored_tokens() == stored  # evicting: the budget holds
    assert all(layer.store.arrays[0] is buffer for layer, buffer in zip(cache.layers, buffers))


@pytest.mark.parametrize("case,budget", [("h2o_local", 10), ("streaming_llm", 12)])
def test_rules_that_read_no_attention_compute_no_scores(tiny_gqa, case, budget, monkeypatch):
    model, _ = tiny_gqa
    method = build(case)
    protocol = CompressionProtocol(method.apply(copy.deepcopy(model)), method, model.config)

    def refuse(*args, **kwargs):
        raise AssertionError(f"{case} asked for attention scores")

    monkeypatch.setattr(attention_scores, "request_scores", refuse)
    monkeypatch.setattr("kvbench.cache.h2o.request_scores", refuse)
    cache = protocol.prefill_batch([random_ids(40)[0].tolist()])
    for step in range(3):
        protocol.forward_batch(cache, random_ids(1, seed=step).view(1, 1))
    assert cache.layers[0].stored_tokens() == budget
