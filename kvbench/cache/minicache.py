"""MiniCache (Liu et al. 2024, "MiniCache: KV Cache Compression in Depth Dimension"): adjacent layers from
``start_layer`` on share one merged store (the merge math and the store: :mod:`kvbench.cache.merging`).

A :class:`MergedPair` keeps both layers' dense K/V during the first forward (layer a's is needed until b
has run); ``compress()`` -- or, if nobody calls it, layer a's first update of a later forward -- merges them
and frees both. Afterwards layer a attends over its restored past + its exact new tokens, which wait until
layer b has run; layer b's update restores its past, then merges both layers' new tokens and appends.
"""

from __future__ import annotations

import torch
from kvbench.cache.base import KVCache, KVLayer, PlainLayer, tensor_nbytes
from kvbench.cache.merging import MergedStore

class MergedPair:
    """The shared storage of layers (a, a+1). Dense until merged; merged at ``compress()`` or lazily.

    Lifecycle: during the first forward both layers keep full K/V (layer a's is needed until b has run).
    ``compress()`` -- or, if nobody calls it, layer a's first update of a later forward -- merges them and
    frees both. Afterwards layer a attends over its restored past + its exact new tokens, which wait until
    layer b has run; layer b's update restores its past, then merges both layers' new tokens and appends.
    """

    def __init__(self, t: float, gamma: float, retention: str, per_head: bool):
        self.settings = (t, gamma, retention, per_head)
        self.reset()

    def new_store(self, kind: str) -> MergedStore:
        """A fresh store for the pair's ``keys`` or ``values`` (a quantizing pair overrides it:
        :mod:`kvbench.cache.quantized_merging`)."""
        return MergedStore(*self.settings)

    def reset(self) -> None:
        self.dense: list[tuple[torch.Tensor, torch.Tensor] | None] = [None, None]
        self.keys = self.new_store("keys")
        self.values = self.new_store("values")
        self.merged = False
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None  # layer a's new tokens awaiting layer b

    def compress(self) -> None:
        if self.merged or self.dense[0] is None or self.dense[1] is None:
            return
        (ka, va), (kb, vb) = self.dense
        if ka.shape[-2] != kb.shape[-2]:
            raise RuntimeError(f"cannot merge layers holding {ka.shape[-2]} and {kb.shape[-2]} tokens "
                               "(compress() called in the middle of a forward?)")
        self.keys.step(ka, kb)
        self.values.step(va, vb)
        self.dense = [None, None]
        self.merged = True

    def update(self, role: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if role == 0 and not self.merged and self.dense[1] is not None:
            self.compress()  # a new forward after an uncompressed prefill (e.g. generate): merge now
        if not self.merged:
            old = self.dense[role]
            self.dense[role] = (k, v) if old is None else (torch.cat([old[0], k], -2), torch.cat([old[1], v], -2))
            return self.dense[role]
        keys, values = self.keys.restore(role, k), self.values.restore(role, v)
        if role == 0:
            self.pending = (k, v)
        else:
            if self.pending is None or self.pending[0].shape != k.shape:
                raise RuntimeError("MiniCache: the second layer of a merged pair ran without the first")
            self.keys.step(self.pending[0], k)
            self.values.step(self.pending[1], v)
            self.pending = None
        return keys, values

    def seq_length(self, role: int) -> int:
        if not self.merged:
            return 0 if self.dense[role] is None else self.dense[role][0].shape[-2]
        pending = self.pending[0].shape[-2] if (role == 0 and self.pending is not None) else 0
        return self.keys.length + pending

    def stored_tokens(self, role: int) -> int:
        return self.keys.length if self.merged else self.seq_length(role)

    def nbytes(self) -> int:
        dense = [x for kv in self.dense if kv is not None for x in kv]
        return self.keys.nbytes() + self.values.nbytes() + tensor_nbytes(*dense, *(self.pending or ()))


class MergedPairLayer(KVLayer):
    """One model layer's view of a :class:`MergedPair` (``role`` 0 = lower layer a, 1 = upper layer b)."""

    def __init__(self, pair: MergedPair, role: int):
        super().__init__()
        self.pair, self.role = pair, role

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        return self.pair.update(self.role, key_states, value_states)

    def get_seq_length(self) -> int:
        return self.pair.seq_length(self.role)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def stored_tokens(self) -> int:
        return self.pair.stored_tokens(self.role)

    def nbytes(self) -> int:
        """The pair's bytes are counted once, on its lower layer."""
        return self.pair.nbytes() if self.role == 0 else 0

    def offload(self):  # the merged states stay where they are
        pass

    def prefetch(self):
        pass

    def reset(self) -> None:
        if self.role == 0:
            self.pair.reset()
        self.is_initialized = False

    def _unsupported(self, what: str):
        raise NotImplementedError(f"MiniCache does not support {what} (batch size changes or rollback)")

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            self._unsupported("crop")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._unsupported("beam search")

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0 and repeats != 1:
            self._unsupported("batch_repeat_interleave")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            self._unsupported("batch_select_indices")


def merged_pairs(num_layers: int, start_layer: int) -> list[tuple[int, int]]:
    """Adjacent pairs (S, S+1), (S+2, S+3), ... within ``num_layers``; an odd last layer stays unmerged."""
    return [(a, a + 1) for a in range(start_layer, num_layers - 1, 2)]


class MergedPairCache(KVCache):
    """Plain layers below ``start_layer`` (and an unpaired last layer); merged pairs from it onward.
    Parameters are the method's (validated by :class:`kvbench.methods.minicache.MiniCache`)."""

    def __init__(self, num_layers: int, start_layer: int, t: float = 0.6, gamma: float = 0.05,
                 retention: str = "top_fraction", norm: str = "concat"):
        layers: list[KVLayer | PlainLayer] = [PlainLayer() for _ in range(num_layers)]
        self.pairs: list[MergedPair] = []
        for a, b in merged_pairs(num_layers, start_layer):
            pair = MergedPair(t, gamma, retention, per_head=(norm == "per_head"))
            layers[a], layers[b] = MergedPairLayer(pair, 0), MergedPairLayer(pair, 1)
            self.pairs.append(pair)
        super().__init__(layers=layers)

    def compress(self) -> None:
        """End of prefill: merge every pair's dense states (idempotent)."""
        for pair in self.pairs:
            pair.compress()
