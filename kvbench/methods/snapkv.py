"""``snapkv``: keep what the prompt's last tokens attend to (Li et al. 2024, "SnapKV: LLM Knows What You
are Looking for Before Generation"), with real eviction (METHODS.md §7; cache: kvbench/cache/snapkv.py).

Once, after the prefill, every (layer, KV head) keeps its observation window (the last ``window`` prompt
tokens) plus the earlier tokens that window attends to most: attention probabilities summed over the
window's queries and the KV head's query heads, smoothed by 1-D pooling, top ``budget − window``. No
decode-time eviction, as in the paper. Query-aware by design: the window should hold the question
(``suite.query_aware=true``); with the default query-agnostic protocol it holds the end of the document.

Parameters:

* ``budget_ratio`` / ``budget_tokens`` -- tokens kept per (layer, KV head), window included:
  ⌊budget_ratio·P⌋ of the prompt (exact floor) or a count. Give one (set the other to null); both null =
  ratio 0.2. A count must hold the window; a ratio too small for it cuts the window (noted in the record).
* ``window`` -- observation window in tokens (default 32, the paper's; kvpress uses 64).
* ``kernel_size`` -- pooling kernel, odd (default 5, the official code's); 1 = no pooling.
* ``pooling`` -- ``avg`` (default, the official code's) or ``max``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from kvbench.methods.base import Method, MethodConfigError, ScoredAttention, register


@register
@dataclass
class SnapKV(ScoredAttention, Method):
    axis = "tokens"
    name: str = "snapkv"
    budget_ratio: Optional[float] = None
    budget_tokens: Optional[int] = None
    window: int = 32
    kernel_size: int = 5
    pooling: str = "avg"

    def __post_init__(self):
        check_selection(self)

    def budget(self):
        from kvbench.cache.eviction import TokenBudget

        return TokenBudget.of(self.budget_ratio, self.budget_tokens)

    def new_cache(self, model):
        from kvbench.cache.snapkv import SnapKVCache

        self.require_scoring(model)
        return SnapKVCache.for_model(model.config, self.budget(), self.window, self.kernel_size, self.pooling)


def check_selection(method) -> None:
    """SnapKV's parameters (PyramidKV shares them): budget, window, kernel, pooling."""
    from kvbench.cache.eviction import POOLINGS

    method.budget()
    if method.window < 1:
        raise MethodConfigError(f"method.window={method.window} must be a token count >= 1")
    if method.budget_tokens is not None and method.window > method.budget_tokens:
        raise MethodConfigError(
            f"method.window={method.window} is larger than method.budget_tokens={method.budget_tokens} "
            "(the budget holds the window: lower the window or raise the budget)")
    if method.kernel_size < 1 or method.kernel_size % 2 == 0:
        raise MethodConfigError(f"method.kernel_size={method.kernel_size} must be an odd number >= 1 "
                                "(so the pooled scores stay aligned with the tokens)")
    if method.pooling not in POOLINGS:
        raise MethodConfigError(
            f"method.pooling={method.pooling!r} is not supported (choose one of: {', '.join(POOLINGS)})")
