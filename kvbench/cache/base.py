"""The contract every cache kvbench builds, and the bookkeeping that eviction shares.

* :class:`KVCache` -- a transformers ``Cache`` that says what it holds: ``nbytes()`` is the sum of
  ``element_size × nelement`` over *every* tensor it keeps (keys, values, scores, positions, norms,
  indices, codes...), and ``compress()`` is the end-of-prefill step. ``get_seq_length()`` is the
  *logical* length (tokens seen, evicted or not), so positions of new tokens follow it.
* :class:`PlainCache` -- transformers' ``DynamicCache`` under that contract (``full`` and the head
  methods, whose savings are in the model's shape).
* :class:`TokenBook` -- which tokens a store keeps: per row (batch × KV head, or × pair) their logical
  positions and, optionally, accumulated scores; tokens seen. Evicting layers and evicting merged pairs
  keep their bookkeeping here, so ``keep(indices)`` means the same everywhere.
* :class:`EvictingLayer` -- keys and values of the tokens a :class:`TokenBook` keeps, per KV head (real
  eviction). H2O and the eviction baselines subclass it and only decide *which* tokens to keep.

Bytes are never guessed: :func:`kvbench.cache.accounting.cache_nbytes` reads ``nbytes()`` of a
:class:`KVCache`, counts a transformers cache only when every layer is a plain dynamic layer, and
refuses anything else (a quantized cache counted by its keys/values would be under-counted silently).

Over 300 lines because the contract and the evicting layer that most methods build on belong together; the slot
mechanics they share live in :mod:`kvbench.cache.slots`.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from kvbench.cache.quantized_eviction import evict_in_place
from kvbench.cache.slots import SlotStore


def tensor_nbytes(*tensors: torch.Tensor | None) -> int:
    """Sum of ``element_size * nelement`` over the given tensors (``None`` counts 0)."""
    return sum(t.element_size() * t.nelement() for t in tensors if t is not None)


#: transformers layers whose only tensors are ``keys`` and ``values`` (subclasses may hold more: not listed).
PLAIN_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)


def plain_layer_nbytes(layer) -> int:
    """Every tensor a plain transformers layer holds: keys, values and, in a sliding-window layer, the window
    size it keeps as a tensor (a few bytes, counted so ``nbytes`` is every tensor, as the contract says)."""
    if type(layer) not in PLAIN_LAYERS:
        raise TypeError(f"cannot count the bytes of a {type(layer).__name__} cache layer: kvbench counts "
                        f"{', '.join(t.__name__ for t in PLAIN_LAYERS)} and its own layers only")
    if not layer.is_initialized:
        return 0
    return tensor_nbytes(*(v for v in vars(layer).values() if isinstance(v, torch.Tensor)))


class KVCache(Cache):
    """Every cache kvbench builds. Its layers implement ``nbytes()`` (see :class:`KVLayer`)."""

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def compress(self) -> None:
        """End-of-prefill compression (idempotent). Default: nothing to do."""

    def reserve(self, total_tokens: int) -> None:
        """A hint before the first forward: the cache will see ``total_tokens`` tokens in all (prompt + new
        tokens), so it may allocate them at once (:class:`~kvbench.cache.preallocated.PreallocatedCache`).
        Default: ignored."""

    def stored_tokens(self, layer_idx: int = 0) -> int:
        """Tokens a layer stores per KV head (≤ the logical length)."""
        return self.layers[layer_idx].stored_tokens()

    def notes(self) -> list[str]:
        """How the cache had to adapt the method to this sequence, for the run record (e.g. PyramidKV's
        per-layer budgets clamped to the prompt). Asked after each context compression; default none."""
        return []


class PlainCache(KVCache, DynamicCache):
    """transformers' ``DynamicCache`` (one layer per decoder layer, built from the model config) with bytes."""

    def nbytes(self) -> int:
        return sum(plain_layer_nbytes(layer) for layer in self.layers)

    def stored_tokens(self, layer_idx: int = 0) -> int:
        layer = self.layers[layer_idx]
        return layer.keys.shape[-2] if layer.is_initialized else 0


