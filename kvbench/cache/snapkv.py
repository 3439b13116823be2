"""SnapKV cache (Li et al. 2024, "SnapKV: LLM Knows What You are Looking for Before Generation"):
once, at the end of the prefill, every (layer, KV head) keeps its observation window -- the last
``window`` prompt tokens -- plus the ``budget − window`` earlier tokens that window attends to most
(METHODS.md §7). No decode-time eviction: tokens generated later are appended, as in the paper.

Score of an earlier token k: Σ over the window's queries of softmax(q·Kᵀ)[q, k], summed over the query
heads that share the KV head (kvpress averages the group: the same ranking), smoothed along the sequence
by 1-D pooling (``kernel_size`` 5, average with zero padding counted, as the official code; ``max`` as
an option). Only the window's query rows are scored (O(window·N) per head). Attention is the model's own
(``scored_<impl>``); the prefill forward itself attends over every token.

A budget from a ratio that cannot hold the window (``⌊r·P⌋ < window``, short prompts) keeps the last
``⌊r·P⌋`` tokens -- a window cut to the budget -- and says so in the record; a token count below the
window is refused when the method is built.
"""

from __future__ import annotations

import torch

from kvbench.cache.attention_scores import request_scores
from kvbench.cache.eviction import BudgetCache, BudgetLayer, TokenBudget, num_layers, pool1d, rows, top_k_sorted


class SnapKVLayer(BudgetLayer):
    method = "snapkv"
    score_agg = "sum"

    def __init__(self, budget: TokenBudget, window: int = 32, kernel_size: int = 5, pooling: str = "avg"):
        super().__init__(budget)
        self.window = window
        self.kernel_size = kernel_size
        self.pooling = pooling
        self.observed: int | None = None  # the window, cut to the budget if need be

    def resolve_capacity(self, prompt_length: int) -> int:
        capacity = super().resolve_capacity(prompt_length)
        self.observed = min(self.window, capacity, prompt_length)
        if capacity < min(self.window, prompt_length):
            self.note = (f"{self.method}: {self.budget} gave a budget smaller than window={self.window} (short "
                         f"prompt): the window was cut to the budget, only the last tokens kept")
        return capacity

    def after_append(self, keys: torch.Tensor, first: bool) -> None:
        if first and self.stored_tokens() > self.capacity:
            self.awaiting_scores = True
            request_scores(self, keys, last_rows=self.observed)

    def select(self, column_sums: torch.Tensor) -> torch.Tensor:
        """Top ``capacity − window`` pooled scores among the earlier tokens, then the window."""
        n, w = column_sums.shape[-1], self.observed
        pooled = pool1d(column_sums[..., : n - w], self.kernel_size, self.pooling)
        chosen = top_k_sorted(pooled, self.capacity - w)
        window = rows(torch.arange(n - w, n, device=column_sums.device), *column_sums.shape[:2])
        return torch.cat([chosen, window], dim=-1)

    def reset(self) -> None:
        super().reset()
        self.observed = None


class SnapKVCache(BudgetCache):
    def __init__(self, layers: list[SnapKVLayer]):
        super().__init__(layers=layers)

    @classmethod
    def for_model(cls, config, budget: TokenBudget, window: int = 32, kernel_size: int = 5,
                  pooling: str = "avg") -> "SnapKVCache":
        return cls([SnapKVLayer(budget, window, kernel_size, pooling) for _ in range(num_layers(config))])
