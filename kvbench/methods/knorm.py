"""``knorm``: keep the tokens with the lowest key norm (Devoto et al. 2024, "A Simple and Effective L2
Norm-Based Strategy for KV Cache Compression"), with real eviction (METHODS.md §7; cache:
kvbench/cache/knorm.py).

After the prefill, every (layer, KV head) keeps the tokens whose keys have the lowest L2 norm, up to the
budget; later tokens are appended. The rule reads keys only -- no attention scores -- so it runs with
every attention implementation (sdpa, eager, flash, flex) and leaves the model untouched.

Parameters:

* ``budget_ratio`` / ``budget_tokens`` -- tokens kept per (layer, KV head): ⌊budget_ratio·P⌋ of the
  prompt (exact floor) or a count. Give one (set the other to null); both null = ratio 0.2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from kvbench.methods.base import Method, check_full_attention, register


@register
@dataclass
class Knorm(Method):
    axis = "tokens"
    name: str = "knorm"
    budget_ratio: Optional[float] = None
    budget_tokens: Optional[int] = None

    def __post_init__(self):
        self.budget()

    def budget(self):
        from kvbench.cache.eviction import TokenBudget

        return TokenBudget.of(self.budget_ratio, self.budget_tokens)

    def check_model(self, config) -> None:
        check_full_attention(self.name, config)  # any attention implementation: the rule reads keys only

    def new_cache(self, model):
        from kvbench.cache.knorm import KnormCache

        return KnormCache.for_model(model.config, self.budget())
