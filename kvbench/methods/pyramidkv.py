"""``pyramidkv``: SnapKV with per-layer budgets shaped like a pyramid (Cai et al. 2024, "PyramidKV: Dynamic
KV Cache Compression based on Pyramidal Information Funneling"), with real eviction (METHODS.md §7;
cache: kvbench/cache/pyramidkv.py).

SnapKV's selection (observation window + pooled top-k, once after the prefill), but lower layers keep
more tokens than higher ones: beyond its window, layer l selects s_l tokens, falling linearly from
``2(B−w) − (B−w)/β`` at the first layer to ``(B−w)/β`` at the last, as the official code computes them.
Their mean is the uniform budget, so the cache holds exactly what uniform SnapKV holds (integer budgets
sum to L·B). Where the top layer would need more tokens than the prompt has, the budgets are clamped (a
flatter pyramid, same total) and the record's ``kv.notes`` says so -- never a silent fall-back.

Parameters: those of ``snapkv`` (``budget_ratio`` / ``budget_tokens`` = the uniform budget B, window
included; ``window`` 32, ``kernel_size`` 5, ``pooling`` avg), plus

* ``beta`` -- the pyramid's steepness: the last layer selects (B − window)/β tokens (default 20, the
  paper's); 1 is uniform SnapKV.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from kvbench.methods.base import Method, MethodConfigError, ScoredAttention, register
from kvbench.methods.snapkv import check_selection


@register
@dataclass
class PyramidKV(ScoredAttention, Method):
    axis = "tokens"
    name: str = "pyramidkv"
    budget_ratio: Optional[float] = None
    budget_tokens: Optional[int] = None
    window: int = 32
    kernel_size: int = 5
    pooling: str = "avg"
    beta: int = 20

    def __post_init__(self):
        check_selection(self)
        if self.beta < 1:
            raise MethodConfigError(f"method.beta={self.beta} must be >= 1 (1 = the same budget in every layer)")

    def budget(self):
        from kvbench.cache.eviction import TokenBudget

        return TokenBudget.of(self.budget_ratio, self.budget_tokens)

    def new_cache(self, model):
        from kvbench.cache.pyramidkv import PyramidKVCache

        self.require_scoring(model)
        return PyramidKVCache.for_model(model.config, self.budget(), self.window, self.kernel_size, self.pooling,
                                        self.beta)
