"""The uncompressed cache at its fastest: every token's keys and values in preallocated slots.

``full`` is the baseline every speed-up is measured against, so it must be the cache a user who cares about
speed would run, not ``DynamicCache``, whose ``cat`` copies the whole cache at every decode step. transformers
ships ``StaticCache`` for that; :class:`PreallocatedCache` keeps its contract (capacity fixed up front, a step
writes one token per layer in place: :class:`~kvbench.cache.slots.SlotStore`) but returns a view of the filled
slots, so attention runs over the tokens seen, with the same causal mask a ``DynamicCache`` gets -- and the same
logits, bit for bit (tested) -- rather than over the whole capacity under a mask.

The capacity comes from :meth:`PreallocatedCache.reserve` (prompt + new tokens, which the efficiency suite
knows) before the first forward; without it the first forward allocates exactly its tokens and
every later forward that does not fit reallocates to exactly what it needs (``DynamicCache``'s cost and bytes).
``nbytes()`` is the allocated capacity: what the cache holds in memory, filled or not.

Models with sliding-window layers keep ``DynamicCache`` (:func:`kvbench.methods.base.uncompressed_cache`): a
window layer drops old tokens, which these slots do not model.
"""

from __future__ import annotations

import torch

from kvbench.cache.base import KVCache, KVLayer
from kvbench.cache.slots import SlotStore

#: ``method.cache_layout`` values: preallocated slots, or transformers' DynamicCache.
LAYOUTS = ("static", "dynamic")


class PreallocatedLayer(KVLayer):
    """One decoder layer's keys and values ``[b, h, C, d]``, the first ``seen`` slots filled."""

    is_croppable = True

    def __init__(self):
        super().__init__()
        self.store = SlotStore(2)

    @property
    def keys(self) -> torch.Tensor | None:
        return None if self.store.arrays[0] is None else self.store.views()[0]

    @keys.setter
    def keys(self, value) -> None:
        if value is not None:
            raise AttributeError("a preallocated layer's keys are written through update()")

    @property
    def values(self) -> torch.Tensor | None:
        return None if self.store.arrays[1] is None else self.store.views()[1]

    @values.setter
    def values(self, value) -> None:
        if value is not None:
            raise AttributeError("a preallocated layer's values are written through update()")

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write the new tokens into the next slots; return every token's keys and values (views)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values = self.store.write(key_states, value_states)
        return keys, values

    def get_seq_length(self) -> int:
        return self.store.filled

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.store.filled + query_length, 0

    def get_max_cache_shape(self) -> int:
        return -1

    def stored_tokens(self) -> int:
        return self.store.filled

    def nbytes(self) -> int:
        """The allocated capacity (filled or not): what is held in memory."""
        return self.store.nbytes()

    def crop(self, max_length: int) -> None:
        """Keep the first ``max_length`` tokens (negative: drop that many), as ``DynamicLayer.crop``."""
        if max_length < 0:
            max_length = self.store.filled - abs(max_length)
        if self.store.filled > max_length:
            self.store.crop(self.store.filled - max_length)

    def reset(self) -> None:
        self.store = SlotStore(2)
        self.is_initialized = False

    def _select_batch(self, fn) -> None:
        self.store.select_batch(fn)


class PreallocatedCache(KVCache):
    """One :class:`PreallocatedLayer` per decoder layer."""

    def __init__(self, num_layers: int):
        super().__init__(layers=[PreallocatedLayer() for _ in range(num_layers)])

    def reserve(self, total_tokens: int) -> None:
        """Allocate ``total_tokens`` slots per layer at the first forward (prompt + the tokens to come)."""
        for layer in self.layers:
            layer.store.reserve(total_tokens)