class KVLayer(CacheLayerMixin):
    """A kvbench cache layer: reports the bytes of every tensor it holds and the tokens it stores."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def nbytes(self) -> int:
        raise NotImplementedError

    def stored_tokens(self) -> int:
        raise NotImplementedError

    def get_max_length(self) -> int:
        return -1

    def _select_batch(self, fn) -> None:
        """Apply ``fn`` (a selection along the batch dim) to every tensor the layer holds."""
        raise NotImplementedError

    # generate()'s batch operations, all through _select_batch
    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._select_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._select_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._select_batch(lambda t: t[indices, ...])


class PlainLayer(DynamicLayer):
    """transformers' dynamic layer (every token's keys and values) under the kvbench layer contract."""

    def nbytes(self) -> int:
        return tensor_nbytes(self.keys, self.values) if self.is_initialized else 0

    def stored_tokens(self) -> int:
        return self.keys.shape[-2] if self.is_initialized else 0


class TokenBook:
    """Logical positions ``[B, R, S]`` (int32) of the S tokens a store keeps per row, optional accumulated
    ``scores`` ``[B, R, S]`` (float32), and how many tokens the store has seen. Rows (R) are KV heads, or
    one row per merged pair (a shared token set). Held in :class:`~kvbench.cache.slots.SlotStore` slots beside
    the keys and values: slot ``i`` of the book describes slot ``i`` of the store, so after an in-place eviction
    (:meth:`replace`) slot order is not logical order -- rules read ``positions``, never the slot index."""

    def __init__(self, with_scores: bool = False):
        self.with_scores = with_scores
        self.slots = SlotStore(2 if with_scores else 1)
        self.seen = 0

    @property
    def length(self) -> int:
        return self.slots.filled

    @property
    def positions(self) -> torch.Tensor | None:
        return None if self.slots.arrays[0] is None else self.slots.views()[0]

    @property
    def scores(self) -> torch.Tensor | None:
        return None if not self.with_scores or self.slots.arrays[1] is None else self.slots.views()[1]

    def append(self, batch: int, rows: int, n_new: int, device) -> None:
        """Book ``n_new`` new tokens (positions = tokens seen so far, score 0) in the next slots."""
        new = [torch.arange(self.seen, self.seen + n_new, dtype=torch.int32, device=device).expand(batch, rows, n_new)]
        if self.with_scores:
            new.append(torch.zeros(batch, rows, n_new, dtype=torch.float32, device=device))
        self.slots.write(*new)
        self.seen += n_new

    def add_scores(self, column_sums: torch.Tensor) -> None:
        scores = self.scores
        if column_sums.shape != scores.shape:
            raise RuntimeError(f"scores of shape {tuple(column_sums.shape)} for a store of {tuple(scores.shape)}")
        scores.add_(column_sums)

    def keep(self, index: torch.Tensor) -> None:
        """Keep the tokens in slots ``index`` ``[B, R, K]`` of every row; drop the rest."""
        self.slots.keep(index)

    def replace(self, slot: torch.Tensor) -> None:
        """Drop the token in slot ``slot`` ``[B, R]`` of every row; the last slot moves into it."""
        self.slots.replace(slot)

    def sorted_positions(self) -> torch.Tensor | None:
        """``positions`` sorted ascending per row (logical order, whatever the slot order)."""
        positions = self.positions
        return None if positions is None else torch.sort(positions, dim=-1).values

    def select_batch(self, fn) -> None:
        self.slots.select_batch(fn)

    def nbytes(self) -> int:
        return self.slots.nbytes()


class EvictingLayer(KVLayer):
    """Keys and values ``[b, h, S, d]`` of the tokens its :class:`TokenBook` keeps, per KV head.

    ``update`` writes the new tokens into the next slots of a :class:`~kvbench.cache.slots.SlotStore` and returns
    every stored key/value (attention runs over all of them); subclasses evict with :meth:`keep` (any number of
    tokens: a gather into an exact-size store) or :meth:`evict_lowest` (by a priority per slot). Evicting one
    token -- a decode step over the budget -- is done in place: the newest token moves into the evicted slot, so
    a step's cache work is O(1 token), not the O(cache) of ``cat`` + ``gather``; only the first decode step after
    an eviction reallocates once, to hold the budget + 1. Hence slot order is not logical order: rules rank by the
    book's ``positions`` (:meth:`kept_positions` sorts them). ``in_place = False`` always evicts by ``gather``, so
    slots stay in logical order: the previous layout, kept so tests can compare the two.

    Positions stay logical: ``get_seq_length`` is the number of tokens seen and ``get_mask_sizes`` gives the
    stored length with the offset ``seen − stored``, so a multi-token forward after eviction attends to every kept
    token plus the causally earlier new ones (the kept tokens all precede the new ones, in whatever slot order).
    Masks are exact without padding (equal-length prompts).

    :meth:`quantize_with` (``combined`` with ``tokens`` and ``bits``) stores the kept keys and values as
    quantized streams (:class:`kvbench.cache.quantized_stream.QuantizedStream`) instead: the same eviction, applied
    to codes, one token in place too (:func:`kvbench.cache.quantized_eviction.evict_in_place`).
    """

    #: Evict one token by overwriting its slot (True) or by gathering the kept ones (False: slots in logical order).
    in_place = True

    def __init__(self, with_scores: bool = False):
        super().__init__()
        self.book = TokenBook(with_scores)
        self.store = SlotStore(2)
        self.quantization = None
        self.key_stream = self.value_stream = None
        self.pending: torch.Tensor | None = None  # a slot per row to evict once this forward's attention is done

    def quantize_with(self, quantization) -> None:
        """Store keys and values quantized (a :class:`kvbench.cache.kivi.Quantization`); before the first forward."""
        if self.is_initialized:
            raise RuntimeError("quantize_with() must come before the cache's first forward")
        self.quantization = quantization

    # the stored tensors and the bookkeeping, by name (views of the slots: no copy)
    @property
    def keys(self) -> torch.Tensor | None:
        self.settle()
        return None if self.store.arrays[0] is None else self.store.views()[0]

    @keys.setter
    def keys(self, value) -> None:
        if value is not None:
            raise AttributeError("an evicting layer's keys are written through update()")

    @property
    def values(self) -> torch.Tensor | None:
        self.settle()
        return None if self.store.arrays[1] is None else self.store.views()[1]

    @values.setter
    def values(self, value) -> None:
        if value is not None:
            raise AttributeError("an evicting layer's values are written through update()")

    @property
    def positions(self) -> torch.Tensor | None:
        """Logical positions ``[b, h, S]`` in slot order (ascending only while nothing was evicted in place)."""
        self.settle()
        return self.book.positions

    @property
    def scores(self) -> torch.Tensor | None:
        self.settle()
        return self.book.scores

    @property
    def seen(self) -> int:
        return self.book.seen

    def kept_positions(self) -> torch.Tensor | None:
        """Logical positions ``[b, h, S]`` of the kept tokens, sorted ascending per KV head."""
        self.settle()
        return self.book.sorted_positions()

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        if self.quantization is not None:
            self.key_stream, self.value_stream = self.quantization.stream("keys"), self.quantization.stream("values")
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.settle()
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        b, h, n_new = key_states.shape[:3]
        self.book.append(b, h, n_new, self.device)
        if self.quantization is not None:  # stored (dequantized) + the new tokens exactly, then quantize by the rule
            keys, values = self.key_stream.read(key_states), self.value_stream.read(value_states)
            self.key_stream.append(key_states)
            self.value_stream.append(value_states)
            return keys, values
        keys, values = self.store.write(key_states, value_states)
        return keys, values

    def keep(self, index: torch.Tensor) -> None:
        """Keep the stored tokens in slots ``index`` ``[b, h, K]`` of every KV head (ascending; quantized streams
        take them in logical order, which puts their quantized tokens first in any slot order)."""
        self.settle()
        if self.quantization is not None:  # kept tokens in logical order: a stream's quantized ones come first
            index = index.gather(2, self.book.positions.gather(2, index).argsort(dim=-1))
            self.key_stream.keep(index)
            self.value_stream.keep(index)
        else:
            self.store.keep(index)
        self.book.keep(index)

    def evict_lowest(self, priority: torch.Tensor, count: int, deferred: bool = False) -> None:
        """Drop the ``count`` tokens of lowest ``priority`` ``[b, h, S]`` (one per slot) from every KV head.

        One token is evicted in place (:meth:`~kvbench.cache.slots.SlotStore.replace`), more by :meth:`keep`.
        ``deferred``: this forward's attention has not run yet and reads the slots ``update`` returned, so an
        in-place eviction waits until it has (:meth:`settle`: at the next forward, or when anything reads the
        stored tokens); a gather leaves those tensors intact and happens at once."""
        self.settle()
        if count <= 0:
            return
        if count == 1 and self.in_place:
            self.pending = priority.argmin(dim=-1)
            if not deferred:
                self.settle()
            return
        kept = torch.topk(priority, priority.shape[-1] - count, dim=-1, sorted=False).indices
        self.keep(torch.sort(kept, dim=-1).values)

    def settle(self) -> None:
        """Apply a deferred in-place eviction: the last slot moves into the evicted one."""
        if self.pending is not None:
            slot, self.pending = self.pending, None
            if self.quantization is not None:
                evict_in_place([self.key_stream, self.value_stream], self.book, slot)
                return
            self.store.replace(slot)
            self.book.replace(slot)

    def stored_tokens(self) -> int:
        self.settle()
        if not self.is_initialized:
            return 0
        return self.key_stream.length if self.quantization is not None else self.store.filled

    def get_seq_length(self) -> int:
        """The logical length: tokens seen, evicted or not."""
        return self.book.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        stored = self.stored_tokens()
        return stored + query_length, self.book.seen - stored

    def nbytes(self) -> int:
        """Every tensor held: the allocated slots (filled or not) and the book, or the quantized streams, and the
        slot index of an eviction waiting for the forward's attention (a few bytes)."""
        if self.quantization is not None and self.is_initialized:
            return (self.key_stream.nbytes() + self.value_stream.nbytes() + self.book.nbytes()
                    + tensor_nbytes(self.pending))
        return self.store.nbytes() + self.book.nbytes() + tensor_nbytes(self.pending)

    def reset(self) -> None:
        self.pending = None
        self.store = SlotStore(2)
        self.key_stream = self.value_stream = None
        self.is_initialized = False
        self.book = TokenBook(self.book.with_scores)

    def _select_batch(self, fn) -> None:
        self.settle()
        if self.is_initialized:
            if self.quantization is not None:
                self.key_stream.select_batch(fn)
                self.value_stream.select_batch(fn)
            else:
                self.store.select_batch(fn)
            self.book.select_batch(fn)

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(f"a {type(self).__name__} cannot be cropped: evicted tokens are gone")
