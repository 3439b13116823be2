"""CombinedCache: evicting merged pairs -- token sets agree across a pair, chosen from summed scores;
retention among kept tokens; attention at logical positions; bytes; clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache

from kvbench.cache import cache_nbytes
from kvbench.cache.attention_scores import use_scoring_attention
from kvbench.cache.combined import CombinedCache, EvictingPairLayer, Eviction, Merging
from kvbench.cache.h2o import H2OBudget, H2OCache, select_kept
from kvbench.cache.merging import retained_count, slerp_merge, unflatten_index
from tests.conftest import random_ids

PAIR = (1, 2)  # start_layer=1 on the 4-layer tiny model: pair (1, 2), layers 0 and 3 plain H2O


pytestmark = pytest.mark.usefixtures("no_grad")


def _scored_peaky(kind: str = "llama-gqa", scale: float = 6.0):
    """(plain model, scored copy) with sharpened attention, so heads and layers pick different tokens."""
    from kvbench.models import tiny_llama

    model, _ = tiny_llama(kind, seed=0)
    for layer in model.model.layers:
        layer.self_attn.q_proj.weight.mul_(scale)
        layer.self_attn.k_proj.weight.mul_(scale)
    scored = copy.deepcopy(model)
    use_scoring_attention(scored)
    return model, scored


def _cache(heavy=6, recent=4, group_reduction="sum", **merging) -> CombinedCache:
    return CombinedCache(4, Eviction(H2OBudget(heavy_tokens=heavy, recent_tokens=recent), group_reduction),
                         Merging(start_layer=1, **merging))


def _reference(scored, prompt):
    """Exact keys/values and accumulated scores of every layer, nothing evicted."""
    cache = H2OCache(4, H2OBudget(heavy_tokens=10_000, recent_tokens=1))
    scored(input_ids=prompt, cache=cache)
    return [(layer.keys, layer.values, layer.scores) for layer in cache.layers]


def _take(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [b, h, N, d] at positions [b, G, K] (G = 1 or h) -> [b, h, K, d]."""
    b, h, _, d = x.shape
    return x.gather(2, positions.long().expand(b, h, -1)[..., None].expand(-1, -1, -1, d))


def _as_dynamic(cache: CombinedCache) -> DynamicCache:
    """A plain cache holding exactly what each layer of ``cache`` attends over (restored pairs)."""
    data = []
    for layer in cache.layers:
        if isinstance(layer, EvictingPairLayer):
            empty = layer.pair.keys.direction[..., :0, :]
            data.append((layer.pair.keys.restore(layer.role, empty).clone(),
                         layer.pair.values.restore(layer.role, empty).clone()))
        else:
            data.append((layer.keys.clone(), layer.values.clone()))
    return DynamicCache(ddp_cache_data=data)


@pytest.mark.parametrize("norm", ["concat", "per_head"])
def test_pair_layers_keep_one_token_set_chosen_from_their_summed_scores(norm):
    model, scored = _scored_peaky()
    prompt = random_ids(32)
    ref = _reference(scored, prompt)
    cache = _cache(gamma=1.0, norm=norm)  # gamma 1: restored states are exact, so they can be compared
    scored(input_ids=prompt, cache=cache)
    pair = cache.pairs[0]
    a, b = PAIR
    summed = ref[a][2] + ref[b][2]  # [1, h, N]
    if norm == "concat":
        summed = summed.sum(dim=1, keepdim=True)
    want = select_kept(summed, 6, 4)
    assert torch.equal(pair.positions.long(), want) and pair.length == 10
    for role, layer in enumerate(PAIR):  # both layers hold exactly their own states of the same tokens
        for kv, slots in ((0, pair.keys), (1, pair.values)):
            restored = slots.restore(role, slots.direction[..., :0, :])
            torch.testing.assert_close(restored, _take(ref[layer][kv], want), rtol=1e-5, atol=1e-6)
    for layer in (0, 3):  # unmerged layers evict on their own scores, per KV head
        assert torch.equal(cache.layers[layer].positions.long(), select_kept(ref[layer][2], 6, 4))
    # the rule matters: layer a alone, or (per head) another head, would have kept other tokens
    assert not torch.equal(select_kept(ref[a][2], 6, 4), select_kept(summed.expand_as(ref[a][2]), 6, 4))
    if norm == "per_head":
        assert not torch.equal(want[:, 0], want[:, 1])


