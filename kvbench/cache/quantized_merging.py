"""MiniCache on top of KV quantization (``combined`` with ``layers=minicache, bits=kivi|rtn``; the MiniCache
paper's "MiniCache on 4-bit KIVI", 5.02×). The rule: quantize what merging stores, except the norms.

* Unmerged layers (below ``start_layer``, and an odd last layer) are :class:`~kvbench.cache.kivi.QuantizedLayer` s.
* A merged pair's shared unit directions ``[B, h, K, d]`` are a :class:`~kvbench.cache.quantized_stream.QuantizedStream`
  under the bits method's rule (KIVI: key directions per channel, value directions per token, the pair's last
  tokens exact as its residual window says; RTN: per token, no window).
* The exactly-retained tokens of both layers are quantized per token (groups of G channels, the bits method's
  b bits) once their position leaves the stream's full-precision window: they are scattered tokens, which a
  per-channel group of G consecutive tokens cannot hold. Until then they stay exact, so R ≥ the sequence
  length with γ = 1 still reproduces ``full``.
* MiniCache's per-token norms (one per token and layer, or per head) stay in full precision.

Quantization is per store step, i.e. after the pair's second layer has run (after both attentions), like
every kvbench quantized layer. Eviction of quantized directions is not supported (``combined`` refuses
``bits`` with ``tokens``).
"""

from __future__ import annotations

import torch

from kvbench.cache.base import KVCache, KVLayer, tensor_nbytes
from kvbench.cache.combined import Merging
from kvbench.cache.kivi import Quantization, QuantizedLayer, QuantizedStream
from kvbench.cache.merging import MergedStore
from kvbench.cache.minicache import MergedPair, MergedPairCache, MergedPairLayer, merged_pairs
from kvbench.cache.quantization import Quantized, dequantize, quantize


class QuantizedMergedStore(MergedStore):
    """A merged store with quantized directions and retained tokens.

    Retained tokens: ``kept_idx`` lists the quantized ones first (their codes in ``quantized_a``/``quantized_b``,
    rows of d values: [1, 1, rows, ·]), then the exact ones (``kept_a``/``kept_b``)."""

    def __init__(self, t: float, gamma: float, retention: str, per_head: bool, stream: QuantizedStream):
        super().__init__(t, gamma, retention, per_head)
        self.stream = stream
        self.quantized_a: Quantized | None = None
        self.quantized_b: Quantized | None = None
        self.retained_quantized = 0  # how many of kept_idx (its first entries) are quantized

    def _store_directions(self, new: torch.Tensor, keep: torch.Tensor | None) -> None:
        if keep is not None:
            raise NotImplementedError("quantized merged directions cannot be evicted (KIVI groups span G tokens)")
        self.stream.append(new)

    def _directions(self, out: torch.Tensor | None = None) -> torch.Tensor:
        return self.stream.read(out=out)

    def _quantize_rows(self, x: torch.Tensor) -> Quantized:
        return quantize(x.reshape(1, 1, -1, x.shape[-1]), self.stream.nbits, "token", self.stream.group_size)

    def _store_retained(self, alive, moved_idx, new_idx, new_a, new_b) -> None:
        if alive is not None and not bool(alive.all()):
            raise NotImplementedError("quantized retained tokens cannot be evicted")
        idx = torch.cat([moved_idx, new_idx])  # [quantized..., old exact..., new...]
        mq = self.retained_quantized
        exact_a = new_a if self.kept_a is None else torch.cat([self.kept_a, new_a])
        exact_b = new_b if self.kept_b is None else torch.cat([self.kept_b, new_b])
        B, G = self.norm_a.shape[:2]
        token = idx[mq:].long() // (B * G)  # flat index = (token·B + batch)·G + row
        leaving = token < self.stream.quantized_tokens
        if bool(leaving.any()):
            for side, rows in (("a", exact_a[leaving]), ("b", exact_b[leaving])):
                new, old = self._quantize_rows(rows), getattr(self, f"quantized_{side}")
                setattr(self, f"quantized_{side}", new if old is None else
                        Quantized(*(torch.cat([o, n], dim=2) for o, n in zip(old, new))))
            idx = torch.cat([idx[:mq], idx[mq:][leaving], idx[mq:][~leaving]])
            exact_a, exact_b = exact_a[~leaving], exact_b[~leaving]
            self.retained_quantized = mq + int(leaving.sum())
        self.kept_idx, self.kept_a, self.kept_b = idx, exact_a, exact_b

    def _retained(self, role: int):
        exact, q = (self.kept_a, self.quantized_a) if role == 0 else (self.kept_b, self.quantized_b)
        if q is None:
            return self.kept_idx, exact
        dense = dequantize(q, self.stream.nbits, "token", self.stream.group_size).view(-1, *exact.shape[1:])
        return self.kept_idx, torch.cat([dense, exact])

    def nbytes(self) -> int:
        return (super().nbytes() + self.stream.nbytes() + tensor_nbytes(*(self.quantized_a or ()))
                + tensor_nbytes(*(self.quantized_b or ())))


class QuantizedMergedPair(MergedPair):
    """A MiniCache pair whose keys' and values' stores quantize (see the module docstring)."""

    def __init__(self, merging: Merging, quantization: Quantization):
        self.quantization = quantization
        super().__init__(merging.t, merging.gamma, merging.retention, per_head=(merging.norm == "per_head"))

    def new_store(self, kind: str) -> MergedStore:
        return QuantizedMergedStore(*self.settings, stream=self.quantization.stream(kind))


class QuantizedMergedPairCache(MergedPairCache):
    """Quantized layers below ``start_layer`` (and an odd last layer), quantized merged pairs from it on."""

    def __init__(self, num_layers: int, merging: Merging, quantization: Quantization):
        layers: list[KVLayer] = [QuantizedLayer(quantization) for _ in range(num_layers)]
        self.pairs = []
        for a, b in merged_pairs(num_layers, merging.start_layer):
            pair = QuantizedMergedPair(merging, quantization)
            layers[a], layers[b] = MergedPairLayer(pair, 0), MergedPairLayer(pair, 1)
            self.pairs.append(pair)
        KVCache.__init__(self, layers=layers)
