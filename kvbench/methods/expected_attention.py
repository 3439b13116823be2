"""``expected_attention``: keep the keys future queries are expected to attend to (Devoto, Jeblick, Jégou 2025,
arXiv:2510.00636; kvpress's default press), with real eviction. Query-agnostic: the scores come from the
statistics of the prompt's own queries, never from a question (:mod:`kvbench.cache.expected_attention`).

Once, at the end of the prefill, every layer reads its prompt queries, estimates the expected query over the next
``n_future`` positions (mean and covariance, rotated forward by RoPE) and scores every key by its expected attention;
each KV head keeps the first ``n_sink`` tokens (protected by construction, not by padding scores) and its top
``B − n_sink`` others, in position order. ``allocation=authors|kvpress`` splits the layer's budget across its KV
heads as ``adakv`` does (:mod:`kvbench.cache.head_budgets`; kvpress's leaderboard entry wraps Expected Attention
in AdaKV) on the ragged per-KV-head cache; ``uniform`` (default, the press alone) gives every head B. No
decode-time eviction (kvpress's ``DecodingPress`` is not reproduced): generated tokens are appended.

Parameters: ``budget_ratio`` / ``budget_tokens`` (per KV head, sinks included, as every token method),
``n_future`` (512), ``n_sink`` (4), ``use_covariance`` (true), ``use_vnorm`` (true: scores × ‖v‖₂, kvpress's
default), ``epsilon`` (0), ``group_reduction`` (``mean``, the paper's and kvpress's), ``allocation``
(``uniform``), ``floor_ratio`` (0.2, with an AdaKV allocation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from kvbench.cache.attention_scores import request_scores
from kvbench.cache.eviction import TokenBudget, num_layers
from kvbench.cache.expected_attention import expected_scores, future_statistics, query_statistics, unrotated_queries
from kvbench.cache.h2o import ratio_floor
from kvbench.cache.head_budgets import ALLOCATIONS, head_budgets, keep_top_per_head
from kvbench.cache.ragged import RaggedCache, RaggedLayer
from kvbench.methods.base import Method, MethodConfigError, ScoredAttention, check_group_reduction, register

HEAD_ALLOCATIONS = ("uniform", *ALLOCATIONS)


@register
@dataclass
class ExpectedAttention(ScoredAttention, Method):
    axis = "tokens"
    name: str = "expected_attention"
    budget_ratio: Optional[float] = None
    budget_tokens: Optional[int] = None
    n_future: int = 512
    n_sink: int = 4
    use_covariance: bool = True
    use_vnorm: bool = True
    epsilon: float = 0.0
    group_reduction: str = "mean"
    allocation: str = "uniform"
    floor_ratio: float = 0.2

    def __post_init__(self):
        self.budget()
        check_group_reduction(self)
        if self.n_future < 1:
            raise MethodConfigError(f"method.n_future={self.n_future} must be a number of positions >= 1")
        if self.n_sink < 0:
            raise MethodConfigError(f"method.n_sink={self.n_sink} must be a token count >= 0")
        if self.budget_tokens is not None and self.n_sink > self.budget_tokens:
            raise MethodConfigError(f"method.n_sink={self.n_sink} is larger than method.budget_tokens="
                                    f"{self.budget_tokens} (the budget holds the sink tokens)")
        if self.allocation not in HEAD_ALLOCATIONS:
            raise MethodConfigError(f"method.allocation={self.allocation!r} is not supported (choose one of: "
                                    f"{', '.join(HEAD_ALLOCATIONS)})")
        if not 0 <= self.floor_ratio <= 1:
            raise MethodConfigError(f"method.floor_ratio={self.floor_ratio} must lie in [0, 1]")

    def budget(self) -> TokenBudget:
        return TokenBudget.of(self.budget_ratio, self.budget_tokens)

    def new_cache(self, model) -> RaggedCache:
        self.require_scoring(model)
        rotary = rotary_of(model)
        return RaggedCache(layers=[ExpectedAttentionLayer(self, *rotary) for _ in range(num_layers(model.config))])


def rotary_of(model) -> tuple[list[float] | None, float]:
    """The model's rotary frequencies (as floats: the cache holds no tensor it does not count) and scaling."""
    found = next((m for m in model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)), None)
    if found is None:
        return None, 1.0
    return found.inv_freq.tolist(), float(getattr(found, "attention_scaling", 1.0))


class ExpectedAttentionLayer(RaggedLayer):
    method = "expected_attention"

    def __init__(self, params: ExpectedAttention, inv_freq: list[float] | None, rope_scaling: float):
        super().__init__()
        self.params, self.inv_freq, self.rope_scaling = params, inv_freq, rope_scaling
        self.capacity: int | None = None
        self.awaiting_scores = False

    def after_append(self, keys: torch.Tensor, first: bool) -> None:
        if first:
            self.capacity = self.params.budget().resolve(keys.shape[-2])
            if self.capacity < keys.shape[-2]:
                self.awaiting_scores = True
                request_scores(self, keys)  # delivered as queries: receive_queries

    def receive_queries(self, query: torch.Tensor, module) -> None:
        self.awaiting_scores = False
        scale = getattr(module, "scaling", query.shape[-1] ** -0.5)
        keys, values = self.store.as_uniform(self.seen)
        self.keep_tokens(self.select(query, keys, values, scale))

    def select(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
        """Boolean ``[b, h, n]``: the sinks, then each head's top expected-attention keys."""
        p, n = self.params, keys.shape[-2]
        inv_freq = None if self.inv_freq is None else torch.tensor(self.inv_freq, device=query.device)
        mean, cov = query_statistics(unrotated_queries(query, inv_freq, self.rope_scaling, 0), p.n_sink)
        mean, cov = future_statistics(mean, cov, inv_freq, self.rope_scaling, n, p.n_future)
        sink = min(p.n_sink, self.capacity)
        scores = expected_scores(mean, cov if p.use_covariance else None, keys[..., sink:, :], values[..., sink:, :],
                                 scale, p.group_reduction, p.use_vnorm, p.epsilon)
        return torch.cat([torch.ones(*keys.shape[:2], sink, dtype=torch.bool, device=keys.device),
                          keep_scores(scores, self.capacity - sink, p.allocation, p.floor_ratio)], dim=-1)

    def check_evicted(self) -> None:
        if self.awaiting_scores:
            raise RuntimeError(f"method={self.method}: the prefill delivered no queries (call method.apply(model))")

    def reset(self) -> None:
        super().reset()
        self.capacity, self.awaiting_scores = None, False


def keep_scores(scores: torch.Tensor, budget: int, allocation: str, floor_ratio: float) -> torch.Tensor:
    """Boolean ``[b, h, n]``: each head's top ``budget`` scores (``uniform``), or an AdaKV split of ``h·budget``."""
    if allocation == "uniform":
        budgets = torch.full(scores.shape[:2], budget, dtype=torch.long, device=scores.device)
    else:
        budgets = head_budgets(scores, budget, ratio_floor(floor_ratio, budget), allocation)
    return keep_top_per_head(scores, budgets)
