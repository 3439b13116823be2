"""The kvpress way of head-wise eviction, kept only as a labelled comparison: mask, do not free.

kvpress implements its head-wise presses (AdaKV, DuoAttention, KVzip's head-wise mode) by masking the evicted
keys of each head (``attention_patch.py``); its own comment says this "does not reduce peak memory and slightly
increases runtime". :class:`MaskedHeadLayer` reproduces that layout for the same selection a ragged layer makes
(:mod:`kvbench.cache.ragged`): keys and values of *every* token stay stored ``[b, h, S, d]`` and a boolean
``kept`` ``[b, h, S]`` says which ones each KV head may attend to. Its ``nbytes()`` is the full cache's keys and
values plus that mask (1 byte per token and KV head), which is what such a cache really holds: the masked
variant saves nothing, and the report shows it beside the ragged one.

Attention: the layer hands its mask to kvbench's attention wrapper (:func:`~kvbench.cache.ragged_attention.hand_over`),
which runs the model's own attention function with an additive mask ``[b, H, q, S]`` (the kept mask repeated
over each KV head's query heads, and the bottom-right causal block): transient, one forward long.
"""

from __future__ import annotations

import torch

from kvbench.cache.base import KVLayer, tensor_nbytes
from kvbench.cache.ragged_attention import hand_over


class MaskedHeadLayer(KVLayer):
    """Every token's keys and values, plus which tokens each KV head keeps (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.keys = self.values = self.kept = None
        self.seen = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        b, h = key_states.shape[:2]
        self.keys = key_states.new_empty(b, h, 0, key_states.shape[-1])
        self.values = value_states.new_empty(b, h, 0, value_states.shape[-1])
        self.kept = torch.zeros(b, h, 0, dtype=torch.bool, device=key_states.device)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        first = not self.is_initialized
        if first:
            self.lazy_initialization(key_states, value_states)
        b, h, n = key_states.shape[:3]
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self.kept = torch.cat([self.kept, self.kept.new_ones(b, h, n)], dim=-1)
        self.seen += n
        if not bool(self.kept.all()):
            hand_over(self.keys, self)
        self.after_append(self.keys, first)
        return self.keys, self.values

    def after_append(self, keys: torch.Tensor, first: bool) -> None:
        """Choose the masked tokens (:meth:`keep_tokens`), or request scores. Default: mask nothing."""

    def keep_tokens(self, kept: torch.Tensor) -> None:
        """Mask, per KV head, every stored token where ``kept`` ``[b, h, S]`` is False (nothing is freed)."""
        self.kept = self.kept & kept.view_as(self.kept)

    def lengths(self) -> torch.Tensor:
        """Tokens each (batch row, KV head) may attend to ``[b, h]``."""
        return self.kept.sum(dim=-1, dtype=torch.int32)

    def attend(self, module, query, key, value, fn, scaling: float, kwargs):
        """The model's attention ``fn`` with the kept mask of each KV head over its query heads, causal."""
        b, n_heads, q_len, _ = query.shape
        visible = self.kept.repeat_interleave(n_heads // self.kept.shape[1], dim=1)[:, :, None, :]
        n = key.shape[-2]
        causal = torch.ones(q_len, n, dtype=torch.bool, device=query.device).tril_(n - q_len)
        allowed = visible & causal
        mask = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device)
        mask.masked_fill_(~allowed, torch.finfo(query.dtype).min)
        return fn(module, query, key, value, mask, **kwargs)

    def stored_tokens(self) -> int:
        return self.keys.shape[-2] if self.is_initialized else 0

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.stored_tokens() + query_length, 0

    def nbytes(self) -> int:
        return tensor_nbytes(self.keys, self.values, self.kept) if self.is_initialized else 0

    def reset(self) -> None:
        self.keys = self.values = self.kept = None
        self.seen = 0
        self.is_initialized = False

    def _select_batch(self, fn) -> None:
        if self.is_initialized:
            self.keys, self.values, self.kept = fn(self.keys), fn(self.values), fn(self.kept)

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(f"a {type(self).__name__} cannot be cropped")
