"""K-norm cache (Devoto et al. 2024, "A Simple and Effective L2 Norm-Based Strategy for KV Cache
Compression"): after the prefill, every (layer, KV head) keeps the tokens whose keys have the *lowest*
L2 norm (the paper: low key norms go with high attention), up to its budget (METHODS.md §7).

The rule reads the stored keys only, never attention, so it works with every attention implementation
(flash and flex included) and needs no change to the model. Keys are cached after RoPE; a rotation keeps
the norm, so the ranking is the one of the un-rotated keys. Eviction happens in the prefill forward's
``update`` (the forward itself attends over every token); later forwards (decoding, streamed chunks)
append without evicting, as in kvpress.
"""

from __future__ import annotations

import torch

from kvbench.cache.eviction import BudgetCache, BudgetLayer, TokenBudget, num_layers, top_k_sorted


class KnormLayer(BudgetLayer):
    method = "knorm"

    def after_append(self, keys: torch.Tensor, first: bool) -> None:
        if first and self.stored_tokens() > self.capacity:
            norms = keys.to(torch.float32).norm(dim=-1)  # [b, h, n]: every stored key (the first forward)
            self.keep(top_k_sorted(-norms, self.capacity))


class KnormCache(BudgetCache):
    def __init__(self, num_layers: int, budget: TokenBudget):
        super().__init__(layers=[KnormLayer(budget) for _ in range(num_layers)])

    @classmethod
    def for_model(cls, config, budget: TokenBudget) -> "KnormCache":
        return cls(num_layers(config), budget)
