"""Quantized KV caches with KIVI's streaming policy (Liu et al. 2024, "KIVI: A Tuning-Free Asymmetric 2bit
Quantization for KV Cache", ICML) and its round-to-nearest baseline (METHODS.md §6).

Written in torch rather than on transformers' ``QuantizedCache``: that cache quantizes everything once its
residual exceeds R and its quanto backend does not group keys per channel over G tokens, so neither the
tokens kept in full precision nor the grouping would be KIVI's; and its layers subclass ``DynamicLayer``
with codes inside backend objects whose bytes kvbench cannot count exactly.

A :class:`QuantizedStream` is one layer's keys (or values): packed codes + scales + zero points of the
quantized tokens (:mod:`kvbench.cache.quantization`) followed by a full-precision residual. After ``T``
tokens in all it holds quantized

* ``channel`` grouping (KIVI's keys): tokens ``[0, ⌊T/R⌋·R)`` -- the residual fills up to R tokens, then all
  R are quantized at once, G consecutive tokens per group counted from token 0 (R = 0: every whole group of
  G, the last T mod G tokens stay exact because a channel group needs G tokens);
* ``token`` grouping (KIVI's values, RTN's keys and values): tokens ``[0, max(0, T − R))`` -- the last R stay
  exact, older ones are quantized as they leave the window (RTN: R = 0, every token).

Under token eviction (``combined`` with ``tokens`` and ``bits``) a stream also drops tokens
(:meth:`QuantizedStream.keep`): the kept quantized tokens keep their codes and their group's scale and zero
point (a key channel group then covers fewer than G tokens, named by a per-token group index stored beside
the codes and counted in ``nbytes``), so eviction never changes a kept value. Rows (batch × KV head) keep
different tokens, and a stream is rectangular, so only the first ``min`` over rows of kept quantized tokens
stay quantized; a row's further kept quantized tokens move into the residual as the values the model saw
(dequantized) and are quantized again when they leave it.

This is the authors' code's rule for prefill (keys: the first N − N mod R tokens; values: all but the last R)
and decoding (keys: when the residual reaches R; values: when it exceeds R), extended to any forward of
several tokens. Quantization happens *after* the forward's attention: a layer's ``update`` returns the
dequantized past + the exact residual + the exact new tokens, then quantizes what the rule says, so the tokens
of one forward see each other exactly and only later queries see them quantized. Hence R ≥ the sequence
length reproduces ``full`` exactly.

MiniCache pairs on top (``combined`` with ``layers=minicache, bits=kivi``): :mod:`kvbench.cache.quantized_merging`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvbench.cache.base import KVCache, KVLayer, tensor_nbytes
from kvbench.cache.quantization import Quantized, dequantize, quantize


@dataclass(frozen=True)
class Quantization:
    """What a ``bits`` method supplies: bits per code, group size G, residual R, and each stream's grouping."""

    nbits: int = 2
    group_size: int = 32
    residual_length: int = 128
    key_grouping: str = "channel"
    value_grouping: str = "token"

    def stream(self, kind: str) -> "QuantizedStream":
        grouping = self.key_grouping if kind == "keys" else self.value_grouping
        return QuantizedStream(grouping, self.nbits, self.group_size, self.residual_length)


