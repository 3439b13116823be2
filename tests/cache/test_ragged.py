"""The ragged per-KV-head store: packed storage, per-head lengths and positions, bytes, and its attention."""

from __future__ import annotations

import pytest
import torch

from kvbench.cache.ragged import RaggedLayer, RaggedStore
from kvbench.cache.ragged_attention import ragged_attention, take
from tests.contracts import held_tensors

pytestmark = pytest.mark.usefixtures("no_grad")


def _layer(b=2, h=2, n=6, d=4, seed=0):
    torch.manual_seed(seed)
    layer = RaggedLayer()
    keys, values = torch.randn(b, h, n, d), torch.randn(b, h, n, d)
    layer.update(keys, values)
    return layer, keys, values


def test_uniform_rows_are_returned_as_views_of_the_packed_store_without_a_copy():
    layer = RaggedLayer()
    keys, values = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4)
    got_k, got_v = layer.update(keys, values)
    assert torch.equal(got_k, keys) and torch.equal(got_v, values)
    assert got_k.data_ptr() == layer.store.keys.data_ptr()  # a view of the packed tensor
    assert layer.store.keys.shape == (2 * 2 * 5, 4)


def test_rows_keep_different_tokens_packed_in_position_order_and_new_tokens_go_to_every_row():
    layer, keys, _ = _layer(b=1, h=2, n=6)
    kept = torch.tensor([[[1, 0, 1, 0, 0, 1], [1, 1, 1, 1, 1, 0]]], dtype=torch.bool)
    layer.keep_tokens(kept)
    assert layer.lengths().tolist() == [[3, 5]]
    assert layer.kept_positions() == [[[0, 2, 5], [0, 1, 2, 3, 4]]]
    assert layer.store.keys.shape == (8, 4)  # packed: 3 + 5 rows, no padding to 5 + 5
    assert torch.equal(layer.store.keys[:3], keys[0, 0, [0, 2, 5]])
    new = torch.randn(1, 2, 2, 4)
    returned, _ = layer.update(new, new.clone())
    assert returned.shape[-2] == 0 and take(returned) is layer.store  # handed to the attention wrapper
    assert layer.kept_positions() == [[[0, 2, 5, 6, 7], [0, 1, 2, 3, 4, 6, 7]]]
    assert torch.equal(layer.store.keys[3:5], new[0, 0]) and torch.equal(layer.store.keys[10:], new[0, 1])
    assert layer.get_seq_length() == 8


def test_nbytes_counts_every_stored_tensor_keys_values_lengths_and_positions():
    layer, _, _ = _layer(b=2, h=2, n=6, d=4)
    layer.keep_tokens(torch.rand(2, 2, 6) > 0.4)
    layer.update(torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4))
    tensors = held_tensors(layer.store)
    assert set(map(id, tensors.values())) == {id(layer.store.keys), id(layer.store.values), id(layer.store.lengths),
                                               id(layer.store.positions)}
    total = int(layer.lengths().sum())
    assert layer.nbytes() == total * 4 * 4 * 2 + 2 * 2 * 4 + total * 4  # keys + values (fp32), lengths, positions
    assert layer.nbytes() == sum(t.element_size() * t.nelement() for t in tensors.values())


def _dense_reference(query, layer, scaling):
    """Attention over the kept tokens by masking a padded copy (the reference the packed path must match)."""
    store = layer.store
    b, h = store.lengths.shape
    g = query.shape[1] // h
    longest = int(store.lengths.max())
    keys = torch.zeros(b, h, longest, query.shape[-1])
    values = torch.zeros_like(keys)
    visible = torch.zeros(b, h, longest, dtype=torch.bool)
    start = 0
    for row, n in enumerate(store.lengths.flatten().tolist()):
        i, j = divmod(row, h)
        keys[i, j, longest - n:], values[i, j, longest - n:] = store.keys[start:start + n], store.values[start:start + n]
        visible[i, j, longest - n:] = True
        start += n
    q = query.shape[2]
    causal = torch.ones(q, longest, dtype=torch.bool).tril_(longest - q)
    mask = visible.repeat_interleave(g, 1)[:, :, None] & causal
    out = torch.nn.functional.scaled_dot_product_attention(
        query, keys.repeat_interleave(g, 1), values.repeat_interleave(g, 1), attn_mask=mask, scale=scaling)
    return out.transpose(1, 2)


@pytest.mark.parametrize("q_len", [1, 3])
def test_loop_attention_over_ragged_rows_equals_masked_attention_over_a_padded_copy(q_len):
    layer, _, _ = _layer(b=2, h=2, n=9, d=8, seed=1)
    layer.keep_tokens(torch.tensor([[[1] * 9, [1, 0, 0, 1, 0, 0, 0, 1, 1]], [[0, 1] * 4 + [1], [1] * 4 + [0] * 5]],
                                   dtype=torch.bool))
    layer.update(torch.randn(2, 2, q_len, 8), torch.randn(2, 2, q_len, 8))
    query = torch.randn(2, 4, q_len, 8)  # 2 query heads per KV head
    got = ragged_attention(query, layer.store, 0.35)
    assert got.shape == (2, q_len, 4, 8)
    assert torch.allclose(got, _dense_reference(query, layer, 0.35), atol=1e-6)


def test_batch_selection_keeps_each_rows_own_lengths():
    layer, _, _ = _layer(b=3, h=2, n=4)
    layer.keep_tokens(torch.tensor([[[1, 1, 1, 1], [1, 0, 0, 0]], [[1, 1, 0, 0], [1, 1, 1, 0]],
                                    [[0, 0, 0, 1], [1, 1, 1, 1]]], dtype=torch.bool))
    before = layer.kept_positions()
    keys = layer.store.keys.clone()
    layer.batch_select_indices(torch.tensor([2, 0]))
    assert layer.kept_positions() == [before[2], before[0]]
    assert torch.equal(layer.store.keys, torch.cat([keys[10:], keys[:5]]))
    layer.batch_repeat_interleave(2)
    assert layer.kept_positions() == [before[2], before[2], before[0], before[0]]


def test_empty_store_is_uniform_and_holds_no_tokens():
    store = RaggedStore.empty(1, 2, torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))
    assert store.uniform_length() == 0 and store.nbytes() == 1 * 2 * 4
