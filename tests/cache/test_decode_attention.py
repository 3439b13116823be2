"""The single-pass decode attention: sdpa's output within rounding, the chunked column sums' scores."""

import pytest
import torch
import torch.nn.functional as F

from kvbench.cache import decode_attention
from kvbench.cache.attention_scores import aggregate_heads, attention_column_sums


@pytest.mark.parametrize("agg", ["sum", "mean", "max"])
def test_one_pass_gives_sdpa_output_and_the_chunked_column_sums(agg):
    generator = torch.Generator().manual_seed(0)
    b, n_heads, h, kv, d = 3, 6, 2, 37, 16
    query = torch.randn(b, n_heads, 1, d, generator=generator)
    key, value = (torch.randn(b, h, kv, d, generator=generator) for _ in range(2))
    out, probs = decode_attention.attend_and_score(query, key, value, 0.25)
    expected = F.scaled_dot_product_attention(query, key, value, scale=0.25, enable_gqa=True).transpose(1, 2)
    assert out.shape == (b, 1, n_heads, d)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(aggregate_heads(probs, agg), attention_column_sums(query, key, None, 0.25, agg),
                               rtol=0, atol=1e-6)


def test_only_an_unmasked_single_query_step_without_shaping_arguments_applies():
    one, two = torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 2, 4)
    assert decode_attention.applies(one, None, {"dropout": 0.0, "scaling": 0.5})
    assert not decode_attention.applies(two, None, {})
    assert not decode_attention.applies(one, torch.zeros(1, 1, 1, 3), {})
    assert not decode_attention.applies(one, None, {"sliding_window": 4})
    assert not decode_attention.applies(one.requires_grad_(), None, {})
