"""The quantized stream on preallocated slots: bit for bit the ``cat``-based stream it replaced (kept below as the
reference), with or without a reservation, across decode steps and R-boundary flushes; a reserved stream writes
every decode step into the same allocation; bytes are the allocated capacity."""

from __future__ import annotations

import pytest
import torch

from kvbench.cache.kivi import Quantization, QuantizedKVCache
from kvbench.cache.quantization import Quantized, dequantize, quantize
from kvbench.cache.quantized_stream import QuantizedStream

G = 8


class CatStream:
    """The stream as it was before slots (commit 10c7fd0, no eviction): ``cat`` to append, a clone to keep the rest."""

    def __init__(self, grouping, nbits, group_size, residual_length):
        self.grouping, self.nbits, self.group_size, self.residual_length = grouping, nbits, group_size, residual_length
        self.codes = self.scale = self.zero = self.residual = None

    def append(self, x):
        self.residual = x if self.residual is None else torch.cat([self.residual, x], dim=-2)
        if self.grouping == "channel":
            block = self.residual_length or self.group_size
            n = self.residual.shape[-2] // block * block
        else:
            n = max(0, self.residual.shape[-2] - self.residual_length)
        if n <= 0:
            return
        q = quantize(self.residual[..., :n, :], self.nbits, self.grouping, self.group_size)
        if self.codes is None:
            self.codes, self.scale, self.zero = q
        else:
            self.codes = torch.cat([self.codes, q.codes], dim=2)
            self.scale, self.zero = torch.cat([self.scale, q.scale], dim=2), torch.cat([self.zero, q.zero], dim=2)
        rest = self.residual[..., n:, :]
        self.residual = rest.clone() if rest.shape[-2] else None

    def read(self, new):
        parts = [] if self.codes is None else [dequantize(Quantized(self.codes, self.scale, self.zero), self.nbits,
                                                           self.grouping, self.group_size)]
        return torch.cat(parts + [x for x in (self.residual, new) if x is not None], dim=-2)


def _tokens(n, seed, heads=2, d=16, batch=2):
    return torch.randn(batch, heads, n, d, generator=torch.Generator().manual_seed(seed))


#: prefill, decode steps across several R boundaries, a multi-token forward, more steps
CHUNKS = [70] + [1] * 40 + [5] + [1] * 45


def _same(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


@pytest.mark.parametrize("nbits", [2, 4])
@pytest.mark.parametrize("grouping,residual", [("channel", 32), ("channel", 0), ("token", 32), ("token", 0)])
@pytest.mark.parametrize("reserved", [False, True])
def test_the_slot_stream_equals_the_cat_stream_bit_for_bit_at_every_step(nbits, grouping, residual, reserved):
    stream, reference = QuantizedStream(grouping, nbits, G, residual), CatStream(grouping, nbits, G, residual)
    if reserved:
        stream.reserve(sum(CHUNKS))
    flushes = 0
    for step, n in enumerate(CHUNKS):
        x = _tokens(n, seed=step)
        assert torch.equal(stream.read(x), reference.read(x)), f"step {step}: what attention reads differs"
        before = stream.quantized_tokens
        stream.append(x)
        reference.append(x)
        flushes += stream.quantized_tokens > before + n  # quantized more than this forward's tokens: a flush
        for name in ("codes", "scale", "zero", "residual"):
            assert _same(getattr(stream, name), getattr(reference, name)), f"step {step}: {name} differs"
    if grouping == "channel" and residual:
        assert flushes >= 2  # the schedule crossed R boundaries during decoding


def _buffers(cache):
    return [a.data_ptr() for layer in cache.layers for s in (layer.key_stream, layer.value_stream)
            for store in s.stores() for a in store.arrays if a is not None]


@pytest.mark.parametrize("key_grouping,residual", [("channel", 32), ("token", 0)])  # KIVI, RTN
def test_a_reserved_cache_writes_every_decode_step_into_the_same_allocation(key_grouping, residual):
    cache = QuantizedKVCache(2, Quantization(2, G, residual, key_grouping, "token"))
    cache.reserve(70 + 80)
    for layer in range(2):
        cache.update(_tokens(70, seed=layer), _tokens(70, seed=layer + 5), layer)
    buffers, held = _buffers(cache), cache.nbytes()
    for step in range(80):  # 80 steps: the keys' residual fills and flushes R = 32 tokens twice
        for layer in range(2):
            cache.update(_tokens(1, seed=100 + step), _tokens(1, seed=200 + step), layer)
        assert _buffers(cache) == buffers, f"decode step {step} reallocated"
    assert cache.nbytes() == held  # the capacity, fixed at the first forward
    assert cache.layers[0].key_stream.quantized_tokens == (150 // 32 * 32 if residual else 150)


def test_bytes_are_the_reserved_capacity_filled_or_not():
    stream = QuantizedStream("channel", 2, G, 32)
    stream.reserve(150)
    stream.append(_tokens(40, seed=0, batch=1))  # 32 quantized, 8 exact; room for 128 codes and 31 exact tokens
    d, heads, elem = 16, 2, 4
    codes, scales = 128 * heads * d * 2 // 8, 2 * (128 // G) * heads * d * elem
    assert stream.nbytes() == codes + scales + 31 * heads * d * elem
