"""``tova``: Token Omission Via Attention (Oren et al. 2024, "Transformers are Multi-State RNNs"), with
real eviction (METHODS.md §7; cache: kvbench/cache/tova.py).

Whenever a layer holds more tokens than its budget -- after the prefill, and after each decode step -- it
drops the tokens the current (last) query attends to least. The scores are that one query's attention
probabilities, computed beside the model's own attention (``scored_sdpa`` / ``scored_eager``).

Parameters:

* ``budget_ratio`` / ``budget_tokens`` -- tokens kept per layer: ⌊budget_ratio·P⌋ of the prompt (exact
  floor) or a count. Give one (set the other to null); both null = ratio 0.2. Fixed once the prompt is
  seen: decoding evicts one token per step.
* ``heads`` -- ``layer`` (default; the paper's rule, as the official code and kvpress): probabilities
  averaged over all query heads of the layer, one token set per layer, stored in every KV head;
  ``group``: averaged over each KV head's query group, one set per KV head. The record's method params
  say which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from kvbench.methods.base import Method, MethodConfigError, ScoredAttention, register


@register
@dataclass
class TOVA(ScoredAttention, Method):
    axis = "tokens"
    name: str = "tova"
    budget_ratio: Optional[float] = None
    budget_tokens: Optional[int] = None
    heads: str = "layer"

    def __post_init__(self):
        from kvbench.cache.tova import HEADS

        self.budget()
        if self.heads not in HEADS:
            raise MethodConfigError(f"method.heads={self.heads!r} is not supported (choose one of: {', '.join(HEADS)})")

    def budget(self):
        from kvbench.cache.eviction import TokenBudget

        return TokenBudget.of(self.budget_ratio, self.budget_tokens)

    def new_cache(self, model):
        from kvbench.cache.tova import TOVACache

        self.require_scoring(model)
        return TOVACache.for_model(model.config, self.budget(), self.heads)
