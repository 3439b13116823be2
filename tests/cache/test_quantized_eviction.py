"""Eviction in place from quantized streams keeps what the gather path (``keep``) keeps: the same tokens per layer
and KV head, the same tokens quantized, every stored value bit for bit; only slot order differs. A decode step
moves O(R) slots, and unused channel groups do not pile up."""

from __future__ import annotations

import pytest
import torch

from kvbench.cache.base import EvictingLayer
from kvbench.cache.kivi import Quantization

G = 4
#: a prefill, one-token decode steps over the budget, a 3-token forward (a gather of 3), more steps
SCHEDULE = [24] + [1] * 30 + [3] + [1] * 30


def _layer(quantization: Quantization, in_place: bool) -> EvictingLayer:
    layer = EvictingLayer()
    layer.in_place = in_place
    layer.quantize_with(quantization)
    return layer


def _run(quantization: Quantization, in_place: bool, budget: int, seed: int):
    """Seeded keys/values through ``update``; after each forward evict down to ``budget`` by a seeded priority per
    (row, logical position) -- the same decision whatever the slot order. Returns the layer after every forward."""
    g = torch.Generator().manual_seed(seed)
    total = sum(SCHEDULE)
    priority = torch.rand(2, 2, total, generator=g)  # [batch, kv heads, position]
    layer = _layer(quantization, in_place)
    for n in SCHEDULE:
        layer.update(torch.randn(2, 2, n, 8, generator=g), torch.randn(2, 2, n, 8, generator=g))
        stored = layer.stored_tokens()
        if stored > budget:
            layer.evict_lowest(priority.gather(2, layer.positions.long()), stored - budget)
        yield layer


def _by_position(layer: EvictingLayer):
    """Kept positions, and the stored (dequantized) keys and values, in logical order per row."""
    order = layer.positions.argsort(dim=-1)
    along = order[..., None].expand(-1, -1, -1, 8)
    keys, values = layer.key_stream.read(), layer.value_stream.read()
    return layer.positions.gather(2, order), keys.gather(2, along), values.gather(2, along)


@pytest.mark.parametrize("quantization", [Quantization(2, G, 8), Quantization(4, G, 0, "token", "token"),
                                          Quantization(2, G, 0), Quantization(4, G, 12)],
                         ids=["kivi", "rtn", "kivi_r0", "kivi4_r12"])
@pytest.mark.parametrize("seed", [0, 1])
def test_in_place_eviction_keeps_the_gather_paths_tokens_codes_and_values_bit_for_bit(quantization, seed):
    budget = 14
    steps = zip(_run(quantization, False, budget, seed), _run(quantization, True, budget, seed))
    for step, (gathered, in_place) in enumerate(steps):
        for name, want, got in zip(("positions", "keys", "values"), _by_position(gathered), _by_position(in_place)):
            assert torch.equal(want, got), f"step {step}: {name} differ"
        for stream in ("key_stream", "value_stream"):
            assert (getattr(gathered, stream).quantized_tokens == getattr(in_place, stream).quantized_tokens), step


def test_a_decode_step_evicts_without_rebuilding_the_codes():
    layer = list(_run(Quantization(2, G, 8), True, 14, seed=0))[-1]
    # one slot per quantized token: the codes of both streams, the keys' group index, the values' token scales
    stores = [layer.key_stream.coded, layer.key_stream.groups, layer.value_stream.coded, layer.value_stream.scales]
    before = [a.data_ptr() for s in stores for a in s.arrays]
    g = torch.Generator().manual_seed(9)
    for _ in range(6):
        layer.update(torch.randn(2, 2, 1, 8, generator=g), torch.randn(2, 2, 1, 8, generator=g))
        layer.evict_lowest(torch.rand(2, 2, layer.stored_tokens(), generator=g), 1)
        assert [a.data_ptr() for s in stores for a in s.arrays] == before
    assert layer.stored_tokens() == 14


def test_channel_groups_no_kept_token_uses_are_dropped_in_place():
    layer = list(_run(Quantization(2, G, 0), True, 14, seed=1))[-1]  # R = 0: a key group of G every G tokens
    stream = layer.key_stream
    used = max(len(torch.unique(row)) for row in stream.group.reshape(-1, stream.group.shape[-1]))
    assert stream.scales.filled <= 2 * stream.compacted_groups + 4 and used <= stream.scales.filled
    assert stream.scales.filled < sum(SCHEDULE) // G  # not every group ever made
