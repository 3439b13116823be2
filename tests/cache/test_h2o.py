"""H2O cache layers and attention scoring, on hand-built attention whose probabilities are known."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from kvbench.cache.attention_scores import (
    aggregate_heads,
    attention_column_sums,
    register_scoring_attention,
    scored_attention,
)
from kvbench.cache.h2o import H2OBudget, H2OCache, H2OLayer, select_kept


# ---------------------------------------------------------------------------------------------
# Hand-built attention: keys are one-hot (k_j = e_j) and query rows are log-probabilities, so with
# scaling 1 the softmax of q·Kᵀ is exactly the probability matrix we wrote down.


class _Attention(nn.Module):
    """The attributes the sdpa/eager attention functions read from a module."""

    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True
        self.scaling = 1.0
        self.layer_idx = 0


def _queries_for(probs: torch.Tensor, dim: int) -> torch.Tensor:
    """Query rows whose softmax against one-hot keys gives ``probs`` [H, q, kv] (causal part)."""
    n_heads, q_len, kv = probs.shape
    q = torch.zeros(1, n_heads, q_len, dim)
    q[..., :kv] = torch.log(probs.clamp_min(1e-30))
    return q


def _one_hot_keys(first: int, count: int, n_kv_heads: int, dim: int) -> torch.Tensor:
    keys = torch.zeros(1, n_kv_heads, count, dim)
    for i in range(count):
        keys[:, :, i, first + i] = 1.0
    return keys


def _run(layer: H2OLayer, probs: torch.Tensor, first: int, n_kv_heads: int, dim: int = 8, base: str = "sdpa"):
    """One forward of ``probs.shape[1]`` new tokens through ``layer`` with the scored attention."""
    n_new = probs.shape[1]
    keys = _one_hot_keys(first, n_new, n_kv_heads, dim)
    all_keys, all_values = layer.update(keys, keys.clone())
    # rows must be causal: query i (new token first+i) sees keys 0 .. first+i
    module = _Attention(probs.shape[0] // n_kv_heads)
    scored_attention(base)(module, _queries_for(probs, dim), all_keys, all_values, None, scaling=1.0, dropout=0.0)


def _causal_probs(rows: list[list[float]]) -> torch.Tensor:
    """Rows of a lower-triangular probability matrix (row i lists keys 0..i), padded with zeros."""
    n = len(rows[-1])
    out = torch.zeros(len(rows), n)
    for i, row in enumerate(rows):
        assert math.isclose(sum(row), 1.0), row
        out[i, : len(row)] = torch.tensor(row)
    return out


def test_select_kept_takes_recent_window_and_top_scored_others():
    scores = torch.tensor([[[5.0, 0.1, 3.0, 0.2, 4.0, 0.0, 0.0]]])
    kept = select_kept(scores, heavy=2, recent=2)
    # last two (5, 6) always; among 0..4 the two best are 0 (5.0) and 4 (4.0)
    assert kept.tolist() == [[[0, 4, 5, 6]]]
    assert select_kept(scores, heavy=0, recent=3).tolist() == [[[4, 5, 6]]]


def test_mha_heads_keep_their_own_heavy_hitters_from_known_attention():
    # 2 KV heads = 2 query heads; 5 prompt tokens; keep 2 heavy + 1 recent per head.
    head0 = _causal_probs([[1.0], [0.9, 0.1], [0.8, 0.1, 0.1], [0.7, 0.1, 0.1, 0.1], [0.6, 0.1, 0.1, 0.1, 0.1]])
    head1 = _causal_probs([[1.0], [0.5, 0.5], [0.05, 0.9, 0.05], [0.05, 0.05, 0.1, 0.8], [0.05, 0.0, 0.05, 0.8, 0.1]])
    # column sums: head0 [4.0, .4, .3, .2, .1] -> heavy {0, 1}; head1 [1.65, 1.45, .2, 1.6, .1] -> heavy {0, 3}
    layer = H2OLayer(H2OBudget(heavy_tokens=2, recent_tokens=1))
    _run(layer, torch.stack([head0, head1]), first=0, n_kv_heads=2)
    assert layer.positions.tolist() == [[[0, 1, 4], [0, 3, 4]]]
    assert torch.allclose(layer.scores[0, 0], head0.sum(0)[[0, 1, 4]], atol=1e-5)
    assert torch.allclose(layer.scores[0, 1], head1.sum(0)[[0, 3, 4]], atol=1e-5)

    # decode token 5: each head attends over its own kept tokens + itself, with known probabilities
    step = torch.tensor([[0.1, 0.6, 0.1, 0.2], [0.1, 0.1, 0.1, 0.7]])  # per head, in stored order
    keys = _one_hot_keys(5, 1, 2, 8)
    all_k, all_v = layer.update(keys, keys.clone())
    assert layer.positions.tolist() == [[[0, 1, 4, 5], [0, 3, 4, 5]]]
    q = torch.zeros(1, 2, 1, 8)  # stored keys are one-hot at their positions: put log-probs there
    for h in range(2):
        q[0, h, 0, layer.positions[0, h].long()] = torch.log(step[h])
    scored_attention("sdpa")(_Attention(1), q, all_k, all_v, None, scaling=1.0, dropout=0.0)
    # head0 totals 0: 4.1, 1: 1.0, 4: .2 (no longer recent) -> evict 4; head1 0: 1.75, 3: 1.7, 4: .2 -> evict 4
    assert layer.positions.tolist() == [[[0, 1, 5], [0, 3, 5]]]
    assert torch.allclose(layer.scores[0], torch.tensor([[4.1, 1.0, 0.2], [1.75, 1.7, 0.7]]), atol=1e-5)
    assert layer.keys.shape[-2] == 3 and layer.seen == 6
    # the kept keys are the right ones: one-hot at each kept position
    assert torch.equal(layer.keys[0].argmax(-1), layer.positions[0].long())


@pytest.mark.parametrize("agg,expected_heavy", [("sum", 0), ("mean", 0), ("max", 1)])
def test_gqa_group_reductionregation_decides_which_token_is_heavy(agg, expected_heavy):
    # One KV head shared by 2 query heads; prefill of 4 tokens; keep 1 heavy + 1 recent.
    # Head 0 favours token 1, head 1 favours token 2, both give token 0 a fair share:
    head0 = _causal_probs([[1.0], [0.5, 0.5], [0.2, 0.7, 0.1], [0.1, 0.8, 0.05, 0.05]])
    head1 = _causal_probs([[1.0], [0.5, 0.5], [0.2, 0.1, 0.7], [0.1, 0.1, 0.75, 0.05]])
    # sum over heads and queries:  token0 3.6, token1 2.7, token2 1.6  -> token 0 (mean: same ranking)
    # per query, max over heads:   token0 1.8, token1 2.0, token2 1.45 -> token 1
    layer = H2OLayer(H2OBudget(heavy_tokens=1, recent_tokens=1), group_reduction=agg)
    _run(layer, torch.stack([head0, head1]), first=0, n_kv_heads=1)
    assert layer.positions.tolist() == [[[expected_heavy, 3]]]
    sums = torch.stack([head0, head1]).sum(dim=(0, 1))
    maxes = torch.stack([head0, head1]).amax(dim=0).sum(dim=0)
    expected = {"sum": sums, "mean": sums / 2, "max": maxes}[agg]
    assert torch.allclose(layer.scores[0, 0], expected[[expected_heavy, 3]], atol=1e-5)


@pytest.mark.parametrize("masked", ["none", "bool", "float"])
@pytest.mark.parametrize("agg", ["sum", "mean", "max"])
def test_chunked_column_sums_equal_dense_softmax_column_sums(masked, agg):
    torch.manual_seed(0)
    b, h, g, q_len, kv, d = 1, 2, 3, 7, 11, 5
    query, key = torch.randn(b, h * g, q_len, d), torch.randn(b, h, kv, d)
    allowed = torch.arange(kv)[None, :] <= torch.arange(q_len)[:, None] + (kv - q_len)  # bottom-right causal
    mask = {"none": None, "bool": allowed[None, None],
            "float": torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[None, None]}[masked]
    logits = query @ key.repeat_interleave(g, dim=1).transpose(-1, -2) * 0.3
    dense = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    expected = aggregate_heads(dense.reshape(b, h, g, q_len, kv), agg)
    for chunk_elements in (1, 2 * h * g * kv, 1 << 20):  # one row at a time, two rows, everything at once
        got = attention_column_sums(query, key, mask, 0.3, agg, chunk_elements=chunk_elements, min_rows=1)
        assert torch.allclose(got, expected, atol=1e-5)


def test_eager_and_sdpa_scoring_give_the_same_scores():
    torch.manual_seed(1)
    probs = torch.softmax(torch.randn(4, 6, 6), dim=-1).tril()
    probs = probs / probs.sum(-1, keepdim=True)
    layers = {}
    for base in ("sdpa", "eager"):
        layer = H2OLayer(H2OBudget(heavy_tokens=10, recent_tokens=10), group_reduction="max")
        keys = _one_hot_keys(0, 6, 2, 8)
        k, v = layer.update(keys, keys.clone())
        if base == "eager":
            # eager needs the model module's eager_attention_forward: borrow Llama's
            from transformers.models.llama import modeling_llama

            class LlamaLike(_Attention):
                pass

            LlamaLike.__module__ = modeling_llama.__name__
            module = LlamaLike(2)
            mask = torch.where(torch.ones(6, 6, dtype=torch.bool).tril(), 0.0, torch.finfo(torch.float32).min)
            scored_attention(base)(module, _queries_for(probs, 8), k, v, mask[None, None], scaling=1.0, dropout=0.0)
        else:
            scored_attention(base)(_Attention(2), _queries_for(probs, 8), k, v, None, scaling=1.0, dropout=0.0)
        layers[base] = layer
    assert torch.allclose(layers["sdpa"].scores, layers["eager"].scores, atol=1e-5)
    assert torch.allclose(layers["sdpa"].scores[0], probs.reshape(2, 2, 6, 6).amax(1).sum(1), atol=1e-5)


def test_budget_resolves_ratios_of_the_prompt_with_floor_and_one_recent_token_minimum():
    assert H2OBudget(heavy_ratio=0.1, recent_ratio=0.1).resolve(1024) == (102, 102)
    assert H2OBudget(heavy_ratio=0.0, recent_ratio=0.2).resolve(100) == (0, 20)
    assert H2OBudget(heavy_tokens=7, recent_ratio=0.5).resolve(9) == (7, 4)
    assert H2OBudget(heavy_ratio=0.1, recent_ratio=0.1).resolve(5) == (0, 1)


@pytest.mark.parametrize("ratio, n, expected", [(0.35, 100, 35), (0.7, 10, 7), (0.7, 1000, 700), (0.29, 100, 29),
                                                (0.57, 100, 57), (0.1, 1024, 102)])
def test_budget_floor_is_exact_where_float_products_fall_just_short(ratio, n, expected):
    assert int(ratio * n) in (expected, expected - 1)  # float arithmetic: 0.29 * 100 = 28.999999999999996
    assert H2OBudget(heavy_ratio=ratio, recent_ratio=0.0).resolve(n)[0] == expected


def _filled_cache(n_layers=2, b=1, h=2, n=10, d=4, budget=H2OBudget(heavy_tokens=2, recent_tokens=3)):
    cache = H2OCache(n_layers, budget)
    torch.manual_seed(0)
    for i, layer in enumerate(cache.layers):
        keys = torch.randn(b, h, n, d)
        layer.update(keys, keys + 1)
        layer.receive_scores(torch.rand(b, h, n))
    return cache


def test_logical_length_and_mask_sizes_after_eviction():
    cache = _filled_cache()
    assert cache.get_seq_length() == 10
    assert cache.stored_length() == 5
    # 3 new tokens attend to the 5 kept + causally earlier new ones; offset = evicted count
    assert cache.get_mask_sizes(3, 0) == (8, 5)
    positions = cache.kept_positions(0)
    assert positions.shape == (1, 2, 5)
    assert positions[..., -3:].tolist() == [[[7, 8, 9], [7, 8, 9]]]
    assert bool((positions[..., 1:] > positions[..., :-1]).all())


def test_nbytes_counts_keys_values_scores_and_positions():
    cache = _filled_cache(n_layers=3, h=2, d=4)
    per_layer = 2 * (1 * 2 * 5 * 4 * 4) + 1 * 2 * 5 * 4 + 1 * 2 * 5 * 4  # K, V (fp32) + scores fp32 + positions int32
    assert cache.nbytes() == 3 * per_layer
    from kvbench.cache import cache_nbytes

    assert cache_nbytes(cache) == 3 * per_layer


def test_deep_copies_evolve_independently():
    cache = _filled_cache()
    twin = copy.deepcopy(cache)
    keys = torch.randn(1, 2, 1, 4)
    for layer in cache.layers:
        layer.update(keys, keys)
        layer.receive_scores(torch.ones(1, 2, 6))
    assert twin.get_seq_length() == 10 and cache.get_seq_length() == 11
    assert twin.kept_positions(0)[..., -1].tolist() == [[9, 9]]
    assert cache.kept_positions(0)[..., -1].tolist() == [[10, 10]]


def test_forward_without_scoring_attention_fails_clearly():
    layer = H2OLayer(H2OBudget(heavy_tokens=1, recent_tokens=1))
    keys = torch.randn(1, 1, 4, 2)
    layer.update(keys, keys)  # nobody delivers scores (plain sdpa model)
    with pytest.raises(RuntimeError, match="scored_sdpa"):
        layer.update(keys[:, :, :1], keys[:, :, :1])
    with pytest.raises(RuntimeError, match="scored_sdpa"):
        layer.evict()


def test_scored_attention_outputs_equal_the_wrapped_implementation(tiny_gqa):
    from transformers import DynamicCache

    model, _ = tiny_gqa
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    register_scoring_attention()
    for base in ("sdpa", "eager"):
        model.set_attn_implementation(base)
        expected = model(input_ids=ids, cache=DynamicCache(config=model.config)).logits
        model.set_attn_implementation("scored_" + base)
        got = model(input_ids=ids, cache=DynamicCache(config=model.config)).logits
        assert torch.equal(got, expected)
