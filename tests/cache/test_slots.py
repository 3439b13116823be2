"""SlotStore: preallocated slots written in place, grown only when a write does not fit."""

from __future__ import annotations

import torch

from kvbench.cache.slots import SlotStore


def tokens(b: int, r: int, n: int, start: int = 0, d: int = 2) -> torch.Tensor:
    """``[b, r, n, d]`` whose every value names its token (start + slot)."""
    return torch.arange(start, start + n, dtype=torch.float32).view(1, 1, n, 1).expand(b, r, n, d).clone()


def test_a_reserved_store_writes_every_step_into_the_same_allocation():
    store = SlotStore(1)
    store.reserve(10)
    store.write(tokens(2, 3, 6))
    buffer = store.arrays[0]
    for step in range(4):
        (view,) = store.write(tokens(2, 3, 1, start=6 + step))
        assert store.arrays[0] is buffer and view.data_ptr() == buffer.data_ptr()
    assert store.capacity == 10 and store.filled == 10
    assert view[0, 0, :, 0].tolist() == list(range(10))


def test_without_a_reservation_the_store_holds_exactly_what_it_was_given():
    store = SlotStore(2)
    store.write(tokens(1, 2, 5), tokens(1, 2, 5, start=100))
    assert store.capacity == 5 and store.nbytes() == 2 * 1 * 2 * 5 * 2 * 4
    keys, values = store.write(tokens(1, 2, 2, start=5), tokens(1, 2, 2, start=105))
    assert store.capacity == 7
    assert keys[0, 1, :, 1].tolist() == list(range(7)) and values[0, 0, :, 0].tolist() == list(range(100, 107))


def test_nbytes_counts_the_allocated_capacity_not_the_filled_slots():
    store = SlotStore(1)
    store.reserve(32)
    store.write(tokens(1, 1, 4))
    assert store.filled == 4 and store.nbytes() == 32 * 2 * 4


def test_replace_moves_the_last_slot_into_the_evicted_one_per_row():
    store = SlotStore(1)
    store.write(tokens(1, 2, 5))
    store.replace(torch.tensor([[1, 4]]))  # row 0 evicts token 1, row 1 evicts the last slot itself
    (view,) = store.views()
    assert view[0, 0, :, 0].tolist() == [0, 4, 2, 3]
    assert view[0, 1, :, 0].tolist() == [0, 1, 2, 3]


def test_keep_gathers_the_chosen_slots_per_row_into_an_exact_allocation():
    store = SlotStore(1)
    store.reserve(20)
    store.write(tokens(1, 2, 6))
    store.keep(torch.tensor([[[0, 2, 5], [1, 3, 4]]]))
    assert store.capacity == 3 and store.filled == 3
    assert store.views()[0][0, :, :, 0].tolist() == [[0, 2, 5], [1, 3, 4]]


def test_drop_after_removes_one_slot_per_row_keeping_the_order_and_the_allocation():
    store = SlotStore(1)
    store.reserve(8)
    store.write(tokens(1, 2, 6))
    buffer = store.arrays[0]
    store.drop_after(2, torch.tensor([[0, 3]]))  # row 0 drops slot 2, row 1 slot 5; slots 0-1 untouched
    assert store.filled == 5 and store.arrays[0] is buffer
    assert store.views()[0][0, :, :, 0].tolist() == [[0, 1, 3, 4, 5], [0, 1, 2, 3, 4]]


def test_swap_exchanges_a_fixed_slot_with_one_slot_per_row():
    store = SlotStore(1)
    store.write(tokens(1, 2, 4))
    store.swap(torch.tensor([[0, 3]]), 3)  # row 1 swaps slot 3 with itself
    assert store.views()[0][0, :, :, 0].tolist() == [[3, 1, 2, 0], [0, 1, 2, 3]]


def test_fit_shrinks_an_unreserved_store_to_its_filled_slots_and_leaves_a_reserved_one():
    free, reserved = SlotStore(1), SlotStore(1)
    reserved.reserve(6)
    for store in (free, reserved):
        store.write(tokens(1, 1, 5))
        store.crop(3)
        store.fit()
    assert (free.capacity, reserved.capacity) == (2, 6) and free.views()[0][0, 0, :, 0].tolist() == [0, 1]
    free.crop(2)
    free.fit()
    assert free.arrays == [None] and free.nbytes() == 0
