"""H2O's masking simulation (METHODS.md §3b): how the paper's lm-eval numbers were produced.

The official lm-eval path (FMInference/H2O, ``h2o_hf/utils_lm_eval/modify_llama.py``) scores each request
in ONE forward over the whole sequence of n tokens with a patched attention; nothing is evicted, attention
is *masked*. Per layer and head:

1. softmax the causal attention and sum the probabilities over ALL query rows: a key's score includes the
   attention of later queries ("global statistics"), which real eviction cannot know when it evicts;
2. keep visible the top-H keys by that sum (H = ⌊heavy_ratio·n⌋) plus a band of the R = ⌊recent_ratio·n⌋
   keys just before each query (the official band ``|i − j| ≤ R``, so a query sees itself and its R
   predecessors), within the causal mask;
3. mask every other entry and recompute the softmax.

kvbench's version: budgets as in :class:`~kvbench.cache.h2o.H2OBudget` (ratios of n, exact floors, or token
counts); for GQA the query heads sharing a KV head combine their sums by ``group_reduction`` (one visible set per
KV head, as real eviction keeps one token set per KV head; with MHA this is the official per-head rule).
Step 1 reuses :func:`~kvbench.cache.attention_scores.attention_column_sums` and step 3 runs in query chunks,
so memory stays O(chunk·n) per head. Budgets covering every key reproduce plain attention.

:func:`use_simulated_attention` installs it as the attention implementation ``h2o_simulated``; the budget
travels on each attention module (``module.kvbench_h2o_simulation``).
"""

from __future__ import annotations

import torch

from kvbench.cache.attention_scores import CHUNK_ELEMENTS, MIN_ROWS, _mask_rows, attention_column_sums
from kvbench.cache.h2o import H2OBudget

NAME = "h2o_simulated"
ATTRIBUTE = "kvbench_h2o_simulation"


def heavy_hitters(query, key, attention_mask, scaling: float, heavy: int, agg: str = "sum") -> torch.Tensor:
    """``[b, h, kv]`` bool: the ``heavy`` keys per KV head with the largest attention summed over every query row."""
    sums = attention_column_sums(query, key, attention_mask, scaling, agg)
    keep = torch.zeros_like(sums, dtype=torch.bool)
    heavy = min(heavy, sums.shape[-1])
    if heavy > 0:
        keep.scatter_(-1, torch.topk(sums, heavy, dim=-1).indices, True)
    return keep


def visible(query, key, attention_mask, scaling: float, heavy: int, recent: int, agg: str = "sum",
            rows: slice | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
    """``[b, h, q, kv]`` bool: which keys each query row (``rows`` of them) may attend to under the simulation:
    causal, and a heavy hitter or within ``recent`` positions before the query. ``key`` is not repeated for GQA."""
    q_len, kv = query.shape[2], key.shape[2]
    rows = rows or slice(0, q_len)
    if keep is None:
        keep = heavy_hitters(query, key, attention_mask, scaling, heavy, agg)
    past = kv - q_len  # queries sit bottom-right: row i is token past + i
    i = torch.arange(rows.start, rows.stop, device=query.device)[:, None] + past
    j = torch.arange(kv, device=query.device)[None, :]
    causal = j <= i
    band = j >= i - recent
    return causal & (keep[:, :, None, :] | band)


def simulated_attention(module, query, key, value, attention_mask, scaling: float | None = None, dropout: float = 0.0,
                        **kwargs):
    """The attention function ``h2o_simulated``: ``(output [b, q, H, d], None)``, computed in float32."""
    budget, agg = getattr(module, ATTRIBUTE)
    scaling = scaling if scaling is not None else getattr(module, "scaling", query.shape[-1] ** -0.5)
    b, n_heads, q_len, d = query.shape
    h, kv = key.shape[1], key.shape[2]
    g = n_heads // h
    heavy, recent = budget.resolve(kv)
    keep = heavy_hitters(query, key, attention_mask, scaling, heavy, agg)
    keys_t = key.to(torch.float32).transpose(-1, -2)[:, :, None]  # [b, h, 1, d, kv]
    values = value.to(torch.float32)[:, :, None]  # [b, h, 1, kv, d]
    out = torch.empty(b, h, g, q_len, value.shape[-1], dtype=torch.float32, device=query.device)
    chunk = max(MIN_ROWS, CHUNK_ELEMENTS // max(1, b * n_heads * kv))
    for start in range(0, q_len, chunk):
        stop = min(q_len, start + chunk)
        q_chunk = query[:, :, start:stop].to(torch.float32).reshape(b, h, g, stop - start, d) * scaling
        logits = torch.matmul(q_chunk, keys_t)  # [b, h, g, C, kv]
        if attention_mask is not None:  # padding: the model's own mask as well
            mask = _mask_rows(attention_mask, start, stop, h, g, kv).transpose(2, 3)  # [b, h|1, g|1, C, kv]
            logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.float()
        seen = visible(query, key, attention_mask, scaling, heavy, recent, agg, slice(start, stop), keep)
        logits.masked_fill_(~seen[:, :, None], float("-inf"))
        probs = torch.nan_to_num_(torch.softmax(logits, dim=-1), nan=0.0)
        out[:, :, :, start:stop] = torch.matmul(probs, values)
    return out.reshape(b, n_heads, q_len, -1).transpose(1, 2).contiguous().to(query.dtype), None


def use_simulated_attention(model, budget: H2OBudget, agg: str = "sum") -> None:
    """Switch ``model`` to ``h2o_simulated`` in place, with ``budget`` and ``agg`` on every attention module."""
    # lazy: transformers.modeling_utils takes seconds to import, and only a model being switched needs it (every
    # `import kvbench.methods` -- config checks, dry runs -- would pay it otherwise)
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, simulated_attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)
    found = 0
    for module in model.modules():
        # attention modules: Llama-family ones name their KV groups, OPT's only its projections
        if hasattr(module, "layer_idx") and (hasattr(module, "num_key_value_groups") or hasattr(module, "k_proj")):
            setattr(module, ATTRIBUTE, (budget, agg))
            found += 1
    if not found:
        raise ValueError(f"{type(model).__name__} has no attention module the simulation can mask")
    model.set_attn_implementation(NAME)


def is_simulating(model) -> bool:
    return str(model.config._attn_implementation) == NAME
