"""Slots: tensors that share a token dimension (dim 2), allocated with a capacity and written in place.

Why: transformers' ``DynamicCache`` appends with ``torch.cat``, which copies the whole cache at every decode
step (48% of ``full``'s decode profile in reports/efficiency_acceptance.md), and an evicting layer that also
``gather``\\ s its kept tokens copies it twice. A serving engine preallocates (transformers' ``StaticCache``,
vLLM's paged blocks), so a step writes one token per layer. :class:`SlotStore` has ``StaticCache``'s contract
-- a capacity fixed up front, a forward's tokens copied into the next free slots -- but attention reads a *view*
of the filled slots, so no mask over empty slots is needed and a step's attention costs what it would on an
exact-size cache.

The rules:

* **Capacity.** :meth:`SlotStore.reserve` fixes it before the first write (the caller knows prompt + new
  tokens: the efficiency suite). Without a reservation a write that does not fit
  reallocates to exactly what it needs -- one copy, the cost of ``DynamicCache``'s ``cat`` -- so paths that
  cannot say their final length (lm-eval's scoring) hold exactly what ``DynamicCache`` would.
* **Bytes.** :meth:`SlotStore.nbytes` counts the allocated capacity, filled or not: that is what is held in memory
  (a reserved cache reports prompt + new tokens from its first forward on, and the record says so).
* **Order.** Slot order need not be logical order: an evicting layer overwrites an evicted slot with the newest
  token (:meth:`SlotStore.replace`), so every rule that means "recent" or "sinks" reads the logical positions
  kept beside the slots (:class:`~kvbench.cache.base.TokenBook`), never the slot index. Attention does not care:
  every stored token precedes every new query, and the new tokens of a forward sit in order after them, so the
  causal mask of a multi-token forward stays exact.
"""

from __future__ import annotations

import torch


def _along(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``index`` ``[b, r, K]`` broadcast to ``like``'s trailing dims (``[b, r, K, d]`` for keys)."""
    extra = like.shape[3:]
    return index.reshape(*index.shape, *(1,) * len(extra)).expand(*index.shape, *extra)


class SlotStore:
    """``n_arrays`` tensors ``[b, r, C, ...]`` with ``filled`` ≤ C slots in use (the same in every row)."""

    def __init__(self, n_arrays: int):
        self.arrays: list[torch.Tensor | None] = [None] * n_arrays
        self.filled = 0
        self.reserved = 0

    @property
    def capacity(self) -> int:
        return 0 if self.arrays[0] is None else self.arrays[0].shape[2]

    def reserve(self, slots: int) -> None:
        """Allocate ``slots`` slots at the first write (a later write that needs more still fits, by reallocating)."""
        self.reserved = slots

    def views(self) -> list[torch.Tensor]:
        """The filled slots of every array (views: no copy)."""
        return [a[:, :, : self.filled] for a in self.arrays]

    def write(self, *new: torch.Tensor) -> list[torch.Tensor]:
        """Copy ``new`` (one tensor per array, ``[b, r, n, ...]``) into the next ``n`` slots; the filled views."""
        n = new[0].shape[2]
        if self.filled + n > self.capacity:
            self._grow(new, max(self.filled + n, self.reserved))
        with self._writable():
            for array, x in zip(self.arrays, new):
                array[:, :, self.filled : self.filled + n].copy_(x)
        self.filled += n
        return self.views()

    def _grow(self, like: tuple[torch.Tensor, ...], capacity: int) -> None:
        """Reallocate to ``capacity`` slots, keeping the filled ones (the one copy a growth costs)."""
        grown = []
        for array, x in zip(self.arrays, like):
            bigger = x.new_empty(*x.shape[:2], capacity, *x.shape[3:])
            if array is not None and self.filled:
                bigger[:, :, : self.filled].copy_(array[:, :, : self.filled])
            grown.append(bigger)
        self.arrays = grown

    def keep(self, index: torch.Tensor) -> None:
        """Keep the slots ``index`` ``[b, r, K]`` of every row, in that order, in a new exact-size allocation."""
        self.arrays = [a.gather(2, _along(index, a)) for a in self.arrays]
        self.filled = index.shape[-1]

    def replace(self, slot: torch.Tensor) -> None:
        """Evict slot ``slot`` ``[b, r]`` of every row by moving the last filled slot into it (O(1 token) per row;
        a row that evicts its last slot just drops it)."""
        last = self.filled - 1
        with self._writable():
            for array in self.arrays:
                moved = array[:, :, last : last + 1].clone()
                array.scatter_(2, _along(slot[..., None], array), moved)
        self.filled = last

    def swap(self, slot: torch.Tensor, fixed: int) -> None:
        """Exchange slot ``slot`` ``[b, r]`` of every row with slot ``fixed`` (the same in every row)."""
        with self._writable():
            for array in self.arrays:
                at = _along(slot[..., None], array)
                other = array.gather(2, at)
                array.scatter_(2, at, array[:, :, fixed : fixed + 1].clone())
                array[:, :, fixed : fixed + 1] = other

    def drop_after(self, start: int, drop: torch.Tensor) -> None:
        """Remove slot ``start + drop`` (``drop`` ``[b, r]``) of every row from the filled slots ``[start, filled)``,
        keeping the order of the others: a copy of ``filled − start`` slots, not of the store."""
        kept = drop_one([a[:, :, start : self.filled] for a in self.arrays], drop)
        self.filled = start
        if kept[0].shape[2]:
            self.write(*kept)

    def _writable(self):
        """Slots allocated under ``torch.inference_mode`` (the protocol's forwards) are inference tensors, which
        only accept in-place writes inside it: write them there, whatever mode the caller is in."""
        return torch.inference_mode(self.arrays[0].is_inference())

    def hold(self, *arrays: torch.Tensor) -> None:
        """Hold exactly ``arrays`` (every slot filled): what an eviction that rebuilds the store leaves. A later
        write that does not fit grows to the reservation, as a first write would."""
        self.arrays = list(arrays)
        self.filled = arrays[0].shape[2]

    def fit(self) -> None:
        """Without a reservation, reallocate to exactly the filled slots (none: no arrays), as a store built by
        ``cat`` and slicing would hold; a reserved store keeps its capacity."""
        if self.reserved or self.arrays[0] is None or self.capacity == self.filled:
            return
        self.arrays = [a[:, :, : self.filled].clone() if self.filled else None for a in self.arrays]

    def crop(self, n: int) -> None:
        """Forget the last ``n`` filled slots."""
        self.filled -= n

    def select_batch(self, fn) -> None:
        """Apply a batch selection (beam reorder, repeat) to every array."""
        if self.arrays[0] is not None:
            self.arrays = [fn(a) for a in self.arrays]

    def nbytes(self) -> int:
        """Bytes of the allocated capacity (filled or not)."""
        return sum(a.element_size() * a.nelement() for a in self.arrays if a is not None)


def drop_one(arrays: list[torch.Tensor], drop: torch.Tensor) -> list[torch.Tensor]:
    """Each array ``[b, r, L, ...]`` without its slot ``drop`` ``[b, r]`` (one per row), order kept (L − 1 slots)."""
    length = arrays[0].shape[2]
    index = torch.arange(length - 1, device=drop.device).expand(*drop.shape, length - 1)
    index = index + (index >= drop[..., None])
    return [a.gather(2, _along(index, a)) for a in arrays]
