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
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer


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
    one row per merged pair (a shared token set)."""

    def __init__(self, with_scores: bool = False):
        self.with_scores = with_scores
        self.positions: torch.Tensor | None = None
        self.scores: torch.Tensor | None = None
        self.seen = 0

    @property
    def length(self) -> int:
        return 0 if self.positions is None else self.positions.shape[-1]

    def append(self, batch: int, rows: int, n_new: int, device) -> None:
        """Book ``n_new`` new tokens (positions = tokens seen so far, score 0)."""
        new = torch.arange(self.seen, self.seen + n_new, dtype=torch.int32, device=device).expand(batch, rows, n_new)
        self.positions = new if self.positions is None else torch.cat([self.positions, new], dim=-1)
        if self.with_scores:
            zeros = torch.zeros(batch, rows, n_new, dtype=torch.float32, device=device)
            self.scores = zeros if self.scores is None else torch.cat([self.scores, zeros], dim=-1)
        self.seen += n_new

    def add_scores(self, column_sums: torch.Tensor) -> None:
        if column_sums.shape != self.scores.shape:
            raise RuntimeError(f"scores of shape {tuple(column_sums.shape)} for a store of {tuple(self.scores.shape)}")
        self.scores += column_sums

    def keep(self, index: torch.Tensor) -> None:
        """Keep the tokens ``index`` ``[B, R, K]`` (ascending slots) of every row; drop the rest."""
        self.positions = self.positions.gather(-1, index)
        if self.scores is not None:
            self.scores = self.scores.gather(-1, index)

    def select_batch(self, fn) -> None:
        if self.positions is not None:
            self.positions = fn(self.positions)
            self.scores = None if self.scores is None else fn(self.scores)

    def nbytes(self) -> int:
        return tensor_nbytes(self.positions, self.scores)


class EvictingLayer(KVLayer):
    """Keys and values ``[b, h, S, d]`` of the tokens its :class:`TokenBook` keeps, per KV head.

    ``update`` appends the new tokens and returns every stored key/value (attention runs over all of
    them); subclasses call :meth:`keep` to evict. Positions stay logical: ``get_seq_length`` is the number
    of tokens seen and ``get_mask_sizes`` gives the stored length with the offset ``seen − stored``, so a
    multi-token forward after eviction attends to every kept token plus the causally earlier new ones.
    Masks are exact without padding (equal-length prompts).

    :meth:`quantize_with` (``combined`` with ``tokens`` and ``bits``) stores the kept keys and values as
    quantized streams (:class:`kvbench.cache.kivi.QuantizedStream`) instead: the same eviction, applied to codes.
    """

    def __init__(self, with_scores: bool = False):
        super().__init__()
        self.book = TokenBook(with_scores)
        self.quantization = None
        self.key_stream = self.value_stream = None

    def quantize_with(self, quantization) -> None:
        """Store keys and values quantized (a :class:`kvbench.cache.kivi.Quantization`); before the first forward."""
        if self.is_initialized:
            raise RuntimeError("quantize_with() must come before the cache's first forward")
        self.quantization = quantization

    # the bookkeeping, by name
    @property
    def positions(self) -> torch.Tensor | None:
        return self.book.positions

    @property
    def scores(self) -> torch.Tensor | None:
        return self.book.scores

    @property
    def seen(self) -> int:
        return self.book.seen

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        if self.quantization is not None:
            self.key_stream, self.value_stream = self.quantization.stream("keys"), self.quantization.stream("values")
        else:
            b, h = key_states.shape[:2]
            self.keys = key_states.new_empty(b, h, 0, key_states.shape[-1])
            self.values = value_states.new_empty(b, h, 0, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        b, h, n_new = key_states.shape[:3]
        self.book.append(b, h, n_new, self.device)
        if self.quantization is not None:  # stored (dequantized) + the new tokens exactly, then quantize by the rule
            keys, values = self.key_stream.read(key_states), self.value_stream.read(value_states)
            self.key_stream.append(key_states)
            self.value_stream.append(value_states)
            return keys, values
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        return self.keys, self.values

    def keep(self, index: torch.Tensor) -> None:
        """Keep the stored tokens ``index`` ``[b, h, K]`` (ascending) of every KV head."""
        if self.quantization is not None:
            self.key_stream.keep(index)
            self.value_stream.keep(index)
        else:
            expand = index[..., None].expand(-1, -1, -1, self.keys.shape[-1])
            self.keys, self.values = self.keys.gather(2, expand), self.values.gather(2, expand)
        self.book.keep(index)

    def stored_tokens(self) -> int:
        if not self.is_initialized:
            return 0
        return self.key_stream.length if self.quantization is not None else self.keys.shape[-2]

    def get_seq_length(self) -> int:
        """The logical length: tokens seen, evicted or not."""
        return self.book.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        stored = self.stored_tokens()
        return stored + query_length, self.book.seen - stored

    def nbytes(self) -> int:
        if not self.is_initialized:
            return self.book.nbytes()
        if self.quantization is not None:
            return self.key_stream.nbytes() + self.value_stream.nbytes() + self.book.nbytes()
        return tensor_nbytes(self.keys, self.values) + self.book.nbytes()

    def reset(self) -> None:
        self.keys = self.values = None
        self.key_stream = self.value_stream = None
        self.is_initialized = False
        self.book = TokenBook(self.book.with_scores)

    def _select_batch(self, fn) -> None:
        if self.is_initialized:
            if self.quantization is not None:
                self.key_stream.select_batch(fn)
                self.value_stream.select_batch(fn)
            else:
                self.keys, self.values = fn(self.keys), fn(self.values)
            self.book.select_batch(fn)

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(f"a {type(self).__name__} cannot be cropped: evicted tokens are gone")
