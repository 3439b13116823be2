"""One layer's keys (or values) under KIVI's streaming rule, on preallocated slots (METHODS.md §6).

A :class:`QuantizedStream` holds the packed codes + scales + zero points of its quantized tokens
(:mod:`kvbench.cache.quantization`) followed by a full-precision residual. Which tokens are quantized when is
KIVI's rule (Liu et al. 2024, Sec. 3.3; the authors' code for prefill and decoding), stated in
:mod:`kvbench.cache.kivi` and kept here exactly: after ``T`` tokens the ``channel`` grouping (KIVI's keys)
has quantized ``[0, ⌊T/R⌋·R)`` (R = 0: every whole group of G), the ``token`` grouping (KIVI's values, RTN)
``[0, max(0, T − R))``.

Storage: four :class:`~kvbench.cache.slots.SlotStore` s written in place -- the codes (one slot per quantized
token), the scales and zero points (one slot per channel group of G tokens, or per token), each quantized token's
group after an eviction (``channel`` grouping only), and the residual. Why: the ``cat`` that appended codes and the
clone that kept the residual copied the whole stream at every flush (``full`` and the evicting caches write in
place already, reports/efficiency_acceptance.md). The rules are :mod:`kvbench.cache.slots`':

* **Capacity.** :meth:`QuantizedStream.reserve` (from the cache's ``reserve(total)``: the efficiency suite)
  sizes the codes and scales for the tokens the rule will have quantized after ``total`` tokens, and the
  residual for the most the rule leaves exact (R tokens; ``channel``: R − 1, or G − 1 when R = 0). A forward's
  leaving tokens are quantized from the old residual and the new tokens *before* the staying ones are written,
  so the residual never holds more than that. Without a reservation every store holds exactly its filled slots,
  as the ``cat``-based stream did (its bytes are unchanged).
* **Bytes.** :meth:`QuantizedStream.nbytes` counts the allocated capacity, filled or not (``full``'s rule).

Eviction (``combined`` with ``tokens`` and ``bits``) lives in :mod:`kvbench.cache.quantized_eviction`.
"""

from __future__ import annotations

import torch

from kvbench.cache import quantized_eviction
from kvbench.cache.quantization import Quantized, dequantize, quantize
from kvbench.cache.slots import SlotStore


