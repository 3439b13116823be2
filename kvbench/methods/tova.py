"""``tova``: Token Omission Via Attention (Oren et al. 2024, "Transformers are Multi-State RNNs"), with
real eviction (METHODS.md §7).

Whenever a layer holds more tokens than its budget, it drops those with the lowest attention probability
from the *current* query -- the last query of the forward. Applied after every forward: at the end of the
prefill (scored by the last prompt query) and at each decode step (one token over the budget: exactly one
token is dropped, possibly the new one, as in the official code). Nothing accumulates: the score is the
last query's attention alone. Attention is the model's own (``scored_sdpa`` / ``scored_eager``); only the
last query row is scored, and only in forwards that end over the budget. Positions: the official code lets
positions follow the stored length; kvbench, like kvpress, keeps every token's original position (new
tokens at the number of tokens seen).

Parameters:

* ``budget_ratio`` / ``budget_tokens`` -- tokens kept per layer: ⌊budget_ratio·P⌋ of the prompt (exact
  floor) or a count. Give one (set the other to null); both null = ratio 0.2. Fixed once the prompt is
  seen: decoding evicts one token per step.
* ``heads`` -- which probabilities are averaged. ``layer`` (default; the paper's rule, the official code's
  and kvpress's): the mean over *all* query heads of the layer, so the layer keeps one token set, stored in
  every KV head; ``group``: the mean over the query heads sharing each KV head, so each KV head keeps its
  own set. The record's method params say which.
* ``group_reduction`` -- with ``heads=group``, how a KV head's query heads combine: ``mean`` (default, the
  paper's mean over heads), ``sum`` or ``max``. ``heads=layer`` averages the groups' scores over the layer.
* ``decode_budget_tokens`` / ``decode_budget_ratio`` / ``compress_every`` -- compression while decoding
  (:mod:`kvbench.cache.decode_budget`), independent of the prefill budget: on every ``compress_every``-th decode
  step a layer over the decode target keeps the target tokens the current query attends to most -- TOVA's own
  per-step rule (METHODS_NEXT.md §6), since TOVA *is* a decoding rule; with ``compress_every=1`` it is the
  paper's. Both null (default): decoding holds the prefill budget, one token dropped per step, as above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from kvbench.cache.attention_scores import request_scores
from kvbench.cache.decode_budget import DecodeBudget, decode_budget_of
from kvbench.cache.eviction import BudgetCache, BudgetLayer, TokenBudget, num_layers, top_k_sorted
from kvbench.methods.base import Method, MethodConfigError, ScoredAttention, check_group_reduction, register
from kvbench.methods.snapkv import reduce_groups_by

HEADS = ("layer", "group")


@register
@dataclass
class TOVA(ScoredAttention, Method):
    axis = "tokens"
    name: str = "tova"
    budget_ratio: Optional[float] = None
    budget_tokens: Optional[int] = None
    heads: str = "layer"
    group_reduction: str = "mean"
    decode_budget_tokens: Optional[int] = None
    decode_budget_ratio: Optional[float] = None
    compress_every: int = 1

    def __post_init__(self):
        self.budget()
        check_group_reduction(self)
        self.decoding()
        if self.heads not in HEADS:
            raise MethodConfigError(f"method.heads={self.heads!r} is not supported (choose one of: {', '.join(HEADS)})")

    def budget(self) -> TokenBudget:
        return TokenBudget.of(self.budget_ratio, self.budget_tokens)

    def decoding(self) -> DecodeBudget | None:
        return decode_budget_of(self)

    def new_cache(self, model) -> "TOVACache":
        self.require_scoring(model)
        return reduce_groups_by(TOVACache.for_model(model.config, self.budget(), self.heads, self.decoding()),
                                self.group_reduction)


class TOVALayer(BudgetLayer):
    method = "tova"
    group_reduction = "mean"  # per KV head: the mean over its query heads

    def __init__(self, budget: TokenBudget, heads: str = "layer", decode: DecodeBudget | None = None):
        super().__init__(budget, decode=decode)
        self.heads = heads

    def after_append(self, keys: torch.Tensor, first: bool) -> None:
        if self.stored_tokens() > self.capacity:
            self.awaiting_scores = True
            request_scores(self, keys, last_rows=1)

    def decode_step(self, keys: torch.Tensor, compress: bool) -> None:
        """The paper's per-step rule, run on the steps the decode budget makes due: the current query's attention."""
        if compress:
            self.awaiting_scores = True
            request_scores(self, keys, last_rows=1)

    def priority(self, column_sums: torch.Tensor) -> torch.Tensor:
        """Per slot, the current query's attention (per KV head, or the layer's mean in every KV head)."""
        if self.heads == "group":
            return column_sums
        return column_sums.mean(dim=1, keepdim=True).expand_as(column_sums)  # mean of the equal-sized groups' means

    def select(self, column_sums: torch.Tensor) -> torch.Tensor:
        """The :attr:`target` tokens the current query attends to most (per layer or per KV head): the budget, or
        the decode target during a decode step."""
        return top_k_sorted(self.priority(column_sums), self.target)

    def receive_scores(self, column_sums: torch.Tensor) -> None:
        """Evict down to :attr:`target`: one token in place at a decode step, more by a gather."""
        self.awaiting_scores = False
        self.evict_lowest(self.priority(column_sums), self.stored_tokens() - self.target)


class TOVACache(BudgetCache):
    def __init__(self, num_layers: int, budget: TokenBudget, heads: str = "layer", decode: DecodeBudget | None = None):
        super().__init__(layers=[TOVALayer(budget, heads, decode) for _ in range(num_layers)])

    @classmethod
    def for_model(cls, config, budget: TokenBudget, heads: str = "layer",
                  decode: DecodeBudget | None = None) -> "TOVACache":
        return cls(num_layers(config), budget, heads, decode)
