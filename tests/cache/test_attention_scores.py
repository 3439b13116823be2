"""Scored attention beyond H2O: requests for the last query rows only, and masks re-aligned per layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kvbench.cache.attention_scores import aggregate_heads, align_mask, request_scores, scored_attention


class _Module(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups, self.is_causal, self.scaling, self.layer_idx = groups, True, 1.0, 0


class _Receiver:
    def __init__(self, agg: str):
        self.group_reduction, self.received = agg, None

    def receive_scores(self, sums):
        self.received = sums


def _causal(q_len: int, kv: int) -> torch.Tensor:
    return torch.arange(kv)[None, :] <= torch.arange(q_len)[:, None] + (kv - q_len)


@pytest.mark.parametrize("base", ["sdpa", "eager"])
@pytest.mark.parametrize("last_rows", [1, 3, None])
@pytest.mark.parametrize("agg", ["sum", "mean"])
def test_scores_of_the_last_query_rows_equal_the_dense_softmax_of_those_rows(base, last_rows, agg):
    from transformers.models.llama import modeling_llama

    torch.manual_seed(0)
    b, h, g, q_len, kv, d = 1, 2, 2, 6, 9, 8
    query, key = torch.randn(b, h * g, q_len, d), torch.randn(b, h, kv, d)
    allowed = _causal(q_len, kv)
    dense = torch.softmax((query @ key.repeat_interleave(g, 1).transpose(-1, -2)).masked_fill(~allowed, float("-inf")), -1)
    rows = q_len if last_rows is None else last_rows
    expected = aggregate_heads(dense[:, :, q_len - rows:].reshape(b, h, g, rows, kv), agg)

    module_cls = type("LlamaLike", (_Module,), {"__module__": modeling_llama.__name__})  # eager borrows Llama's
    receiver = _Receiver(agg)
    request_scores(receiver, key, last_rows=last_rows)
    mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[None, None] if base == "eager" else None
    scored_attention(base)(module_cls(g), query, key, key.clone(), mask, scaling=1.0, dropout=0.0)
    assert torch.allclose(receiver.received, expected, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_a_mask_built_for_another_layer_is_realigned_bottom_right(dtype):
    allowed = _causal(3, 8)[None, None]  # layer 0: 5 cached tokens + 3 new
    mask = allowed if dtype == torch.bool else torch.where(allowed, 0.0, -1e9)
    assert align_mask(mask, 8) is mask
    shorter = align_mask(mask, 5)  # a layer keeping 2 cached tokens
    assert torch.equal(shorter, mask[..., 3:])
    assert torch.equal(shorter if dtype == torch.bool else shorter == 0, _causal(3, 5)[None, None])
    longer = align_mask(mask, 11)  # a layer keeping 8 cached tokens
    assert torch.equal(longer if dtype == torch.bool else longer == 0, _causal(3, 11)[None, None])
    assert align_mask(None, 4) is None


@pytest.mark.parametrize("q_len, kv, mask_kind", [(12, 12, None), (5, 12, "bool"), (5, 12, "float"), (1, 12, "bool")])
def test_the_flash_path_returns_sdpas_output_and_the_chunked_scores(monkeypatch, q_len, kv, mask_kind):
    """Every row scored (H2O): a causal prefill (no mask) takes the flash path: sdpa's output, and scores equal to the
    chunked ones within rounding; anything else returns sdpa's own output, bit for bit, with the chunked scores."""
    from kvbench.cache import attention_scores
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    b, h, g, d = 2, 2, 2, 8
    query, key, value = torch.randn(b, h * g, q_len, d), torch.randn(b, h, kv, d), torch.randn(b, h, kv, d)
    allowed = _causal(q_len, kv)[None, None].expand(b, 1, q_len, kv)
    mask = None if mask_kind is None else allowed if mask_kind == "bool" else torch.where(
        allowed, 0.0, torch.finfo(torch.float32).min)
    expected, _ = sdpa_attention_forward(_Module(g), query, key, value, mask, scaling=0.3, dropout=0.0)
    results = {}
    for fused in (True, False):
        monkeypatch.setattr(attention_scores, "FUSED", fused)
        receiver = _Receiver("sum")
        request_scores(receiver, key)
        out, weights = scored_attention("sdpa")(_Module(g), query, key, value, mask, scaling=0.3, dropout=0.0)
        results[fused] = out, receiver.received
        assert weights is None and out.shape == (b, q_len, h * g, d)
    assert torch.equal(results[False][0], expected)
    assert torch.allclose(results[True][0], expected, rtol=0, atol=1e-6)
    assert torch.allclose(results[True][1], results[False][1], rtol=1e-5, atol=1e-6)
    assert (results[True][1] > 0).any()


@pytest.mark.parametrize("agg", ["sum", "mean"])
def test_flash_prefill_scores_equal_the_dense_softmax_column_sums(agg):
    from kvbench.cache.attention_scores import prefill_scores_by_flash

    torch.manual_seed(0)
    b, h, g, n, d = 2, 3, 3, 70, 16
    query, key, value = torch.randn(b, h * g, n, d) * 2, torch.randn(b, h, n, d) * 2, torch.randn(b, h, n, d)
    logits = query @ key.repeat_interleave(g, 1).transpose(-1, -2) * 0.25
    dense = torch.softmax(logits.masked_fill(~_causal(n, n), float("-inf")), -1)
    sums, out = prefill_scores_by_flash(query, key, value, 0.25, agg)
    assert torch.allclose(sums, aggregate_heads(dense.reshape(b, h, g, n, n), agg), rtol=1e-5, atol=1e-6)
    assert torch.allclose(out, (dense @ value.repeat_interleave(g, 1)).transpose(1, 2), atol=1e-5)
    # not covered (then the chunked path runs): max over a group's heads, a prefill after cached tokens
    assert prefill_scores_by_flash(query, key, value, 0.25, "max") is None
    assert prefill_scores_by_flash(query[:, :, 1:], key, value, 0.25, agg) is None
