"""MiniCache pairs on quantized storage: directions follow the bits rule, retained tokens are quantized per token once
they leave the full-precision window (exact before), norms stay exact, and the pair restores exactly that."""

from __future__ import annotations

import copy

import pytest
import torch

from kvbench.cache.combined import Merging
from kvbench.cache.kivi import Quantization, QuantizedLayer
from kvbench.cache.merging import unflatten_index
from kvbench.cache.quantization import dequantize, quantize
from kvbench.cache.quantized_merging import QuantizedMergedPairCache, QuantizedMergedStore

G, R = 8, 16


def _tokens(n, seed=0, heads=2, d=16):
    return torch.randn(1, heads, n, d, generator=torch.Generator().manual_seed(seed))


def _round_trip(row: torch.Tensor) -> torch.Tensor:
    """One retained row quantized per token on its own (groups of G channels, 4 bits)."""
    x = row.reshape(1, 1, -1, row.shape[-1])
    return dequantize(quantize(x, 4, "token", G), 4, "token", G).view(row.shape)


@pytest.mark.parametrize("per_head", [False, True])
def test_retained_tokens_are_quantized_once_they_leave_the_window_and_the_rest_is_the_quantized_direction(per_head):
    store = QuantizedMergedStore(0.6, 0.25, "top_fraction", per_head, Quantization(4, G, R).stream("keys"))
    xa, xb = _tokens(45, seed=1), _tokens(45, seed=2)
    store.step(xa[..., :40, :], xb[..., :40, :])
    for i in range(40, 45):  # decoding: new tokens merged one at a time
        store.step(xa[..., i:i + 1, :], xb[..., i:i + 1, :])
    assert store.stream.quantized_tokens == 32 and store.length == 45
    restored = store.restore(0)
    b, g, n = unflatten_index(store.kept_idx, 1, 2 if per_head else 1)
    quantized = n < 32
    assert store.retained_quantized == int(quantized.sum()) > 0 and (~quantized).any()
    assert quantized[:store.retained_quantized].all()  # quantized ones are listed first
    for bi, gi, ni in zip(b.tolist(), g.tolist(), n.tolist()):
        heads = slice(gi, gi + 1) if per_head else slice(None)
        exact = xa[bi, heads, ni, :]
        want = _round_trip(exact) if ni < 32 else exact
        torch.testing.assert_close(restored[bi, heads, ni, :], want, rtol=1e-6, atol=1e-6)
    merged = torch.ones(1, 2 if per_head else 1, 45, dtype=torch.bool)
    merged[b, g, n] = False
    direction = store.stream.read() * store.norm_a
    if not per_head:
        merged = merged.expand(1, 2, 45)
    torch.testing.assert_close(restored[merged], direction[merged])
    assert store.norm_a.dtype == torch.float32 and store.norm_a.shape[-2] == 45  # norms: exact, one per token


def test_a_quantized_minicache_cache_quantizes_every_layer_and_pair_and_deep_copies():
    cache = QuantizedMergedPairCache(4, Merging(start_layer=1, gamma=0.1), Quantization(4, G, R))
    assert isinstance(cache.layers[0], QuantizedLayer) and isinstance(cache.layers[3], QuantizedLayer)
    for n in (50, 1, 1):
        for layer in range(4):
            cache.update(_tokens(n, seed=layer), _tokens(n, seed=10 + layer), layer)
        cache.compress()
    pair = cache.pairs[0]
    assert pair.keys.stream.quantized_tokens == 48 and pair.values.stream.quantized_tokens == 52 - R
    assert pair.keys.direction is None and pair.keys.kept_idx.numel() == 6  # ⌈0.1·52⌉ retained
    assert cache.layers[0].key_stream.quantized_tokens == 48 and cache.get_seq_length() == 52
    copied = copy.deepcopy(cache)
    assert copied.nbytes() == cache.nbytes() and torch.equal(copied.pairs[0].keys.restore(1), pair.keys.restore(1))