class QuantizedStream:
    """Quantized tokens (``codes``, ``scale``, ``zero``) then the ``residual`` ``[B, h, Nr, d]`` in full precision."""

    def __init__(self, grouping: str, nbits: int, group_size: int, residual_length: int):
        self.grouping, self.nbits, self.group_size, self.residual_length = grouping, nbits, group_size, residual_length
        self.codes = self.scale = self.zero = self.residual = None
        #: ``channel`` grouping after an eviction: each quantized token's group (a row of ``scale``/``zero``),
        #: ``[B, h, Nq]`` int32; None while groups are G consecutive tokens from token 0.
        self.group = None

    @property
    def quantized_tokens(self) -> int:
        return 0 if self.codes is None else self.codes.shape[-2]

    @property
    def length(self) -> int:
        return self.quantized_tokens + (0 if self.residual is None else self.residual.shape[-2])

    def leaving_residual(self, residual: int) -> int:
        """How many leading residual tokens are quantized when the residual holds ``residual`` (the KIVI rule:
        keys when R have gathered, all R at once; values as they leave the last R)."""
        if self.grouping == "channel":
            block = self.residual_length or self.group_size
            return residual // block * block
        return max(0, residual - self.residual_length)

    def read(self, new: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """Every stored token (quantized ones dequantized), then ``new`` exact tokens if given (into ``out``)."""
        parts = [x for x in (self.residual, new) if x is not None]
        nq = self.quantized_tokens
        if nq == 0 and out is None:
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)
        if out is None:
            B, h, _, packed = self.codes.shape
            n = self.length + (0 if new is None else new.shape[-2])
            out = self.scale.new_empty(B, h, n, packed * 8 // self.nbits)
        if nq:
            self._dequantize(out[..., :nq, :])
        at = nq
        for x in parts:
            out[..., at:at + x.shape[-2], :] = x
            at += x.shape[-2]
        return out

    def _dequantize(self, out: torch.Tensor) -> torch.Tensor:
        if self.group is None:
            return dequantize(Quantized(self.codes, self.scale, self.zero), self.nbits, self.grouping,
                              self.group_size, out)
        # each token's own channel scales: per-token groups of one channel dequantize them the same way
        index = self.group.long()[..., None].expand(-1, -1, -1, self.scale.shape[-1])
        per_token = Quantized(self.codes, self.scale.gather(2, index), self.zero.gather(2, index))
        return dequantize(per_token, self.nbits, "token", 1, out)

    def append(self, x: torch.Tensor) -> None:
        """Add exact tokens ``x`` ``[B, h, q, d]``, then quantize the leading residual tokens the rule says."""
        self.residual = x if self.residual is None else torch.cat([self.residual, x], dim=-2)
        n = self.leaving_residual(self.residual.shape[-2])
        if n <= 0:
            return
        q = quantize(self.residual[..., :n, :], self.nbits, self.grouping, self.group_size)
        if self.group is not None:  # new channel groups after the existing ones, G tokens each
            first = self.scale.shape[2]
            new = torch.arange(n, device=x.device, dtype=torch.int32) // self.group_size + first
            self.group = torch.cat([self.group, new.expand(*self.group.shape[:2], n)], dim=2)
        if self.codes is None:
            self.codes, self.scale, self.zero = q
        else:
            # codes [B, h, N, ·], channel scales [B, h, N/G, d] and token scales [B, h, N, d/G] all grow along dim 2
            self.codes = torch.cat([self.codes, q.codes], dim=2)
            self.scale, self.zero = torch.cat([self.scale, q.scale], dim=2), torch.cat([self.zero, q.zero], dim=2)
        rest = self.residual[..., n:, :]
        self.residual = rest.clone() if rest.shape[-2] else None  # a view would keep the whole tensor alive

    def keep(self, index: torch.Tensor) -> None:
        """Keep the stored tokens ``index`` ``[B, h, K]`` (ascending slots, quantized ones first) of every row.

        Kept quantized tokens keep their codes, scale and zero point, so every kept value reads back exactly as
        before. The first ``m`` = min over rows of kept quantized tokens stay quantized; the rest of each row's
        kept tokens form the new residual (quantized ones dequantized)."""
        nq = self.quantized_tokens
        m = int((index < nq).sum(-1).min()) if nq else 0
        tail = index[..., m:]
        if tail.shape[-1]:
            every = self.read()
            self.residual = every.gather(2, tail[..., None].expand(-1, -1, -1, every.shape[-1]))
        else:
            self.residual = None
        if nq == 0:
            return
        if m == 0:
            self.codes = self.scale = self.zero = self.group = None
            return
        head = index[..., :m]
        self.codes = self.codes.gather(2, head[..., None].expand(-1, -1, -1, self.codes.shape[-1]))
        if self.grouping == "token":
            along = head[..., None].expand(-1, -1, -1, self.scale.shape[-1])
            self.scale, self.zero = self.scale.gather(2, along), self.zero.gather(2, along)
            return
        group = (head // self.group_size).to(torch.int32) if self.group is None else self.group.gather(2, head)
        self._compact_groups(group)

    def _compact_groups(self, group: torch.Tensor) -> None:
        """Keep only the channel groups some kept token of a row uses, renumbered 0.. per row (rows with fewer
        groups pad with a copy of their group 0, as a rectangular tensor needs)."""
        starts = torch.ones_like(group, dtype=torch.bool)
        starts[..., 1:] = group[..., 1:] != group[..., :-1]  # ascending slots: a row's groups are ascending too
        renumbered = starts.to(torch.int32).cumsum(-1) - 1
        used = int(renumbered[..., -1].max()) + 1
        old = torch.zeros(*group.shape[:2], used, dtype=torch.long, device=group.device)
        old.scatter_(2, renumbered.long(), group.long())
        along = old[..., None].expand(-1, -1, -1, self.scale.shape[-1])
        self.scale, self.zero = self.scale.gather(2, along), self.zero.gather(2, along)
        self.group = renumbered

    def select_batch(self, fn) -> None:
        for name in ("codes", "scale", "zero", "residual", "group"):
            if getattr(self, name) is not None:
                setattr(self, name, fn(getattr(self, name)))

    def nbytes(self) -> int:
        return tensor_nbytes(self.codes, self.scale, self.zero, self.residual, self.group)


class QuantizedLayer(KVLayer):
    """One decoder layer's keys and values as two :class:`QuantizedStream` s (every token stored, some quantized)."""

    def __init__(self, quantization: Quantization):
        super().__init__()
        self.quantization = quantization
        self.seen = 0
        self.key_stream = self.value_stream = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.key_stream, self.value_stream = self.quantization.stream("keys"), self.quantization.stream("values")
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values = self.key_stream.read(key_states), self.value_stream.read(value_states)
        self.key_stream.append(key_states)  # after attention's inputs are built: this forward sees itself exactly
        self.value_stream.append(value_states)
        self.seen += key_states.shape[-2]
        return keys, values

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def stored_tokens(self) -> int:
        return self.seen

    def nbytes(self) -> int:
        return self.key_stream.nbytes() + self.value_stream.nbytes() if self.is_initialized else 0

    def offload(self):  # the codes stay where they are
        pass

    def prefetch(self):
        pass

    def reset(self) -> None:
        self.key_stream = self.value_stream = None
        self.seen = 0
        self.is_initialized = False

    def _select_batch(self, fn) -> None:
        if self.is_initialized:
            self.key_stream.select_batch(fn)
            self.value_stream.select_batch(fn)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            raise NotImplementedError("a quantized cache cannot be cropped: its tokens are grouped and quantized")


class QuantizedKVCache(KVCache):
    """One :class:`QuantizedLayer` per decoder layer (``kivi`` and ``rtn``)."""

    def __init__(self, num_layers: int, quantization: Quantization):
        super().__init__(layers=[QuantizedLayer(quantization) for _ in range(num_layers)])
        self.quantization = quantization
