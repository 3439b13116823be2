"""One attention pass for a scored decode step: the output and the column sums from the same probabilities.

A score-based eviction cache (H2O's accumulated scores, TOVA's current query, a decode-time SnapKV window) asks for
the attention probabilities of every decode step. Beside ``sdpa`` they cost a second pass over the keys: the
chunked column sums compute ``q·Kᵀ`` and its softmax again, about what the attention itself costs at one query row
(measured at batch 8, 408 stored tokens, SmolLM2's 9 query / 3 KV heads, one thread: sdpa 0.72 ms, sums 0.73 ms,
this single pass 0.70 ms per layer). Eager attention computes the probabilities anyway, so a decode step takes them
once: ``softmax(q·Kᵀ·scaling)`` in float32 (as transformers' ``eager_attention_forward``), the output from them,
the scores from them. Its output equals sdpa's within float rounding (tested), which is what ``full`` against a
covering budget already allows on the prefill path (the flash scores, :mod:`kvbench.cache.attention_scores`).

Only the plain case takes it: one query row, no mask (a cache's decode step without padding), no dropout, softcap,
sliding window, sinks or position bias, no gradient. Everything else keeps sdpa's output and the chunked sums.
"""

from __future__ import annotations

import torch

#: attention arguments that change what attention computes; any of them set means this path does not apply
SHAPING_ARGUMENTS = ("softcap", "sliding_window", "s_aux", "position_bias")


def plain(kwargs: dict) -> bool:
    """Whether nothing but the causal mask and a scale shapes the attention call."""
    return not kwargs.get("dropout") and all(kwargs.get(name) is None for name in SHAPING_ARGUMENTS)


def applies(query: torch.Tensor, attention_mask: torch.Tensor | None, kwargs: dict) -> bool:
    """A decode step this single pass covers: one query row, no mask, plain attention, no autograd."""
    return query.shape[2] == 1 and attention_mask is None and not query.requires_grad and plain(kwargs)


def attend_and_score(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float):
    """``(output [b, 1, H, d], probabilities [b, h, g, 1, kv] float32)`` for ``query`` ``[b, H, 1, d]`` and the
    unrepeated ``key``/``value`` ``[b, h, kv, d]`` (g = H / h query heads per KV head)."""
    b, n_heads, _, d = query.shape
    h, kv = key.shape[1], key.shape[2]
    g = n_heads // h
    grouped = query.reshape(b, h, g, d).to(torch.float32)
    logits = torch.matmul(grouped, key.to(torch.float32).transpose(-1, -2)) * scaling
    probs = torch.softmax(logits, dim=-1)  # [b, h, g, kv]
    out = torch.matmul(probs.to(value.dtype), value)  # [b, h, g, dv]
    out = out.reshape(b, n_heads, 1, value.shape[-1]).transpose(1, 2).contiguous()
    return out.to(query.dtype), probs.unsqueeze(3)
