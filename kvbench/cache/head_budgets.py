"""Splitting one layer's token budget across its KV heads (AdaKV, Feng et al. 2024, arXiv:2407.11550).

Uniform methods give each KV head of a layer the same B tokens. AdaKV keeps the layer's total ``H·B`` and lets
the heads compete for it: a head whose attention is concentrated needs few tokens, one whose attention is spread
needs many. The competition is the top ``H·B`` of the layer's scores flattened over (head, token); ``c_h`` is how
many of them fall in head h. A safeguard floor keeps every head at least a minimum share (heads that look
concentrated on the observation window may still need tokens later). Two rules (METHODS_NEXT.md §1):

* ``authors`` (FFY0/AdaKV ``AdaptiveSnapKVCluster``, the default): floor ``f = ⌊α·B⌋`` and
  ``b_h = c_h·(1 − α) + f``, which the authors round per head, so ``Σ b_h`` may miss ``H·B``. kvbench
  apportions the ``H·B − H·f`` tokens above the floors in proportion to ``c_h`` by largest remainder
  (Hamilton; lower heads first on ties): the same split when ``α·B`` is an integer, and every layer holds
  exactly ``H·B`` tokens (``f + c_h·(B − f)/B ≤ n`` keeps each head within its tokens).
* ``kvpress`` (``AdaKVPress(alpha_safeguard)``): each head's top ``f`` scores are raised to +inf, then the
  top ``H·B`` of the flattened scores are kept: ``b_h ≥ f``, ``Σ b_h = H·B``.

Either way a head keeps *its own* top ``b_h`` tokens (the flattened top set restricted to a head is that head's
top entries), returned as a boolean mask. All integer arithmetic; position order is the caller's (masks keep it).
"""

from __future__ import annotations

import torch

ALLOCATIONS = ("authors", "kvpress")


def flattened_counts(scores: torch.Tensor, budget: int) -> torch.Tensor:
    """``c_h``: how many of the top ``H·budget`` scores of each batch row ``[b, H, n]`` fall in each head ``[b, H]``."""
    b, h, n = scores.shape
    top = torch.topk(scores.reshape(b, h * n), h * budget, dim=-1).indices // n
    return torch.zeros(b, h, dtype=torch.long, device=scores.device).scatter_add_(1, top, torch.ones_like(top))


def apportion(counts: torch.Tensor, total: int) -> torch.Tensor:
    """Integers proportional to ``counts`` ``[b, H]`` summing to ``total`` per row (largest remainder, lower
    heads first on ties). ``counts`` sum to ``C > 0`` per row, unless ``total`` is 0 (nothing to share: a budget no
    larger than the window or the floor)."""
    if total == 0:
        return torch.zeros_like(counts)
    whole = counts.sum(dim=1, keepdim=True)
    exact = counts * total  # shares are exact / whole
    base = exact // whole
    remainder = exact - base * whole
    left = total - base.sum(dim=1)
    order = torch.argsort(-remainder, dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(counts.shape[1], device=counts.device).expand_as(order))
    return base + (rank < left[:, None]).long()


def head_budgets(scores: torch.Tensor, budget: int, floor: int, allocation: str = "authors") -> torch.Tensor:
    """Tokens each KV head keeps ``[b, H]`` from its scores ``[b, H, n]``: ``Σ_h = H·budget``, each ≥ ``floor``.
    ``budget ≤ n`` and ``floor ≤ budget`` (the caller's checks)."""
    b, h, n = scores.shape
    if allocation == "kvpress":
        guarded = scores.clone()
        if floor:
            guarded.scatter_(-1, torch.topk(scores, floor, dim=-1).indices, float("inf"))
        return flattened_counts(guarded, budget)
    if allocation != "authors":
        raise ValueError(f"allocation={allocation!r} is not supported (choose one of: {', '.join(ALLOCATIONS)})")
    counts = flattened_counts(scores, budget)
    return floor + apportion(counts, h * (budget - floor))


def keep_top_per_head(scores: torch.Tensor, budgets: torch.Tensor) -> torch.Tensor:
    """Boolean mask ``[b, H, n]``: each head's top ``budgets[b, h]`` scores (ties: the earlier token)."""
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device)
                                            .expand_as(order))
    return rank < budgets[..., None]
