"""``knorm``: keep the tokens with the lowest key norm (Devoto et al. 2024, "A Simple and Effective L2
Norm-Based Strategy for KV Cache Compression"), with real eviction (METHODS.md §7).

After the prefill, every (layer, KV head) keeps the tokens whose keys have the *lowest* L2 norm (the paper:
low key norms go with high attention), up to its budget; later tokens are appended. The rule reads the
stored keys only, never attention, so it works with every attention implementation (sdpa, eager, flash,
flex) and leaves the model untouched. Keys are cached after RoPE; a rotation keeps the norm, so the ranking
is the one of the un-rotated keys. Eviction happens in the prefill forward's ``update`` (the forward itself
attends over every token); later forwards (decoding, streamed chunks) append without evicting, as in kvpress.

Parameters:

* ``budget_ratio`` / ``budget_tokens`` -- tokens kept per (layer, KV head): ⌊budget_ratio·P⌋ of the
  prompt (exact floor) or a count. Give one (set the other to null); both null = ratio 0.2.
* ``decode_budget_tokens`` / ``decode_budget_ratio`` / ``compress_every`` -- compression while decoding
  (:mod:`kvbench.cache.decode_budget`), independent of the prefill budget. The paper has no decoding rule, so
  K-norm follows kvpress's ``DecodingPress`` (METHODS_NEXT.md §6): every ``compress_every`` steps, rescore every
  stored key from scratch and keep the target lowest norms (nothing carried over). Both null (default): decoding
  appends without evicting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from kvbench.cache.decode_budget import DecodeBudget, decode_budget_of
from kvbench.cache.eviction import BudgetCache, BudgetLayer, TokenBudget, num_layers, top_k_sorted
from kvbench.methods.base import Method, check_full_attention, register


@register
@dataclass
class Knorm(Method):
    axis = "tokens"
    name: str = "knorm"
    budget_ratio: Optional[float] = None
    budget_tokens: Optional[int] = None
    decode_budget_tokens: Optional[int] = None
    decode_budget_ratio: Optional[float] = None
    compress_every: int = 1

    def __post_init__(self):
        self.budget()
        self.decoding()

    def budget(self) -> TokenBudget:
        return TokenBudget.of(self.budget_ratio, self.budget_tokens)

    def check_model(self, config) -> None:
        check_full_attention(self.name, config)  # any attention implementation: the rule reads keys only

    def decoding(self) -> DecodeBudget | None:
        return decode_budget_of(self)

    def new_cache(self, model) -> "KnormCache":
        return KnormCache.for_model(model.config, self.budget(), self.decoding())


class KnormLayer(BudgetLayer):
    method = "knorm"

    def after_append(self, keys: torch.Tensor, first: bool) -> None:
        if first and self.stored_tokens() > self.capacity:
            norms = keys.to(torch.float32).norm(dim=-1)  # [b, h, n]: every stored key (the first forward)
            self.keep(top_k_sorted(-norms, self.capacity))

    def decode_step(self, keys: torch.Tensor, compress: bool) -> None:
        """kvpress's decoding rule: rescore every stored key from scratch, keep the ``target`` lowest norms."""
        if compress:
            self.keep(top_k_sorted(-keys.to(torch.float32).norm(dim=-1), self.target))


class KnormCache(BudgetCache):
    def __init__(self, num_layers: int, budget: TokenBudget, decode: DecodeBudget | None = None):
        super().__init__(layers=[KnormLayer(budget, decode=decode) for _ in range(num_layers)])

    @classmethod
    def for_model(cls, config, budget: TokenBudget, decode: DecodeBudget | None = None) -> "KnormCache":
        return cls(num_layers(config), budget, decode)
