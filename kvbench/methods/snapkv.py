"""``snapkv``: keep what the prompt's last tokens attend to (Li et al. 2024, "SnapKV: LLM Knows What You
are Looking for Before Generation"), with real eviction (METHODS.md §7).

Once, at the end of the prefill, every (layer, KV head) keeps its observation window -- the last ``window``
prompt tokens -- plus the ``budget − window`` earlier tokens that window attends to most. No decode-time
eviction: tokens generated later are appended, as in the paper. Query-aware by design: the window should
hold the question (``suite.query_aware=true``); with the default query-agnostic protocol it holds the end
of the document.

Score of an earlier token k: Σ over the window's queries of softmax(q·Kᵀ)[q, k], summed over the query
heads that share the KV head (kvpress averages the group: the same ranking), smoothed along the sequence
by 1-D pooling. Only the window's query rows are scored (O(window·N) per head). Attention is the model's
own (``scored_<impl>``); the prefill forward itself attends over every token.

Parameters:

* ``budget_ratio`` / ``budget_tokens`` -- tokens kept per (layer, KV head), window included:
  ⌊budget_ratio·P⌋ of the prompt (exact floor) or a count. Give one (set the other to null); both null =
  ratio 0.2. A count below the window is refused when the method is built; a ratio that cannot hold the
  window (``⌊r·P⌋ < window``, short prompts) keeps the last ``⌊r·P⌋`` tokens -- a window cut to the
  budget -- and says so in the record.
* ``window`` -- observation window in tokens (default 32, the paper's; kvpress uses 64).
* ``kernel_size`` -- pooling kernel, odd (default 5, the official code's); 1 = no pooling.
* ``pooling`` -- ``avg`` (default, the official code's: zero padding counted) or ``max``.
* ``group_reduction`` -- GQA: how the query heads sharing a KV head combine their scores: ``sum`` (default;
  the official code is MHA-only, kvpress takes the ``mean``, which ranks tokens the same), ``mean`` or ``max``.
* ``decode_budget_tokens`` / ``decode_budget_ratio`` / ``compress_every`` -- compression while decoding
  (:mod:`kvbench.cache.decode_budget`), independent of the prefill budget. SnapKV has no decoding rule, so it
  follows kvpress's ``DecodingPress`` (METHODS_NEXT.md §6: score the window, keep the top, nothing carried over):
  the observation window is the queries decoded since the last compression (kvpress buffers their hidden states;
  kvbench adds each one's attention to the book's scores as it is decoded, the same sum whenever no eviction
  happened in between), pooled along logical positions; every ``compress_every`` steps a layer keeps its newest
  ``window`` tokens plus the top pooled scores up to the target, then clears the scores. The scores
  (float32, one per kept token) are counted in the cache's bytes. Both null (default): decoding appends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from kvbench.cache.attention_scores import request_scores
from kvbench.cache.decode_budget import DecodeBudget, decode_budget_of
from kvbench.cache.eviction import (POOLINGS, BudgetCache, BudgetLayer, TokenBudget, keep_newest_and_top, num_layers,
                                    pool1d, pool_by_position, rows, top_k_sorted)
from kvbench.methods.base import Method, MethodConfigError, ScoredAttention, check_group_reduction, register


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
    group_reduction: str = "sum"
    decode_budget_tokens: Optional[int] = None
    decode_budget_ratio: Optional[float] = None
    compress_every: int = 1

    def __post_init__(self):
        check_selection(self)
        check_group_reduction(self)
        self.decoding()

    def decoding(self) -> DecodeBudget | None:
        return decode_budget_of(self)

    def budget(self) -> TokenBudget:
        return TokenBudget.of(self.budget_ratio, self.budget_tokens)

    def new_cache(self, model) -> "SnapKVCache":
        self.require_scoring(model)
        return reduce_groups_by(SnapKVCache.for_model(model.config, self.budget(), self.window, self.kernel_size,
                                                      self.pooling, self.decoding()), self.group_reduction)


def reduce_groups_by(cache, group_reduction: str):
    """Set how each layer of ``cache`` combines a KV head's query heads in the scores it requests."""
    for layer in cache.layers:
        layer.group_reduction = group_reduction
    return cache


def check_selection(method) -> None:
    """SnapKV's parameters (PyramidKV shares them): budget, window, kernel, pooling."""
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


class SnapKVLayer(BudgetLayer):
    method = "snapkv"
    group_reduction = "sum"

    def __init__(self, budget: TokenBudget, window: int = 32, kernel_size: int = 5, pooling: str = "avg",
                 decode: DecodeBudget | None = None):
        super().__init__(budget, with_scores=decode is not None, decode=decode)
        self.compress_due = False
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

    def decode_step(self, keys: torch.Tensor, compress: bool) -> None:
        """Every decode step delivers its query's attention (the observation window accumulates in the book's
        scores); a due step also compresses, once they arrive (:meth:`receive_scores`)."""
        self.compress_due = compress
        self.awaiting_scores = True
        request_scores(self, keys, last_rows=1)

    def receive_scores(self, column_sums: torch.Tensor) -> None:
        if self.steps == 0:  # the prefill's selection
            return super().receive_scores(column_sums)
        self.awaiting_scores = False
        self.book.add_scores(column_sums.to(torch.float32))
        if self.compress_due:
            self.compress_due = False
            self.keep(self.select_decoding())
            self.book.scores.zero_()  # kvpress: nothing carried over between compressions

    def select_decoding(self) -> torch.Tensor:
        """The newest ``window`` tokens (by logical position) plus the top pooled window scores among the others."""
        positions = self.book.positions
        pooled = pool_by_position(self.book.scores, positions, self.kernel_size, self.pooling)
        return keep_newest_and_top(positions, pooled, min(self.window, self.target), self.target)

    def reset(self) -> None:
        super().reset()
        self.observed = None
        self.compress_due = False


class SnapKVCache(BudgetCache):
    def __init__(self, layers: list[SnapKVLayer]):
        super().__init__(layers=layers)

    @classmethod
    def for_model(cls, config, budget: TokenBudget, window: int = 32, kernel_size: int = 5,
                  pooling: str = "avg", decode: DecodeBudget | None = None) -> "SnapKVCache":
        return cls([SnapKVLayer(budget, window, kernel_size, pooling, decode) for _ in range(num_layers(config))])
