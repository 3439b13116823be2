"""``pyramidkv``: SnapKV with per-layer budgets shaped like a pyramid (Cai et al. 2024, "PyramidKV: Dynamic
KV Cache Compression based on Pyramidal Information Funneling"), with real eviction (METHODS.md §7).

SnapKV's selection (:mod:`kvbench.methods.snapkv`: observation window + pooled top-k, once after the
prefill), but lower layers keep more tokens than higher ones. Budgets, as the official code computes them:
with B the uniform budget and w the window, each layer keeps its window plus s_l selected tokens; the s_l
fall linearly from ``2(B−w) − (B−w)/β`` (layer 0) to ``(B−w)/β`` (the last layer), so their mean is
``B − w`` and the per-layer budgets ``s_l + w`` sum to exactly ``L·B`` -- the same memory as uniform
SnapKV. β divides the part beyond the window, so the smallest layer always holds its window. Integers: each
s_l is floored and the remainder goes, one token each, to the layers with the largest fractional parts
(lower layers first on ties); the sum stays exact and the budgets stay non-increasing.

Clamping (said in the record's ``kv.notes``, never silent): a layer cannot select more than the ``P − w``
tokens outside its window, so when the top budget would exceed that, it is clamped to ``P − w`` and the
bottom raised to keep the mean -- a flatter pyramid, where the official code and kvpress fall back to
uniform SnapKV. A ratio budget that cannot hold the window cuts the window (as SnapKV, noted).

Layers store different numbers of tokens; transformers builds one mask, for layer 0, and the scored
attention re-aligns it per layer (:func:`~kvbench.cache.attention_scores.align_mask`), so a multi-token
forward after compression (scoring a continuation, a query fed after the context) works.

Parameters: those of ``snapkv`` (``budget_ratio`` / ``budget_tokens`` = the uniform budget B, window
included; ``window`` 32, ``kernel_size`` 5, ``pooling`` avg), plus

* ``beta`` -- the pyramid's steepness: the last layer selects (B − window)/β tokens (default 20, the
  paper's); 1 is uniform SnapKV.
* ``group_reduction`` -- GQA reduction of a KV head's query heads (``sum`` default, as ``snapkv``; ``mean``, ``max``).

No decode budget (``decode_budget_*`` is refused in one line): the schedule is defined on the prompt, and a
decode-time target is one count for every layer; ``snapkv`` with a decode budget is the same selection, uniform.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from math import floor
from typing import Optional

from kvbench.cache.eviction import BudgetCache, TokenBudget, num_layers
from kvbench.methods.base import Method, MethodConfigError, ScoredAttention, check_group_reduction, register
from kvbench.methods.snapkv import SnapKVLayer, check_selection, reduce_groups_by


@register
@dataclass
class PyramidKV(ScoredAttention, Method):
    axis = "tokens"
    no_decode_budget = ("its per-layer pyramid is computed from the prompt (P, window, beta), and a decode budget "
                        "is one count for every layer, which would flatten it; use method=snapkv with "
                        "decode_budget_tokens (the same selection, uniform)")
    name: str = "pyramidkv"
    budget_ratio: Optional[float] = None
    budget_tokens: Optional[int] = None
    window: int = 32
    kernel_size: int = 5
    pooling: str = "avg"
    beta: int = 20
    group_reduction: str = "sum"

    def __post_init__(self):
        check_selection(self)
        check_group_reduction(self)
        if self.beta < 1:
            raise MethodConfigError(f"method.beta={self.beta} must be >= 1 (1 = the same budget in every layer)")

    def budget(self) -> TokenBudget:
        return TokenBudget.of(self.budget_ratio, self.budget_tokens)

    def new_cache(self, model) -> "PyramidKVCache":
        self.require_scoring(model)
        return reduce_groups_by(PyramidKVCache.for_model(model.config, self.budget(), self.window, self.kernel_size,
                                                         self.pooling, self.beta), self.group_reduction)


def pyramid_budgets(budget: int, window: int, prompt_length: int, n_layers: int, beta: int) -> tuple[list[int], bool]:
    """Per-layer budgets (window included) for a uniform ``budget`` ≤ ``prompt_length``, and whether the
    top was clamped to the prompt. ``window`` ≤ ``budget``."""
    selected = Fraction(budget - window)
    low = selected / beta
    high = 2 * selected - low
    clamped = high > prompt_length - window
    if clamped:
        high = Fraction(prompt_length - window)
        low = 2 * selected - high
    if n_layers == 1:
        exact = [selected]
    else:
        exact = [high - (high - low) * layer / (n_layers - 1) for layer in range(n_layers)]
    counts = [floor(x) for x in exact]
    remainder = int(n_layers * selected) - sum(counts)
    by_fraction = sorted(range(n_layers), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_fraction[:remainder]:
        counts[i] += 1
    return [c + window for c in counts], clamped


class PyramidKVLayer(SnapKVLayer):
    method = "pyramidkv"

    def __init__(self, layer_idx: int, n_layers: int, budget: TokenBudget, window: int = 32, kernel_size: int = 5,
                 pooling: str = "avg", beta: int = 20):
        super().__init__(budget, window, kernel_size, pooling)
        self.layer_idx, self.n_layers, self.beta = layer_idx, n_layers, beta
        self.uniform: int | None = None

    def resolve_capacity(self, prompt_length: int) -> int:
        uniform = super().resolve_capacity(prompt_length)  # sets the observed window (and a note if it was cut)
        self.uniform = uniform
        if uniform >= prompt_length:
            return uniform  # nothing to evict anywhere
        budgets, clamped = pyramid_budgets(uniform, self.observed, prompt_length, self.n_layers, self.beta)
        if clamped and self.note is None:
            self.note = (f"pyramidkv: per-layer budgets clamped to the prompt ({self.budget}, beta={self.beta}): the "
                         f"first layer keeps the whole prompt, the others a flatter pyramid with the same mean")
        return budgets[self.layer_idx]

    def reset(self) -> None:
        super().reset()
        self.uniform = None


class PyramidKVCache(BudgetCache):
    def __init__(self, n_layers: int, budget: TokenBudget, window: int = 32, kernel_size: int = 5,
                 pooling: str = "avg", beta: int = 20):
        super().__init__(layers=[PyramidKVLayer(i, n_layers, budget, window, kernel_size, pooling, beta)
                                 for i in range(n_layers)])

    @classmethod
    def for_model(cls, config, budget: TokenBudget, window: int = 32, kernel_size: int = 5, pooling: str = "avg",
                  beta: int = 20) -> "PyramidKVCache":
        return cls(num_layers(config), budget, window, kernel_size, pooling, beta)

    def layer_budgets(self) -> list[int | None]:
        """Each layer's budget once the prompt is known (None before)."""
        return [layer.capacity for layer in self.layers]
