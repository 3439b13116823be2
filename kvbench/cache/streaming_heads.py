"""Which KV heads can stream (DuoAttention, Xiao et al. 2024, arXiv:2410.10819): a calibration-free pattern.

DuoAttention splits heads into *retrieval* heads, which keep the whole cache, and *streaming* heads, which keep
only the first (sink) and the most recent tokens. The authors *train* one gate per KV head (distillation on
synthetic passkey retrieval, 2,000 steps) and binarise the gates at a target sparsity. kvbench, like kvpress's
on-the-fly ``DuoAttentionPress``, finds the pattern from statistics instead (METHODS_NEXT.md §3):

1. Over a calibration text, each layer's mean query per query head and mean key per KV head, *before* RoPE.
2. Both replicated at positions ``0 … n − 1`` (n = ``positions``, kvpress's 500) and rotated by the model's RoPE;
   the softmax of the position-(n − 1) query over the n keys (fp32).
3. Score = the mean over key positions of the cumulative attention: low when attention sits on recent keys
   (a head that looks near itself), high when it reaches far back. Averaged over a KV head's query heads.
4. The ``⌊sparsity·L·H⌋`` lowest-scoring KV heads of the whole model become streaming heads.

What differs from the paper: no training, no gate values, no passkey data; the pattern reflects how far a head's
*average* query reaches, not whether its output matters for retrieval.
"""

from __future__ import annotations

import torch

from kvbench.cache.expected_attention import angles, rotate


def reach_scores(mean_queries: torch.Tensor, mean_keys: torch.Tensor, inv_freq: torch.Tensor | None,
                 rope_scaling: float, scale: float, positions: int = 500) -> torch.Tensor:
    """Per KV head ``[h]``: the mean cumulative attention of the average query ``[H, d]`` (at position n − 1) over the
    average key ``[h, d]`` replicated at positions ``0 … n − 1`` (both pre-RoPE). Low = attention on recent keys."""
    n_heads, d = mean_queries.shape
    h = mean_keys.shape[0]
    keys = mean_keys.to(torch.float32)[:, None, :].expand(h, positions, d)
    query = mean_queries.to(torch.float32)
    if inv_freq is not None:
        cos, sin = angles(inv_freq, torch.arange(positions), rope_scaling)
        keys = rotate(keys, cos, sin)
        query = rotate(query, cos[-1], sin[-1])
    keys = keys.repeat_interleave(n_heads // h, dim=0)  # [H, n, d]
    probs = torch.softmax(scale * torch.einsum("hd,hnd->hn", query, keys), dim=-1)
    reach = probs.cumsum(dim=-1).mean(dim=-1)  # [H]
    return reach.view(h, n_heads // h).mean(dim=-1)


def streaming_heads(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean ``[L, h]``: the ``count`` lowest-scoring heads of the whole model (ties: the earlier head)."""
    flat = scores.flatten()
    order = torch.argsort(flat, stable=True)
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[order[:count]] = True
    return chosen.view_as(scores)
