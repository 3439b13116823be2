"""KIVI's streaming policy in the quantized cache: which tokens are quantized after T tokens, that a forward sees
its own tokens exactly, that later queries see the stored codes, and bytes by the closed-form formula."""

from __future__ import annotations

import pytest
import torch

from kvbench.cache.kivi import Quantization, QuantizedKVCache, QuantizedLayer, QuantizedStream
from kvbench.cache.quantization import dequantize, quantize, quantized_nbytes

G, R = 8, 32


def _tokens(n, seed=0, heads=2, d=16):
    return torch.randn(1, heads, n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("chunks", [[100], [70] + [1] * 40, [20] * 7, [31, 1, 1, 64, 3], [5] * 3])
def test_after_T_tokens_keys_0_to_floor_T_over_R_times_R_and_values_0_to_T_minus_R_are_quantized(chunks):
    keys, values = QuantizedStream("channel", 2, G, R), QuantizedStream("token", 2, G, R)
    total = 0
    for i, n in enumerate(chunks):
        x = _tokens(n, seed=i)
        keys.append(x)
        values.append(x)
        total += n
        assert (keys.length, values.length) == (total, total)
        assert keys.quantized_tokens == total // R * R
        assert values.quantized_tokens == max(0, total - R)


def test_decoding_quantizes_the_key_residual_all_at_once_when_it_reaches_R_tokens():
    keys = QuantizedStream("channel", 2, G, R)
    keys.append(_tokens(70))  # prefill: 64 quantized, the last 70 mod 32 = 6 exact
    history = []
    for step in range(30):
        keys.append(_tokens(1, seed=100 + step))
        history.append(keys.quantized_tokens)
    assert history == [64] * 25 + [96] * 5  # the 96th token completes the residual: 32 tokens = 4 groups at once
    assert keys.scale.shape[2] == 96 // G


def test_a_zero_residual_quantizes_every_complete_key_group_and_every_value():
    keys, values = QuantizedStream("channel", 4, G, 0), QuantizedStream("token", 4, G, 0)
    for i, n in enumerate([13, 1, 2]):
        keys.append(_tokens(n, seed=i))
        values.append(_tokens(n, seed=i))
    assert keys.quantized_tokens == 16 and values.quantized_tokens == 16
    keys.append(_tokens(3))
    assert keys.quantized_tokens == 16 and keys.residual.shape[-2] == 3  # a channel group needs G tokens


def test_a_forward_sees_its_own_tokens_exactly_and_later_forwards_see_the_stored_codes():
    layer = QuantizedLayer(Quantization(nbits=2, group_size=G, residual_length=R))
    k, v = _tokens(80, seed=1), _tokens(80, seed=2)
    got_k, got_v = layer.update(k, v)
    assert torch.equal(got_k, k) and torch.equal(got_v, v)  # the prefill's attention is exact
    k2, v2 = _tokens(3, seed=3), _tokens(3, seed=4)
    got_k, got_v = layer.update(k2, v2)
    want_k = torch.cat([dequantize(quantize(k[..., :64, :], 2, "channel", G), 2, "channel", G), k[..., 64:, :], k2], -2)
    want_v = torch.cat([dequantize(quantize(v[..., :48, :], 2, "token", G), 2, "token", G), v[..., 48:, :], v2], -2)
    assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)
    assert not torch.equal(got_k[..., :64, :], k[..., :64, :])  # really quantized
    assert layer.get_seq_length() == 83 and layer.stored_tokens() == 83


