"""Quantized KV caches with KIVI's streaming policy (Liu et al. 2024, "KIVI: A Tuning-Free Asymmetric 2bit
Quantization for KV Cache", ICML) and its round-to-nearest baseline (METHODS.md §6).

Written in torch rather than on transformers' ``QuantizedCache``: that cache quantizes everything once its
residual exceeds R and its quanto backend does not group keys per channel over G tokens, so neither the
tokens kept in full precision nor the grouping would be KIVI's; and its layers subclass ``DynamicLayer``
with codes inside backend objects whose bytes kvbench cannot count exactly.

A :class:`~kvbench.cache.quantized_stream.QuantizedStream` is one layer's keys (or values): packed codes + scales
+ zero points of the quantized tokens (:mod:`kvbench.cache.quantization`) followed by a full-precision residual,
on preallocated slots (``reserve(total)`` sizes them; ``nbytes`` counts the allocated capacity). After ``T``
tokens in all it holds quantized

* ``channel`` grouping (KIVI's keys): tokens ``[0, ⌊T/R⌋·R)`` -- the residual fills up to R tokens, then all
  R are quantized at once, G consecutive tokens per group counted from token 0 (R = 0: every whole group of
  G, the last T mod G tokens stay exact because a channel group needs G tokens);
* ``token`` grouping (KIVI's values, RTN's keys and values): tokens ``[0, max(0, T − R))`` -- the last R stay
  exact, older ones are quantized as they leave the window (RTN: R = 0, every token).

Under token eviction (``combined`` with ``tokens`` and ``bits``) a stream also drops tokens:
:mod:`kvbench.cache.quantized_eviction`.

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

from kvbench.cache.base import KVCache, KVLayer
from kvbench.cache.quantized_stream import QuantizedStream


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


class QuantizedLayer(KVLayer):
    """One decoder layer's keys and values as two :class:`QuantizedStream` s (every token stored, some quantized)."""

    def __init__(self, quantization: Quantization):
        super().__init__()
        self.quantization = quantization
        self.seen = 0
        self.key_stream = self.value_stream = None
        self.reserved: int | None = None  # tokens in all, if the cache was told (reserve)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.key_stream, self.value_stream = self.quantization.stream("keys"), self.quantization.stream("values")
        if self.reserved is not None:
            self.key_stream.reserve(self.reserved)
            self.value_stream.reserve(self.reserved)
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

    def reserve(self, total_tokens: int) -> None:
        """Size every stream's slots for ``total_tokens`` tokens at the first forward (prompt + the tokens to come),
        so decoding writes codes and residual in place."""
        for layer in self.layers:
            layer.reserved = total_tokens
