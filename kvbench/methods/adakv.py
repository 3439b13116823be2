"""``adakv``: one layer's budget split across its KV heads by their own scores (Feng, Lv, Cao, Xie, Zhou 2024,
"Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation", arXiv:2407.11550), with real eviction on a
ragged per-KV-head cache (:mod:`kvbench.cache.ragged`).

Once, at the end of the prefill, every layer scores its tokens as SnapKV does (:mod:`kvbench.methods.snapkv`:
the last ``window`` prompt queries' attention, the group's query heads combined by ``group_reduction``, pooled
along the sequence), then splits ``H·(B − window)`` tokens across its H KV heads by the top-k of the scores
flattened over (head, token), with a floor per head (:mod:`kvbench.cache.head_budgets`); each head keeps its
own top tokens plus the window. Every layer stores exactly ``H·B`` tokens per sequence (B = the budget per KV
head, window included, as for ``snapkv``): the same nominal bytes as uniform SnapKV at that budget, measured.
No decode-time eviction (as the authors' code): generated tokens are appended to every head.

Defaults are the authors' (FFY0/AdaKV ``AdaptiveSnapKVCluster``): window 32, kernel 7, max pooling, GQA mean,
floor α = 0.2. Where kvbench differs from the authors: the window counts toward the budget (as kvbench's
``snapkv``, so both store the same bytes at one budget; the authors keep it on top of B), and the blend
``c_h·(1−α) + ⌊α·B⌋`` is apportioned by largest remainder so a layer's total is exact.

Parameters: ``budget_ratio`` / ``budget_tokens`` (the *average* budget per KV head, window included; as
``snapkv``), ``window``, ``kernel_size``, ``pooling``, and

* ``group_reduction`` -- how a KV head's query heads combine their scores: ``mean`` (default, the authors'),
  ``max`` or ``sum``;
* ``floor_ratio`` -- the safeguard α: each head keeps at least ``⌊α·(B − window)⌋`` selected tokens (default
  0.2, recommended by the authors for GQA); or ``floor_tokens``, an absolute minimum (set one, the other null);
* ``allocation`` -- ``authors`` (default) or ``kvpress`` (safeguarded flattened top-k, ``AdaKVPress``);
* ``layout`` -- ``ragged`` (default: evicted tokens are freed) or ``masked``: kvpress's layout, the same
  selection as a per-head mask over the full cache (:mod:`kvbench.cache.masked_heads`), a labelled
  comparison whose bytes are the full cache's plus the mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from kvbench.cache.attention_scores import request_scores
from kvbench.cache.eviction import TokenBudget, num_layers, pool1d
from kvbench.cache.h2o import ratio_floor
from kvbench.cache.head_budgets import ALLOCATIONS, head_budgets, keep_top_per_head
from kvbench.cache.masked_heads import MaskedHeadLayer
from kvbench.cache.ragged import RaggedCache, RaggedLayer
from kvbench.methods.base import Method, MethodConfigError, ScoredAttention, check_group_reduction, register
from kvbench.methods.snapkv import check_selection

LAYOUTS = ("ragged", "masked")


@register
@dataclass
class AdaKV(ScoredAttention, Method):
    axis = "tokens"
    name: str = "adakv"
    budget_ratio: Optional[float] = None
    budget_tokens: Optional[int] = None
    window: int = 32
    kernel_size: int = 7
    pooling: str = "max"
    group_reduction: str = "mean"
    floor_ratio: Optional[float] = 0.2
    floor_tokens: Optional[int] = None
    allocation: str = "authors"
    layout: str = "ragged"

    def __post_init__(self):
        check_selection(self)
        check_group_reduction(self)
        if (self.floor_ratio is None) == (self.floor_tokens is None):
            raise MethodConfigError(f"method.floor_ratio={self.floor_ratio} and method.floor_tokens="
                                    f"{self.floor_tokens}: set exactly one (the other null)")
        if self.floor_ratio is not None and not 0 <= self.floor_ratio <= 1:
            raise MethodConfigError(f"method.floor_ratio={self.floor_ratio} must lie in [0, 1]")
        if self.floor_tokens is not None and self.floor_tokens < 0:
            raise MethodConfigError(f"method.floor_tokens={self.floor_tokens} must be a token count >= 0")
        if (self.floor_tokens is not None and self.budget_tokens is not None
                and self.floor_tokens > self.budget_tokens - self.window):
            raise MethodConfigError(
                f"method.floor_tokens={self.floor_tokens} is above the per-head budget: each KV head selects "
                f"budget_tokens - window = {self.budget_tokens - self.window} tokens on average")
        if self.allocation not in ALLOCATIONS:
            raise MethodConfigError(f"method.allocation={self.allocation!r} is not supported (choose one of: "
                                    f"{', '.join(ALLOCATIONS)})")
        if self.layout not in LAYOUTS:
            raise MethodConfigError(f"method.layout={self.layout!r} is not supported (choose one of: "
                                    f"{', '.join(LAYOUTS)})")

    def budget(self) -> TokenBudget:
        return TokenBudget.of(self.budget_ratio, self.budget_tokens)

    def new_cache(self, model) -> RaggedCache:
        self.require_scoring(model)
        layer = AdaKVLayer if self.layout == "ragged" else MaskedAdaKVLayer
        return RaggedCache(layers=[layer(self) for _ in range(num_layers(model.config))])


class AdaKVSelection:
    """What both layouts share: the budget at the first forward, the SnapKV score request, the head-wise choice."""

    method = "adakv"

    def __init__(self, params: AdaKV):
        super().__init__()
        self.params = params
        self.group_reduction = params.group_reduction
        self.awaiting_scores = False
        self.capacity = self.observed = None
        self.note: str | None = None

    def after_append(self, keys: torch.Tensor, first: bool) -> None:
        if not first:
            return
        n = keys.shape[-2]
        self.capacity = self.params.budget().resolve(n)
        self.observed = min(self.params.window, self.capacity, n)
        if self.capacity < n:
            self.awaiting_scores = True
            request_scores(self, keys, last_rows=self.observed)

    def floor(self, selected: int) -> int:
        p = self.params
        if p.floor_tokens is None:
            return ratio_floor(p.floor_ratio, selected)  # ⌊α·B⌋, exact for the decimal typed (not float int())
        if p.floor_tokens > selected:
            self.note = (f"adakv: floor_tokens={p.floor_tokens} is above the {selected} tokens each head selects "
                         f"on average for this prompt: the floor was lowered to {selected} (uniform SnapKV)")
        return min(p.floor_tokens, selected)

    def receive_scores(self, column_sums: torch.Tensor) -> None:
        self.awaiting_scores = False
        self.keep_tokens(self.select(column_sums))

    def select(self, column_sums: torch.Tensor) -> torch.Tensor:
        """Boolean ``[b, h, n]``: each head's share of the earlier tokens, by the flattened pooled scores, + the window."""
        n, w = column_sums.shape[-1], self.observed
        selected = self.capacity - w
        pooled = pool1d(column_sums[..., : n - w], self.params.kernel_size, self.params.pooling)
        budgets = head_budgets(pooled, selected, self.floor(selected), self.params.allocation)
        window = torch.ones(*column_sums.shape[:2], w, dtype=torch.bool, device=column_sums.device)
        return torch.cat([keep_top_per_head(pooled, budgets), window], dim=-1)

    def check_evicted(self) -> None:
        if self.awaiting_scores:
            raise RuntimeError("method=adakv: the prefill delivered no attention scores (call method.apply(model))")

    def reset(self) -> None:
        super().reset()
        self.awaiting_scores = False
        self.capacity = self.observed = self.note = None


class AdaKVLayer(AdaKVSelection, RaggedLayer):
    """AdaKV's choice on the ragged per-KV-head store (evicted tokens freed)."""


class MaskedAdaKVLayer(AdaKVSelection, MaskedHeadLayer):
    """AdaKV's choice as kvpress stores it: a per-head mask over the full cache (a comparison; frees nothing)."""