@pytest.mark.parametrize("nbits", [2, 4])
@pytest.mark.parametrize("key_grouping,residual", [("channel", R), ("token", 0)])  # KIVI, RTN
def test_nbytes_is_codes_plus_scales_plus_zero_points_plus_the_residual(nbits, key_grouping, residual):
    quant = Quantization(nbits, G, residual, key_grouping, "token")
    cache = QuantizedKVCache(3, quant)
    T = 0
    for n in (90, 1, 1, 1, 40):
        for layer in range(3):
            cache.update(_tokens(n, seed=layer).half(), _tokens(n, seed=layer + 7).half(), layer)
        T += n
    kq = T // R * R if key_grouping == "channel" else T
    vq = max(0, T - residual)
    per_layer = sum(quantized_nbytes(nq, 2, 16, nbits, G, elem=2) + 2 * 16 * (T - nq) * 2 for nq in (kq, vq))
    assert cache.nbytes() == 3 * per_layer


# -- eviction from a quantized stream (combined with tokens and bits) --------------------------------------
def _ascending(n, k, rows=(1, 2), seed=0):
    """Per row, k of n slots in ascending order (rows keep different tokens)."""
    g = torch.Generator().manual_seed(seed)
    picks = [torch.randperm(n, generator=g)[:k].sort().values for _ in range(rows[0] * rows[1])]
    return torch.stack(picks).view(*rows, k)


@pytest.mark.parametrize("nbits", [2, 4])
@pytest.mark.parametrize("grouping,residual", [("channel", R), ("channel", 0), ("token", R), ("token", 0)])
def test_eviction_keeps_every_kept_value_exactly_and_frees_what_it_drops(nbits, grouping, residual):
    stream = QuantizedStream(grouping, nbits, G, residual)
    stream.append(_tokens(100, seed=1))
    for round_, k in enumerate((40, 25)):  # evict, take more tokens (new groups after the kept ones), evict again
        before, quantized_before = stream.read(), stream.quantized_tokens
        index = _ascending(stream.length, k, seed=round_)
        stream.keep(index)
        assert stream.length == k
        assert torch.equal(stream.read(), before.gather(2, index[..., None].expand(-1, -1, -1, 16)))
        assert stream.quantized_tokens == int((index < quantized_before).sum(-1).min())
        stream.append(_tokens(48, seed=10 + round_))
    # bytes: exactly the tensors held, and the codes/scales of dropped tokens and unused groups are gone
    held = [stream.codes, stream.scale, stream.zero, stream.residual, stream.group]
    assert stream.nbytes() == sum(t.element_size() * t.nelement() for t in held if t is not None)
    if grouping == "channel" and stream.group is not None:
        used = [len(torch.unique(row)) for row in stream.group.view(-1, stream.group.shape[-1])]
        assert stream.scale.shape[2] == max(used)  # no group kept that no row uses


def test_tokens_a_row_kept_beyond_the_common_quantized_prefix_move_to_the_residual_as_the_model_saw_them():
    stream = QuantizedStream("token", 2, G, 0)  # RTN: every token quantized
    stream.append(_tokens(10, seed=3))
    index = torch.tensor([[[0, 1, 2], [3, 4, 5]]])
    stream.keep(index)
    assert stream.quantized_tokens == 3 and stream.residual is None  # every row kept 3 quantized tokens
    stream.append(_tokens(2, seed=4))  # R = 0: quantized at once
    assert stream.quantized_tokens == 5
    # a row keeping a token the other row dropped: only the common prefix stays quantized
    channel = QuantizedStream("channel", 2, G, 0)
    channel.append(_tokens(19, seed=5))  # two channel groups quantized, 3 tokens exact (a group needs G)
    assert channel.quantized_tokens == 16
    seen = channel.read().clone()
    index = torch.tensor([[[0, 9], [1, 17]]])  # row 0: two quantized tokens; row 1: one, and one exact
    channel.keep(index)
    assert channel.quantized_tokens == 1 and channel.residual.shape[-2] == 1  # row 0's token 9 → the residual
    assert torch.equal(channel.read(), seen.gather(2, index[..., None].expand(-1, -1, -1, 16)))
    assert channel.scale.shape[2] == 1 and channel.group.tolist() == [[[0], [0]]]  # group 1 is no longer stored
