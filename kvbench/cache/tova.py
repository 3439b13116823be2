"""TOVA cache (Oren et al. 2024, "Transformers are Multi-State RNNs", Token Omission Via Attention):
whenever a layer holds more tokens than its budget, it drops those with the lowest attention probability
from the *current* query -- the last query of the forward (METHODS.md §7).

Applied after every forward: at the end of the prefill (scored by the last prompt query) and at each
decode step (one token over the budget: exactly one token is dropped, possibly the new one, as in the
official code). Nothing accumulates: the score is the last query's attention alone.

``heads`` -- which probabilities are averaged:

* ``layer`` (default; the paper's rule, the official code's and kvpress's): the mean over *all* query
  heads of the layer, so the layer keeps one token set, stored in every KV head;
* ``group``: the mean over the query heads sharing each KV head, so each KV head keeps its own set.

Attention is the model's own (``scored_<impl>``); only the last query row is scored, and only in forwards
that end over the budget. Positions: the official code lets positions follow the stored length; kvbench,
like kvpress, keeps every token's original position (new tokens at the number of tokens seen).
"""

from __future__ import annotations

import torch

from kvbench.cache.attention_scores import request_scores
from kvbench.cache.eviction import BudgetCache, BudgetLayer, TokenBudget, num_layers, top_k_sorted

HEADS = ("layer", "group")


class TOVALayer(BudgetLayer):
    method = "tova"
    score_agg = "mean"  # per KV head: the mean over its query heads

    def __init__(self, budget: TokenBudget, heads: str = "layer"):
        super().__init__(budget)
        self.heads = heads

    def after_append(self, keys: torch.Tensor, first: bool) -> None:
        if self.stored_tokens() > self.capacity:
            self.awaiting_scores = True
            request_scores(self, keys, last_rows=1)

    def select(self, column_sums: torch.Tensor) -> torch.Tensor:
        """The ``capacity`` tokens the current query attends to most (per layer or per KV head)."""
        if self.heads == "group":
            return top_k_sorted(column_sums, self.capacity)
        layer_mean = column_sums.mean(dim=1, keepdim=True)  # mean of the equal-sized groups' means
        return top_k_sorted(layer_mean, self.capacity).expand(-1, column_sums.shape[1], -1)


class TOVACache(BudgetCache):
    def __init__(self, num_layers: int, budget: TokenBudget, heads: str = "layer"):
        super().__init__(layers=[TOVALayer(budget, heads) for _ in range(num_layers)])

    @classmethod
    def for_model(cls, config, budget: TokenBudget, heads: str = "layer") -> "TOVACache":
        return cls(num_layers(config), budget, heads)
