"""MiniCache merge math (pure functions) and the merged-pair cache, on crafted K/V tensors."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from kvbench.cache.merging import (
    flatten_index,
    gather_rows,
    range_threshold,
    restore,
    retained_count,
    select_retained,
    slerp_merge,
    unflatten_index,
)
from kvbench.cache.minicache import MergedPairCache, merged_pairs


def _retained(distance, retention, gamma, n_before=0, threshold=None):
    """Token indices chosen among ``distance`` [1, 1, q] new tokens after ``n_before`` merged ones."""
    q = distance.shape[-1]
    padded = torch.cat([torch.full((*distance.shape[:2], n_before), -1.0), distance], dim=-1)
    candidate = torch.arange(n_before + q).expand_as(padded) >= n_before
    held = retained_count(gamma, n_before) if retention == "top_fraction" and gamma < 1 else 0
    mask = select_retained(padded, candidate, retention, gamma, held, threshold)
    return (mask.nonzero(as_tuple=True)[2] - n_before)

B, H, D = 1, 3, 8


def kv(n, seed, batch=B, heads=H, dim=D, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, heads, n, dim, generator=g).to(dtype)


def _unit(x, dims):
    return x / x.norm(dim=dims, keepdim=True)


@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("t", [0.0, 0.3, 0.6, 1.0])
def test_identical_layers_merge_losslessly_for_any_t(per_head, t):
    x = kv(17, 0)
    m = slerp_merge(x, x.clone(), t, per_head)
    torch.testing.assert_close(restore(m.direction, m.norm_a), x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(restore(m.direction, m.norm_b), x, rtol=1e-5, atol=1e-6)
    assert m.distance.abs().max() < 1e-6


@pytest.mark.parametrize("per_head", [False, True])
def test_t0_and_t1_give_first_and_second_layer_direction(per_head):
    xa, xb = kv(11, 1), kv(11, 2)
    dims = (-1,) if per_head else (1, -1)
    torch.testing.assert_close(slerp_merge(xa, xb, 0.0, per_head).direction, _unit(xa, dims), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(slerp_merge(xa, xb, 1.0, per_head).direction, _unit(xb, dims), rtol=1e-5, atol=1e-6)


def test_slerp_direction_lies_at_fraction_t_of_the_arc():
    xa, xb = kv(9, 3), kv(9, 4)
    dims = (1, -1)
    t = 0.6
    m = slerp_merge(xa, xb, t)
    ua, ub, e = _unit(xa, dims), _unit(xb, dims), m.direction
    angle = lambda u, v: torch.arccos((u * v).sum(dims).clamp(-1, 1))  # noqa: E731
    omega = angle(ua, ub)
    torch.testing.assert_close(angle(ua, e), t * omega, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(angle(e, ub), (1 - t) * omega, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(m.distance[:, 0], omega / math.pi, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(e.norm(dim=dims), torch.ones_like(omega), rtol=1e-5, atol=1e-6)


def test_norms_are_preserved_by_restoration():
    xa, xb = kv(13, 5), kv(13, 6)
    m = slerp_merge(xa, xb, 0.6)
    torch.testing.assert_close(restore(m.direction, m.norm_a).norm(dim=(1, 3)), xa.norm(dim=(1, 3)))
    torch.testing.assert_close(restore(m.direction, m.norm_b).norm(dim=(1, 3)), xb.norm(dim=(1, 3)))


def test_parallel_vectors_fall_back_to_linear_interpolation_without_nan():
    xa = kv(5, 7)
    m = slerp_merge(xa, 3.0 * xa, 0.6)  # same direction, different norm: sin Ω = 0
    assert torch.isfinite(m.direction).all()
    torch.testing.assert_close(restore(m.direction, m.norm_b), 3.0 * xa, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 3])
def test_flat_index_round_trips_and_restore_puts_retained_tokens_back_exactly(groups):
    batch, n = 2, 10
    xa, xb = kv(n, 8, batch=batch), kv(n, 9, batch=batch)
    per_head = groups > 1
    m = slerp_merge(xa, xb, 0.6, per_head)
    b = torch.tensor([0, 1, 1])
    g = torch.tensor([0, 0, groups - 1])
    tok = torch.tensor([3, 0, 9])
    idx = flatten_index(b, g, tok, batch, groups)
    assert idx.dtype == torch.int32
    for got, want in zip(unflatten_index(idx, batch, groups), (b, g, tok)):
        assert torch.equal(got, want)
    x = restore(m.direction, m.norm_a, idx, gather_rows(xa, b, g, tok, groups))
    for bi, gi, ti in zip(b.tolist(), g.tolist(), tok.tolist()):
        heads = slice(None) if groups == 1 else gi
        assert torch.equal(x[bi, heads, ti], xa[bi, heads, ti])
    assert not torch.equal(x[0, :, 1], xa[0, :, 1])  # an unretained token is only approximated


def test_top_fraction_retains_the_most_different_tokens():
    xa = kv(40, 10)
    xb = xa.clone()
    different = [3, 17, 33]
    xb[:, :, different] = kv(3, 11)
    m = slerp_merge(xa, xb, 0.6)
    n = _retained(m.distance, "top_fraction", 0.05)  # ⌈0.05·40⌉ = 2
    assert len(n) == 2 and set(n.tolist()) <= set(different)
    n = _retained(m.distance, "top_fraction", 3 / 40)
    assert sorted(n.tolist()) == different


def test_top_fraction_budget_grows_with_decoded_tokens():
    assert retained_count(0.05, 100) == 5 and retained_count(0.07, 100) == 7 and retained_count(1.0, 3) == 3
    d = torch.rand(1, 1, 1)
    kept = [len(_retained(d, "top_fraction", 0.05, n)) for n in range(100, 140)]
    assert sum(kept) == retained_count(0.05, 140) - retained_count(0.05, 100)


def test_range_rule_keeps_the_top_gamma_of_the_distance_range():
    d = torch.tensor([[[0.0, 0.1, 0.5, 0.94, 0.96, 1.0]]])
    thr = range_threshold(d, 0.05)
    assert torch.allclose(thr, torch.tensor([[[0.95]]]))
    n = _retained(d, "range", 0.05, threshold=thr)
    assert sorted(n.tolist()) == [4, 5]
    n = _retained(d, "range", 1.0, threshold=range_threshold(d, 1.0))
    assert len(n) == 6


def test_pairs_start_at_s_and_leave_an_odd_last_layer_unmerged():
    assert merged_pairs(30, 15) == [(15, 16), (17, 18), (19, 20), (21, 22), (23, 24), (25, 26), (27, 28)]
    assert merged_pairs(4, 1) == [(1, 2)] and merged_pairs(4, 2) == [(2, 3)]


# --- the cache, driven by crafted K/V the way a model drives it (layer 0, 1, ..., L-1 per forward) -----------

def drive(cache, per_layer, n_layers):
    """One forward: per_layer[l] = (k, v) for layer l. Returns what each layer attends over."""
    return [cache.update(*per_layer[l], l) for l in range(n_layers)]


def test_identical_crafted_layers_are_stored_merged_and_restored_exactly():
    L = 4
    cache = MergedPairCache(L, start_layer=2, t=0.6, gamma=0.0)
    k, v = kv(12, 20), kv(12, 21)
    drive(cache, [(kv(12, l), kv(12, l + 9)) for l in range(2)] + [(k, v), (k.clone(), v.clone())], L)
    cache.compress()
    pair = cache.pairs[0]
    assert pair.merged and pair.dense == [None, None]  # both full tensors freed
    for role in (0, 1):
        torch.testing.assert_close(pair.keys.restore(role), k, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pair.values.restore(role), v, rtol=1e-5, atol=1e-6)


def test_decode_returns_restored_past_plus_exact_new_tokens_and_merges_after_second_layer():
    L = 4
    cache = MergedPairCache(L, start_layer=2, gamma=0.0)
    prefill = [(kv(10, l), kv(10, 10 + l)) for l in range(L)]
    drive(cache, prefill, L)
    cache.compress()
    pair = cache.pairs[0]
    restored_a = pair.keys.restore(0)
    new = [(kv(1, 30 + l), kv(1, 40 + l)) for l in range(L)]
    for l in range(2):
        cache.update(*new[l], l)
    ka, va = cache.update(*new[2], 2)
    torch.testing.assert_close(ka, torch.cat([restored_a, new[2][0]], -2))
    assert torch.equal(va[..., -1:, :], new[2][1])
    # layer a's new token waits for layer b: logical lengths 11 (a) and 10 (b), stored 10 merged tokens
    assert cache.get_seq_length(2) == 11 and cache.get_seq_length(3) == 10 and pair.keys.length == 10
    kb, vb = cache.update(*new[3], 3)
    assert torch.equal(kb[..., -1:, :], new[3][0]) and kb.shape[-2] == 11
    assert pair.pending is None and pair.keys.length == 11
    assert [cache.get_seq_length(l) for l in range(L)] == [11] * L
    assert cache.get_mask_sizes(1, 2) == (12, 0)
    m = slerp_merge(new[2][0], new[3][0], 0.6)  # the new tokens were merged (no slot free at γ = 0)
    torch.testing.assert_close(pair.keys.direction[..., -1:, :], m.direction)


def test_lazy_merge_on_the_next_forward_when_compress_is_not_called():
    L = 4
    cache = MergedPairCache(L, start_layer=2, gamma=0.0)
    drive(cache, [(kv(8, l), kv(8, 10 + l)) for l in range(L)], L)
    assert not cache.pairs[0].merged
    full = cache.nbytes()
    drive(cache, [(kv(1, 30 + l), kv(1, 40 + l)) for l in range(L)], L)
    assert cache.pairs[0].merged and cache.pairs[0].keys.length == 9
    assert cache.nbytes() < full * 9 / 8


def expected_pair_stream_bytes(n, h, d, elem, gamma, per_head, batch=1):
    """Bytes of one merged K (or V) stream: direction + 2 norms + retained states of both layers + int32 index."""
    groups = h if per_head else 1
    k = retained_count(gamma, n)
    per_kept = 2 * (d if per_head else h * d) * elem + 4
    return batch * (n * h * d * elem + 2 * groups * n * elem + groups * k * per_kept)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm", ["concat", "per_head"])
def test_stored_bytes_match_the_layout_and_the_methods_formula(dtype, norm):
    L, h, d, n, gamma = 6, 3, 64, 400, 0.05
    cache = MergedPairCache(L, start_layer=2, gamma=gamma, norm=norm)
    drive(cache, [(kv(n, l, heads=h, dim=d, dtype=dtype), kv(n, 50 + l, heads=h, dim=d, dtype=dtype))
                  for l in range(L)], L)
    elem = torch.empty((), dtype=dtype).element_size()
    full_layer = 2 * h * d * n * elem  # K and V of one layer
    assert cache.nbytes() == L * full_layer  # before compress: everything dense
    cache.compress()
    per_head = norm == "per_head"
    pair = 2 * expected_pair_stream_bytes(n, h, d, elem, gamma, per_head)
    assert cache.nbytes() == 2 * full_layer + 2 * pair  # layers 0, 1 dense; pairs (2,3), (4,5)
    # METHODS.md §4: a merged pair costs 0.5 + 1/(h·d) + γ of its full size (1/d for per-head norms)
    ratio = 0.5 + (1 / d if per_head else 1 / (h * d)) + gamma
    measured = cache.pairs[0].keys.nbytes() / (2 * h * d * n * elem)
    assert abs(measured / ratio - 1) < 0.01
    # and it keeps following the formula while decoding (one retained slot opens every 1/γ tokens)
    for step in range(21):
        drive(cache, [(kv(1, 100 + step, heads=h, dim=d, dtype=dtype),) * 2 for _ in range(L)], L)
    n2 = n + 21
    assert cache.pairs[1].values.nbytes() == expected_pair_stream_bytes(n2, h, d, elem, gamma, per_head)


def test_deep_copy_is_independent_and_keeps_pairs_shared():
    L = 4
    cache = MergedPairCache(L, start_layer=2, gamma=0.1)
    drive(cache, [(kv(10, l), kv(10, 10 + l)) for l in range(L)], L)
    cache.compress()
    before = cache.nbytes()
    twin = copy.deepcopy(cache)
    assert twin.layers[2].pair is twin.layers[3].pair is twin.pairs[0]
    assert twin.pairs[0] is not cache.pairs[0]
    drive(twin, [(kv(1, 30 + l), kv(1, 40 + l)) for l in range(L)], L)
    assert twin.get_seq_length() == 11 and cache.get_seq_length() == 11 - 1
    assert cache.nbytes() == before and cache.pairs[0].keys.length == 10


@pytest.mark.parametrize("norm", ["concat", "per_head"])
def test_range_rule_retains_the_outlier_token_in_its_own_head_only_with_per_head_norms(norm):
    L = 4
    cache = MergedPairCache(L, start_layer=2, gamma=0.05, retention="range", norm=norm)
    k = kv(20, 60)
    k_b = k.clone()
    k_b[0, 1, 5] = -k[0, 1, 5]  # head 1 of token 5 points the opposite way in layer b
    layers = [(kv(20, l), kv(20, 70 + l)) for l in range(2)] + [(k, k.clone()), (k_b, k.clone())]
    drive(cache, layers, L)
    cache.compress()
    states = cache.pairs[0].keys
    b, g, n = unflatten_index(states.kept_idx, 1, 3 if norm == "per_head" else 1)
    assert n.tolist() == [5] and g.tolist() == [1 if norm == "per_head" else 0]
    restored = states.restore(1)
    heads = slice(None) if norm == "concat" else 1
    assert torch.equal(restored[0, heads, 5], k_b[0, heads, 5])  # retained: exact
    torch.testing.assert_close(restored[0, 0], k_b[0, 0], rtol=1e-5, atol=1e-5)  # head 0 merges losslessly


def test_reset_empties_the_pairs():
    L = 4
    cache = MergedPairCache(L, start_layer=2)
    drive(cache, [(kv(6, l), kv(6, 10 + l)) for l in range(L)], L)
    cache.compress()
    cache.reset()
    assert cache.nbytes() == 0 and cache.get_seq_length(2) == 0 and not cache.pairs[0].merged
