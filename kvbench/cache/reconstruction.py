"""KVzip's importance score (Kim et al. 2025, "KVzip: Query-Agnostic KV Cache Compression with Context
Reconstruction", arXiv:2505.23416): how much the model needs a cached pair to *repeat* its own context.

After the context is prefilled, the model reads a reconstruction input (a "repeat the previous context" prompt and
a chunk of the context itself) on top of the cache. Each context pair's score is the **maximum** attention any
reconstruction query of the group gives it: max over the KV head's query heads and over the reconstruction's
query rows (METHODS_NEXT.md §4). Scores of several chunks combine by maximum, too.

The probabilities here are the model's own: a softmax over every cached context key and the reconstruction's
keys (causal), as the authors' code computes them (kvpress restricts the softmax to the sinks, the chunk's keys
and the new keys, a cheaper approximation). Query rows are processed in chunks so the transient logits stay
``[b, H, rows, C + r]`` for at most ``ROWS`` rows.
"""

from __future__ import annotations

import torch

ROWS = 256


def reconstruction_scores(query: torch.Tensor, keys: torch.Tensor, context: int, scale: float,
                          group_reduction: str = "max") -> torch.Tensor:
    """Max attention ``[b, h, context]`` each of the first ``context`` keys ``[b, h, C + r, d]`` receives from the
    ``r`` reconstruction queries ``[b, H, r, d]`` (the last ``r`` positions; causal among themselves)."""
    b, n_heads, r, d = query.shape
    h, n = keys.shape[1], keys.shape[2]
    g = n_heads // h
    k = keys.to(torch.float32)
    out = torch.zeros(b, h, context, dtype=torch.float32, device=query.device)
    for start in range(0, r, ROWS):
        stop = min(r, start + ROWS)
        q = query[:, :, start:stop].to(torch.float32).reshape(b, h, g * (stop - start), d)
        logits = (q @ k.transpose(-1, -2) * scale).view(b, h, g, stop - start, n)
        causal = torch.ones(stop - start, n, dtype=torch.bool, device=query.device).tril_(n - r + start)
        probs = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)[..., :context]
        if group_reduction == "max":
            chunk = probs.amax(dim=(2, 3))
        elif group_reduction == "mean":
            chunk = probs.mean(dim=2).amax(dim=2)
        else:
            chunk = probs.sum(dim=2).amax(dim=2)
        out = torch.maximum(out, chunk)
    return out


def global_budgets(scores: list[torch.Tensor], budget: int) -> list[torch.Tensor]:
    """Per layer, tokens each KV head keeps ``[b, h]`` when ``Σ_layers h·budget`` tokens per batch row go to the top
    scores flattened over (layer, KV head, token) (KVzip's default: layers and heads get different budgets)."""
    b = scores[0].shape[0]
    flat = torch.cat([s.reshape(b, -1) for s in scores], dim=1)
    sizes = [s.shape[1] * s.shape[2] for s in scores]
    total = sum(s.shape[1] for s in scores) * budget
    top = torch.topk(flat, min(total, flat.shape[1]), dim=1).indices
    chosen = torch.zeros_like(flat, dtype=torch.long).scatter_(1, top, 1)
    return [part.view_as(s).sum(dim=-1) for part, s in zip(chosen.split(sizes, dim=1), scores)]