@pytest.mark.parametrize("norm", ["concat", "per_head"])
def test_retained_tokens_are_the_most_distant_kept_ones_and_the_rest_is_merged(norm):
    _, scored = _scored_peaky()
    prompt = random_ids(40, seed=1)
    ref = _reference(scored, prompt)
    cache = _cache(heavy=8, recent=4, gamma=0.25, norm=norm)
    scored(input_ids=prompt, cache=cache)
    pair = cache.pairs[0]
    kept_a, kept_b = _take(ref[PAIR[0]][0], pair.positions), _take(ref[PAIR[1]][0], pair.positions)
    merged = slerp_merge(kept_a, kept_b, t=0.6, per_head=(norm == "per_head"))
    n_rows = merged.distance.shape[1]
    b, g, n = unflatten_index(pair.keys.kept_idx, 1, n_rows)
    assert b.numel() == n_rows * retained_count(0.25, 12)  # ⌈γ·K⌉ per row, K = kept tokens
    for row in range(n_rows):
        top = set(merged.distance[0, row].topk(retained_count(0.25, 12)).indices.tolist())
        assert set(n[g == row].tolist()) == top
    restored = pair.keys.restore(0, kept_a[..., :0, :])
    is_kept = torch.zeros(1, n_rows, 12, dtype=torch.bool)
    is_kept[b, g, n] = True
    exact = is_kept.expand(1, kept_a.shape[1], 12) if n_rows == 1 else is_kept
    torch.testing.assert_close(restored[exact], kept_a[exact])  # retained: exact
    approx = merged.direction * merged.norm_a
    torch.testing.assert_close(restored[~exact], approx[~exact], rtol=1e-5, atol=1e-6)  # others: merged
    assert (restored[~exact] - kept_a[~exact]).abs().max() > 1e-3  # (and merging is lossy)


def test_continuation_after_eviction_and_merging_attends_at_logical_positions():
    model, scored = _scored_peaky()
    cache = _cache(gamma=0.1)
    scored(input_ids=random_ids(40), cache=cache)
    cache.compress()
    assert [cache.stored_length(i) for i in range(4)] == [10] * 4 and cache.get_seq_length() == 40
    snapshot = _as_dynamic(cache)
    continuation = random_ids(5, seed=3)
    got = scored(input_ids=continuation, cache=cache).logits
    want = model(input_ids=continuation, cache=copy.deepcopy(snapshot),
                 position_ids=torch.arange(40, 45)[None]).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    wrong = model(input_ids=continuation, cache=snapshot, position_ids=torch.arange(10, 15)[None]).logits
    assert not torch.allclose(got, wrong, atol=1e-3)


@pytest.mark.parametrize("norm", ["concat", "per_head"])
def test_decoding_keeps_the_budget_and_the_retained_count_and_matches_the_reduced_cache(norm):
    model, scored = _scored_peaky()
    cache = _cache(heavy=8, recent=4, gamma=0.25, norm=norm)
    logits = scored(input_ids=random_ids(30, seed=4), cache=cache).logits
    rows = 1 if norm == "concat" else 2
    for step in range(6):
        token = logits[:, -1:].argmax(-1)
        snapshot = _as_dynamic(cache)
        logits = scored(input_ids=token, cache=cache).logits
        want = model(input_ids=token, cache=snapshot, position_ids=torch.tensor([[30 + step]])).logits
        torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)
        pair = cache.pairs[0]
        assert [cache.stored_length(i) for i in range(4)] == [12] * 4
        assert pair.keys.kept_idx.numel() == pair.values.kept_idx.numel() == rows * retained_count(0.25, 12)
        assert int(pair.positions[..., -1].min()) == 30 + step  # the newest token is kept (recent window)
    assert cache.get_seq_length() == 36


def test_streamed_chunks_keep_the_first_chunks_budget_and_logical_positions():
    _, scored = _scored_peaky()
    cache = CombinedCache(4, Eviction(H2OBudget(heavy_ratio=0.2, recent_ratio=0.1)), Merging(start_layer=1, gamma=0.05))
    for chunk in random_ids(60, seed=5).split(20, dim=1):
        scored(input_ids=chunk, cache=cache)
        cache.compress()
        assert [cache.stored_length(i) for i in range(4)] == [6] * 4  # 4 heavy + 2 recent of 20
    assert cache.get_seq_length() == 60 and cache.layers[2].get_seq_length() == 60
    assert cache.pairs[0].positions[0, 0, -2:].tolist() == [58, 59]


def test_nbytes_counts_every_tensor_each_pair_once():
    _, scored = _scored_peaky()
    cache = _cache(heavy=8, recent=4, gamma=0.25, norm="per_head")
    scored(input_ids=random_ids(30), cache=cache)
    h, d, f, K = 2, 16, 4, 12  # KV heads, head dim, float32 bytes, kept tokens
    h2o_layer = K * h * (2 * d * f + 4 + 4)  # keys, values, float32 score, int32 position
    pair = cache.pairs[0]
    retained = pair.keys.kept_idx.numel() + pair.values.kept_idx.numel()
    merged = 2 * (K * h * d * f + 2 * K * h * f) + retained * (4 + 2 * d * f) + K * h * (4 + 4)
    assert cache_nbytes(cache) == 2 * h2o_layer + merged
    assert cache_nbytes(cache) < 0.7 * 4 * 2 * h * d * f * 30  # well below the full 30-token cache


def test_a_model_without_scored_attention_fails_with_a_clear_error():
    model, _ = _scored_peaky()
    with pytest.raises(RuntimeError, match="scored_sdpa"):  # a pair's upper layer notices the missing scores
        model(input_ids=random_ids(20), cache=_cache())
