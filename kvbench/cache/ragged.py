"""A ragged per-KV-head cache: every (batch row, KV head) keeps its own number of tokens, stored packed.

Head-wise methods (AdaKV, Feng et al. 2024, arXiv:2407.11550; DuoAttention, Xiao et al. 2024,
arXiv:2410.10819) give each KV head its own budget. Their peers do not free that memory: kvpress *masks* the
evicted keys (the full cache stays allocated, its own comment says so) and KVCache-Factory stores the cache per
*query* head on GQA models unless a flag is set. kvbench stores exactly what is kept:

* :class:`RaggedStore` -- ``keys`` ``[T, d]`` and ``values`` ``[T, dv]``, ``T = Σ n_{b,h}``, rows in (batch,
  KV head) order, each row's tokens in position order; ``lengths`` ``[b, h]`` (int32) and the logical
  ``positions`` ``[T]`` (int32) of every stored token. ``nbytes()`` counts all four tensors. No padding.
* :class:`RaggedLayer` -- a kvbench cache layer on that store. While every row holds the same tokens count
  (the prefill, before any head-wise eviction) the store *is* the uniform layout: ``update`` returns views
  ``[b, h, S, d]`` of the packed tensors (no copy), the model's own attention runs on them, score requests work
  as for every evicting layer, and the logits are bit for bit those of :class:`~kvbench.cache.base.EvictingLayer`
  keeping the same tokens (tested). Once rows differ, ``update`` hands the store to the attention wrapper
  (:mod:`kvbench.cache.ragged_attention`: a per-row loop over views on CPU, flash-attn's varlen kernel on CUDA).
* :class:`RaggedCache` -- a cache of such layers.

Appending ``n`` tokens to every row rebuilds the packed tensors once (a scatter into a new ``[T + R·n, d]``
tensor), the same copy ``torch.cat`` costs the uniform layer. Positions stay logical, as for every evicting
layer: ``get_seq_length`` is the tokens seen, so RoPE positions of new tokens are exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kvbench.cache.base import KVCache, KVLayer, tensor_nbytes
from kvbench.cache.ragged_attention import hand_off, ragged_attention


class RaggedStore:
    """Packed keys/values of rows that keep different numbers of tokens (see the module docstring)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor, positions: torch.Tensor):
        self.keys, self.values, self.lengths, self.positions = keys, values, lengths, positions

    @classmethod
    def empty(cls, batch: int, heads: int, key_like: torch.Tensor, value_like: torch.Tensor) -> "RaggedStore":
        return cls(key_like.new_empty(0, key_like.shape[-1]), value_like.new_empty(0, value_like.shape[-1]),
                   torch.zeros(batch, heads, dtype=torch.int32, device=key_like.device),
                   torch.zeros(0, dtype=torch.int32, device=key_like.device))

    @property
    def rows(self) -> int:
        return self.lengths.numel()

    def uniform_length(self) -> int | None:
        """The common row length, or None when rows differ."""
        if self.rows == 0:
            return 0
        first = int(self.lengths.flatten()[0])
        return first if bool((self.lengths == first).all()) else None

    def as_uniform(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views ``[b, h, S, d]`` of the packed keys/values (every row holds ``length`` tokens)."""
        b, h = self.lengths.shape
        return self.keys.view(b, h, length, -1), self.values.view(b, h, length, -1)

    def row_ids(self) -> torch.Tensor:
        """The row (b·h + KV head) of each stored token ``[T]``."""
        return torch.repeat_interleave(torch.arange(self.rows, device=self.keys.device), self.lengths.flatten().long())

    def append(self, keys: torch.Tensor, values: torch.Tensor, first_position: int) -> None:
        """Add ``n`` new tokens ``[b, h, n, d]`` at the end of every row (logical positions from ``first_position``)."""
        b, h, n = keys.shape[:3]
        lengths = self.lengths.flatten().long()
        offsets = F.pad(lengths.cumsum(0), (1, 0))[:-1]
        new_offsets = offsets + torch.arange(self.rows, device=keys.device) * n
        old_dest = torch.arange(self.keys.shape[0], device=keys.device) + torch.repeat_interleave(
            new_offsets - offsets, lengths)
        new_dest = (new_offsets + lengths)[:, None] + torch.arange(n, device=keys.device)
        total = self.keys.shape[0] + self.rows * n
        self.keys = _scatter(self.keys, keys.reshape(-1, keys.shape[-1]), old_dest, new_dest.flatten(), total)
        self.values = _scatter(self.values, values.reshape(-1, values.shape[-1]), old_dest, new_dest.flatten(), total)
        new_positions = torch.arange(first_position, first_position + n, dtype=torch.int32, device=keys.device)
        self.positions = _scatter(self.positions[:, None], new_positions.repeat(self.rows)[:, None], old_dest,
                                  new_dest.flatten(), total)[:, 0]
        self.lengths = self.lengths + n

    def keep(self, kept: torch.Tensor) -> None:
        """Keep the stored tokens where ``kept`` ``[T]`` (bool) is True; order within each row is preserved."""
        rows = self.row_ids()[kept]
        self.keys, self.values, self.positions = self.keys[kept], self.values[kept], self.positions[kept]
        self.lengths = torch.bincount(rows, minlength=self.rows).to(torch.int32).view_as(self.lengths)

    def select_batch(self, fn) -> None:
        """Apply a batch selection ``fn`` (index_select, repeat_interleave, indexing along dim 0) to every row."""
        b, h = self.lengths.shape
        chosen = fn(torch.arange(b, device=self.keys.device)).tolist()
        per_batch = self.lengths.sum(dim=1).long().tolist()
        starts = [sum(per_batch[:i]) for i in range(b)]
        index = torch.cat([torch.arange(starts[i], starts[i] + per_batch[i], device=self.keys.device)
                           for i in chosen]) if chosen else torch.zeros(0, dtype=torch.long)
        self.keys, self.values, self.positions = self.keys[index], self.values[index], self.positions[index]
        self.lengths = self.lengths[chosen]

    def nbytes(self) -> int:
        return tensor_nbytes(self.keys, self.values, self.lengths, self.positions)

    def attend(self, module, query, key, value, fn, scaling: float, kwargs) -> tuple[torch.Tensor, None]:
        """The attention wrapper's call (:func:`~kvbench.cache.ragged_attention.take`): attend over the packed rows."""
        return ragged_attention(query, self, scaling), None


def _scatter(old: torch.Tensor, new: torch.Tensor, old_dest: torch.Tensor, new_dest: torch.Tensor,
             total: int) -> torch.Tensor:
    out = old.new_empty(total, old.shape[-1])
    out[old_dest] = old
    out[new_dest] = new
    return out


class RaggedLayer(KVLayer):
    """A cache layer on a :class:`RaggedStore`. Subclasses decide which tokens each row keeps:
    :meth:`after_append` is called after each append (``first``: the layer's first forward) and evicts with
    :meth:`keep_tokens`, or requests attention scores (or queries) and evicts when they arrive, inside the attention
    call (which then reads the keys as they were before that eviction). A layer that evicts at once, in
    :meth:`after_append` (DuoAttention's streaming heads), has the forward attend over what it keeps -- except the
    first forward, and any forward whose new tokens outnumber a row's kept ones: those attend over every token."""

    def __init__(self):
        super().__init__()
        self.store: RaggedStore | None = None
        self.seen = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.store = RaggedStore.empty(*key_states.shape[:2], key_states, value_states)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        first = not self.is_initialized
        if first:
            self.lazy_initialization(key_states, value_states)
        self.store.append(key_states, value_states, self.seen)
        self.seen += key_states.shape[-2]
        keys, values = self._readable(key_states)
        stored = self.store.keys
        self.after_append(keys, first)
        evicted = self.store.keys is not stored and not getattr(self, "awaiting_scores", False)
        if evicted and not first and int(self.store.lengths.min()) >= key_states.shape[-2]:
            keys, values = self._readable(key_states)  # evicted at once: the forward attends over what is kept
        return keys, values

    def _readable(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the attention call reads: views ``[b, h, S, d]`` while rows are uniform (the model's own attention),
        else placeholders that hand the packed store to the attention wrapper."""
        length = self.store.uniform_length()
        if length is not None:
            return self.store.as_uniform(length)
        return hand_off(self.store, *like.shape[:2], like.shape[-1], like)

    def after_append(self, keys: torch.Tensor, first: bool) -> None:
        """Evict now (:meth:`keep_tokens`) or request the scores a method needs. Default: keep everything."""

    def keep_tokens(self, kept: torch.Tensor) -> None:
        """Keep the stored tokens where ``kept`` is True: ``[b, h, S]`` while rows are uniform, else packed ``[T]``."""
        self.store.keep(kept.flatten())

    def lengths(self) -> torch.Tensor:
        """Tokens stored per (batch row, KV head) ``[b, h]``."""
        return self.store.lengths

    def kept_positions(self) -> list[list[list[int]]]:
        """Logical positions each (batch row, KV head) keeps, as nested lists (rows differ in length)."""
        b, h = self.store.lengths.shape
        flat = self.store.positions.split(self.store.lengths.flatten().tolist())
        return [[flat[i * h + j].tolist() for j in range(h)] for i in range(b)]

    def stored_tokens(self) -> int:
        """The longest row (a ragged layer has no single length; :meth:`lengths` has each row's)."""
        return int(self.store.lengths.max()) if self.is_initialized and self.store.rows else 0

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        stored = self.stored_tokens()
        return stored + query_length, self.seen - stored

    def nbytes(self) -> int:
        return self.store.nbytes() if self.is_initialized else 0

    def reset(self) -> None:
        self.store = None
        self.seen = 0
        self.is_initialized = False

    def _select_batch(self, fn) -> None:
        if self.is_initialized:
            self.store.select_batch(fn)

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(f"a {type(self).__name__} cannot be cropped: evicted tokens are gone")


class RaggedCache(KVCache):
    """A cache of :class:`RaggedLayer` s, one per decoder layer."""

    def compress(self) -> None:
        for layer in self.layers:
            check = getattr(layer, "check_evicted", None)
            if check is not None:
                check()

    def notes(self) -> list[str]:
        return list(dict.fromkeys(note for layer in self.layers if (note := getattr(layer, "note", None))))

    def kept_positions(self, layer_idx: int = 0) -> list[list[list[int]]]:
        return self.layers[layer_idx].kept_positions()

    def lengths(self, layer_idx: int = 0) -> torch.Tensor:
        return self.layers[layer_idx].lengths()