class QuantizedStream:
    """Quantized tokens (``codes``, ``scale``, ``zero``) then the ``residual`` ``[B, h, Nr, d]`` in full precision."""

    def __init__(self, grouping: str, nbits: int, group_size: int, residual_length: int):
        self.grouping, self.nbits, self.group_size, self.residual_length = grouping, nbits, group_size, residual_length
        self.coded = SlotStore(1)  # packed codes [B, h, Nq, d·b/8]
        self.scales = SlotStore(2)  # scale, zero: [B, h, Nq/G, d] (channel) or [B, h, Nq, d/G] (token)
        #: ``channel`` grouping after an eviction: each quantized token's group (a slot of ``scales``), ``[B, h, Nq]``
        #: int32; no arrays while groups are G consecutive tokens from token 0.
        self.groups = SlotStore(1)
        self.exact = SlotStore(1)  # the residual [B, h, Nr, d]
        self.compacted_groups = 0  # channel groups stored after the last compaction (eviction)
        self.reserved: int | None = None

    # -- the stored tensors, as views of the filled slots (None when empty) ---------------------------------
    @staticmethod
    def _view(store: SlotStore, i: int = 0) -> torch.Tensor | None:
        return store.views()[i] if store.filled else None

    @property
    def codes(self) -> torch.Tensor | None:
        return self._view(self.coded)

    @property
    def scale(self) -> torch.Tensor | None:
        return self._view(self.scales, 0) if self.codes is not None else None

    @property
    def zero(self) -> torch.Tensor | None:
        return self._view(self.scales, 1) if self.codes is not None else None

    @property
    def group(self) -> torch.Tensor | None:
        return None if self.groups.arrays[0] is None else self.groups.views()[0]

    @property
    def residual(self) -> torch.Tensor | None:
        return self._view(self.exact)

    @property
    def quantized_tokens(self) -> int:
        return self.coded.filled

    @property
    def length(self) -> int:
        return self.coded.filled + self.exact.filled

    def leaving_residual(self, residual: int) -> int:
        """How many leading residual tokens are quantized when the residual holds ``residual`` (the KIVI rule:
        keys when R have gathered, all R at once; values as they leave the last R)."""
        if self.grouping == "channel":
            block = self.residual_length or self.group_size
            return residual // block * block
        return max(0, residual - self.residual_length)

    def reserve(self, total: int) -> None:
        """Size the stores for ``total`` tokens in all (before the first write; see the module docstring)."""
        self.reserved = total
        quantized = self.leaving_residual(total)
        self.coded.reserve(quantized)
        self.groups.reserve(quantized)
        self.scales.reserve(quantized // self.group_size if self.grouping == "channel" else quantized)
        exact = self.residual_length if self.grouping == "token" else (self.residual_length or self.group_size) - 1
        self.exact.reserve(min(total, exact))

    def read(self, new: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """Every stored token (quantized ones dequantized), then ``new`` exact tokens if given (into ``out``)."""
        parts = [x for x in (self.residual, new) if x is not None]
        nq = self.quantized_tokens
        if nq == 0 and out is None:
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)
        if out is None:
            B, h, _, packed = self.codes.shape
            n = self.length + (0 if new is None else new.shape[-2])
            out = self.scales.arrays[0].new_empty(B, h, n, packed * 8 // self.nbits)
        if nq:
            self.dequantize(out[..., :nq, :])
        at = nq
        for x in parts:
            out[..., at:at + x.shape[-2], :] = x
            at += x.shape[-2]
        return out

    def dequantize(self, out: torch.Tensor | None = None, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The quantized tokens dequantized (only the slots ``tokens`` ``[B, h, k]`` of each row, if given)."""
        codes, group = self.codes, self.group
        if tokens is not None:
            codes = codes.gather(2, tokens[..., None].expand(-1, -1, -1, codes.shape[-1]))
            if group is None and self.grouping == "channel":
                group = (tokens // self.group_size).to(torch.int32)
            elif group is not None:
                group = group.gather(2, tokens)
        if group is None and tokens is None:
            return dequantize(Quantized(codes, self.scale, self.zero), self.nbits, self.grouping, self.group_size, out)
        if self.grouping == "token":  # tokens given: each token's own scales
            return dequantize(Quantized(codes, *self._scale_rows(tokens)), self.nbits, "token", self.group_size, out)
        # each token's own channel scales: per-token groups of one channel dequantize them the same way
        return dequantize(Quantized(codes, *self._scale_rows(group)), self.nbits, "token", 1, out)

    def _scale_rows(self, index: torch.Tensor) -> list[torch.Tensor]:
        """Scale and zero-point slots ``index`` ``[B, h, k]`` of each row, ``[B, h, k, ·]``: rows of the flattened
        slot arrays picked by ``index_select`` (a ``gather`` with the index expanded over the channels costs
        several times more on CPU, and this runs for every layer at every step)."""
        B, h, k = index.shape
        capacity = self.scales.capacity
        flat = (torch.arange(B * h, device=index.device).view(B, h, 1) * capacity + index.long()).view(-1)
        return [a.reshape(B * h * capacity, -1).index_select(0, flat).view(B, h, k, -1) for a in self.scales.arrays]

    def append(self, x: torch.Tensor) -> None:
        """Add exact tokens ``x`` ``[B, h, q, d]``, quantizing the leading residual tokens the rule says: those
        are quantized from the old residual and ``x`` first, then the staying tokens are written in place."""
        r = self.exact.filled
        n = self.leaving_residual(r + x.shape[-2])
        if n <= 0:
            self.exact.write(x)
            return
        residual = self.residual
        if n <= r:
            leaving = residual[..., :n, :]
        else:
            leaving = x[..., : n - r, :] if r == 0 else torch.cat([residual, x[..., : n - r, :]], dim=-2)
        self._store(quantize(leaving, self.nbits, self.grouping, self.group_size), n, x.device)
        older = residual[..., n:, :].clone() if n < r else None  # the slots overlap: move through a copy
        self.exact.crop(r)
        for staying in (older, x[..., max(0, n - r):, :]):
            if staying is not None and staying.shape[-2]:
                self.exact.write(staying)
        self.exact.fit()

    def _store(self, q: Quantized, n: int, device) -> None:
        """Write ``n`` newly quantized tokens into the next code and scale slots."""
        if self.group is not None:  # new channel groups after the existing ones, G tokens each
            first = self.scales.filled
            new = torch.arange(n, device=device, dtype=torch.int32) // self.group_size + first
            self.groups.write(new.expand(*q.codes.shape[:2], n))
        self.coded.write(q.codes)
        self.scales.write(q.scale, q.zero)

    def keep(self, index: torch.Tensor) -> None:
        """Keep the stored tokens ``index`` ``[B, h, K]`` of every row (see
        :func:`kvbench.cache.quantized_eviction.keep`)."""
        quantized_eviction.keep(self, index)

    def stores(self) -> tuple[SlotStore, ...]:
        return self.coded, self.scales, self.groups, self.exact

    def select_batch(self, fn) -> None:
        for store in self.stores():
            store.select_batch(fn)

    def nbytes(self) -> int:
        """The allocated capacity of every store (filled or not)."""
        return sum(store.nbytes() for store in self.stores())
