"""Attention probabilities for score-based eviction, computed beside the model's own attention.

SDPA never materialises the attention matrix, yet H2O needs, for every cached token, the
probability mass it receives. :func:`use_scoring_attention` switches a model to a wrapping
attention implementation ``scored_<base>`` (``base`` = ``sdpa`` or ``eager``): attention itself
is still the model's ``base`` function, output for output; only when the keys come from a cache
layer that asked for scores (:func:`request_scores`) does the wrapper also compute

    column sums  s[k] = Σ_q softmax(q·Kᵀ·scaling + mask)[q, k]

in query chunks (memory O(chunk·N) per head, never the N×N matrix for all heads), aggregate the
query heads that share a KV head (``sum`` / ``mean`` / ``max``) and hand the result back to the
layer. With ``eager`` the probabilities eager already returns are reused.

Hand-off: a cache layer's ``update`` calls :func:`request_scores(layer, keys)` with the key tensor
it returns; the attention call that receives *that very tensor* (identity check) delivers the
scores with ``layer.receive_scores(...)``. No module hooks, so deep copies of models and caches
need no care.

Prefill on CPU (``FUSED``, the default): when a request scores *every* query row (H2O, ``combined``), the base
is ``sdpa`` and the forward is a causal prefill, the scores come from the flash-attention kernel itself
(:func:`prefill_scores_by_flash`: the forward run's log-sum-exp, then one run backwards), never from the N×N
probabilities. Measured at batch 8, context 2048 (one SmolLM2 layer, 2 threads): sdpa 0.50 s, sdpa + chunked
scores 3.3 s, the flash path 1.1 s. Its output is the kernel's (sdpa's own on CPU) and its scores equal the
chunked ones within float rounding (tested). Anything else (a mask, decoding, another device, ``max``) keeps
sdpa's output and the chunked scores beside it.

What a request asks for: the query heads of each KV head combine by the layer's ``group_reduction``, and
``last_rows`` limits the sum to the forward's last query rows: every row (H2O's accumulated scores),
the last ``w`` prompt queries (SnapKV's observation window) or the current query alone (TOVA).

A ragged per-KV-head layer hands its packed store over instead of keys (:mod:`kvbench.cache.ragged_attention`);
a query-statistics layer (Expected Attention, KVzip) receives the queries themselves (``receive_queries``). Just
over 300 lines: every path of the one wrapper that sees the model's queries stays in the module that owns it.

Decode steps (one query row, no mask, base ``sdpa``) take one eager pass for both the output and the scores
(:mod:`kvbench.cache.decode_attention`) instead of sdpa plus the chunked sums.

Caches whose layers store different numbers of tokens (PyramidKV's per-layer budgets): transformers
builds one mask, sized for layer 0; the wrapper re-aligns it to each layer's keys (:func:`align_mask`),
so a forward of several tokens after compression works in every layer.
"""

from __future__ import annotations

import sys
import threading

import torch

from kvbench.cache import decode_attention
from kvbench.cache.ragged_attention import take

#: Implementations the wrapper can sit on. ``flash_attention_*`` / ``flex_attention`` have their own
#: mask conventions and are not wrapped (yet).
SUPPORTED_BASES = ("sdpa", "eager")
PREFIX = "scored_"
GROUP_REDUCTIONS = ("sum", "mean", "max")
#: Logits materialised at once while scoring (float32: 16 MiB), but at least MIN_ROWS query rows. Chunks skip most
#: of the causal upper triangle (only each chunk's diagonal block is masked); larger ones mean fewer operations,
#: which is what a scored prefill pays for on a CPU (each op has a fixed cost, worse on a loaded machine).
CHUNK_ELEMENTS = 1 << 22
MIN_ROWS = 16
#: Causal prefills scored on every row take the flash path (:func:`prefill_scores_by_flash`); False: always
#: sdpa, with the chunked scores beside it.
FUSED = True

_pending = threading.local()


def request_scores(layer, keys: torch.Tensor, last_rows: int | None = None) -> None:
    """Ask the next attention call on ``keys`` to deliver its column sums to ``layer.receive_scores``:
    summed over every query row of the forward, or over its last ``last_rows`` rows only."""
    _pending.request = (layer, keys, last_rows)


def align_mask(mask: torch.Tensor | None, kv_length: int) -> torch.Tensor | None:
    """A 4D causal mask ``[b, 1|H, q, kv']`` built for another layer's key length, re-aligned to ``kv_length``.

    Without padding the mask is bottom-right aligned: its last q columns are the causal block of the new
    tokens, every earlier column (a cached token) is visible. A layer holding fewer cached tokens takes
    the last ``kv_length`` columns; one holding more gets visible columns in front. Equal lengths: unchanged.
    """
    if mask is None or mask.ndim != 4 or mask.shape[-1] == kv_length:
        return mask
    have = mask.shape[-1]
    if have > kv_length:
        return mask[..., have - kv_length:]
    visible = True if mask.dtype == torch.bool else 0.0
    return torch.cat([mask.new_full((*mask.shape[:-1], kv_length - have), visible), mask], dim=-1)


def aggregate_heads(probs: torch.Tensor, agg: str) -> torch.Tensor:
    """Column sums of ``probs`` [b, h, g, q, kv] (g query heads per KV head) → [b, h, kv] float32.

    ``sum``: Σ_g Σ_q p; ``mean``: (Σ_g Σ_q p)/g (same ranking as ``sum``); ``max``: Σ_q max_g p --
    per query token the largest probability any head of the group gives the key. All three add
    up over query tokens, so scores do not depend on how the queries were split into forwards.
    """
    if agg == "sum":
        return probs.sum(dim=(2, 3))
    if agg == "mean":
        return probs.sum(dim=3).mean(dim=2)
    if agg == "max":
        return probs.amax(dim=2).sum(dim=2)
    raise ValueError(f"group_reduction={agg!r} is not supported (choose one of: {', '.join(GROUP_REDUCTIONS)})")


def _mask_rows(mask: torch.Tensor, start: int, stop: int, h: int, g: int, kv: int) -> torch.Tensor:
    """Rows start:stop of a 4D mask [b, 1|H, q, kv], shaped to broadcast over logits [b, h, C, g, kv]."""
    rows = mask[:, :, start:stop, :kv]
    if rows.shape[1] == 1:
        return rows[:, :, :, None]
    return rows.reshape(rows.shape[0], h, g, stop - start, kv).transpose(2, 3)


def _aggregate_rows(probs: torch.Tensor, agg: str) -> torch.Tensor:
    """:func:`aggregate_heads` for probabilities laid out [b, h, C, g, kv] (query rows, then the group's heads)."""
    if agg == "sum":
        return probs.sum(dim=(2, 3))
    if agg == "mean":
        return probs.sum(dim=(2, 3)) / probs.shape[3]
    if agg == "max":
        return probs.amax(dim=3).sum(dim=2)
    raise ValueError(f"group_reduction={agg!r} is not supported (choose one of: {', '.join(GROUP_REDUCTIONS)})")


def attention_column_sums(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    agg: str = "sum",
    chunk_elements: int = CHUNK_ELEMENTS,
    min_rows: int = MIN_ROWS,
):
    """Σ over query rows of the causal attention probabilities, per KV head: [b, h, kv] float32.

    ``query`` [b, H, q, d], ``key`` [b, h, kv, d] (not repeated for GQA). ``attention_mask`` is the
    4D mask the model passed to attention (bool: True = attend; float: additive) or ``None``, which
    means the plain causal mask aligned bottom-right (query i sees keys 0 … kv − q + i), the case of
    every forward through a cache.

    Few, large operations: the queries are scaled and laid out [b, h, q, g, d] once, so a chunk of C rows of
    all g heads of a KV head is one contiguous [C·g, d] block, multiplied by the unrepeated keys in one matmul.
    """
    b, n_heads, q_len, d = query.shape
    h, kv = key.shape[1], key.shape[2]
    g = n_heads // h
    past = kv - q_len  # keys every query sees (cached tokens) before the causal block
    queries = (query.to(torch.float32) * scaling).reshape(b, h, g, q_len, d).transpose(2, 3).contiguous()
    keys = key.to(torch.float32)
    out = torch.zeros(b, h, kv, dtype=torch.float32, device=query.device)
    chunk = max(min_rows, chunk_elements // max(1, b * n_heads * kv))
    causal = None
    for start in range(0, q_len, chunk):
        stop = min(q_len, start + chunk)
        rows = stop - start
        q_chunk = queries[:, :, start:stop].reshape(b, h, rows * g, d)
        # causal without a mask (bottom-right aligned): rows start..stop-1 see keys < past + stop; only the
        # diagonal block [past + start, past + stop) needs masking
        visible = past + stop if attention_mask is None else kv
        logits = torch.matmul(q_chunk, keys[:, :, :visible].transpose(-1, -2)).view(b, h, rows, g, visible)
        if attention_mask is None:
            if rows > 1:
                if causal is None or causal.shape[0] < rows:
                    causal = torch.ones(rows, rows, dtype=torch.bool, device=query.device).triu_(1)[:, None]
                logits[..., past + start:].masked_fill_(causal[:rows, :, :rows], float("-inf"))
            probs = torch.softmax(logits, dim=-1)
        else:
            mask = _mask_rows(attention_mask, start, stop, h, g, kv)
            if mask.dtype == torch.bool:
                logits.masked_fill_(~mask, float("-inf"))
            else:
                logits.add_(mask.to(torch.float32))
            probs = torch.nan_to_num_(torch.softmax(logits, dim=-1), nan=0.0)  # fully padded rows: no score
        out[..., :visible] += _aggregate_rows(probs, agg)
    return out


def prefill_scores_by_flash(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, agg: str):
    """A causal prefill's output and column sums from two runs of the CPU flash-attention kernel, without ever
    materialising the N×N probabilities: ``(sums [b, h, kv] float32, output [b, q, H, d])``, or None when the
    kernel or the case is not covered (then the chunked path runs).

    The forward run gives the output and each query's log-sum-exp ``lse_q``. A key's column sum is
    ``Σ_{q ≥ k} exp(s·q·k − lse_q)``: attention run *backwards*, the keys as queries and the queries as keys, with
    values ``w_q = exp(−lse_q)`` (in the first channel): its output ``o_k`` and log-sum-exp ``L_k`` give the sum as
    ``exp(L_k + log o_k)``. Reversing both sequences turns "queries at or after the key" into the kernel's own
    causal mask. Cost: about one more attention forward, in the kernel's cache-friendly tiles. ``sum``/``mean``
    only (``max`` over a group's heads inside the sum has no such form)."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    b, n_heads, q_len, d = query.shape
    h, kv = key.shape[1], key.shape[2]
    if (op is None or query.device.type != "cpu" or q_len != kv or agg not in ("sum", "mean")
            or value.shape[-1] != d or query.dtype not in (torch.float32, torch.bfloat16)):
        return None
    g = n_heads // h
    keys, values = key.repeat_interleave(g, dim=1), value.repeat_interleave(g, dim=1)
    out, lse = op(query, keys, values, 0.0, True, scale=scaling)
    weights = torch.zeros_like(query)
    weights[..., 0] = torch.exp(-lse.to(torch.float32)).to(query.dtype)
    back, back_lse = op(keys.flip(2), query.flip(2), weights.flip(2), 0.0, True, scale=scaling)
    per_head = torch.exp(back_lse.to(torch.float32) + torch.log(back[..., 0].to(torch.float32).clamp_min(1e-38))).flip(2)
    sums = per_head.view(b, h, g, kv).sum(dim=2)
    if agg == "mean":
        sums = sums / g
    return sums, out.transpose(1, 2).contiguous()


def fusable(base: str, last_rows: int | None, kwargs: dict) -> bool:
    """Whether a scored forward may take the flash path (:func:`prefill_scores_by_flash`): every query row is
    scored (H2O's accumulated scores), the base is ``sdpa`` (``eager`` already returns its probabilities), and
    nothing but the causal mask and a scale shapes the attention (no dropout, softcap, sliding window, sinks,
    position bias)."""
    if base != "sdpa" or last_rows is not None or not FUSED:
        return False
    return decode_attention.plain(kwargs)


def _base_function(base: str, module):
    if base == "eager":
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if eager is None:
            raise RuntimeError(f"{type(module).__name__} has no eager_attention_forward to wrap; use sdpa")
        return eager
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # lazy: see register_scoring_attention

    return ALL_ATTENTION_FUNCTIONS[base]


def _scaling(module, query: torch.Tensor, kwargs: dict) -> float:
    scaling = kwargs.get("scaling")
    return scaling if scaling is not None else getattr(module, "scaling", query.shape[-1] ** -0.5)


def scored_attention(base: str):
    """The attention function ``scored_<base>``: ``base`` attention, plus scores when a cache asks."""

    def forward(module, query, key, value, attention_mask, **kwargs):
        request = getattr(_pending, "request", None)
        fn = _base_function(base, module)
        handed = take(key)  # a head-wise layer's packed store or per-head mask (kvbench.cache.ragged)
        if handed is not None:
            return handed.attend(module, query, key, value, fn, _scaling(module, query, kwargs), kwargs)
        attention_mask = align_mask(attention_mask, key.shape[-2])
        if request is None or request[1] is not key:
            return fn(module, query, key, value, attention_mask, **kwargs)
        _pending.request = None
        layer, _, last_rows = request
        if hasattr(layer, "receive_queries"):  # a query-statistics method (Expected Attention, KVzip) reads queries
            with torch.no_grad():
                layer.receive_queries(query.detach(), module)
            return fn(module, query, key, value, attention_mask, **kwargs)
        if attention_mask is None and fusable(base, last_rows, kwargs) and not query.requires_grad:
            with torch.no_grad():
                flash = prefill_scores_by_flash(query, key, value, _scaling(module, query, kwargs), layer.group_reduction)
            if flash is not None:  # a causal prefill on CPU: output and scores from the flash kernel, no N×N matrix
                layer.receive_scores(flash[0])
                return flash[1], None
        if base == "sdpa" and decode_attention.applies(query, attention_mask, kwargs):
            with torch.no_grad():  # a decode step: output and scores from one eager pass
                out, probs = decode_attention.attend_and_score(query, key, value, _scaling(module, query, kwargs))
                layer.receive_scores(aggregate_heads(probs, layer.group_reduction))
            return out, None
        out, weights = fn(module, query, key, value, attention_mask, **kwargs)
        b, n_heads, q_len, _ = query.shape
        h, kv = key.shape[1], key.shape[2]
        first = 0 if last_rows is None else max(0, q_len - last_rows)  # the query rows that score
        with torch.no_grad():  # scores are bookkeeping: never part of an autograd graph
            if weights is not None and tuple(weights.shape) == (b, n_heads, q_len, kv):
                probs = weights[:, :, first:].to(torch.float32).reshape(b, h, n_heads // h, q_len - first, kv)
                sums = aggregate_heads(probs, layer.group_reduction)
            else:
                rows_mask = None if attention_mask is None else attention_mask[:, :, first:]
                sums = attention_column_sums(query[:, :, first:].detach(), key.detach(), rows_mask,
                                             _scaling(module, query, kwargs), layer.group_reduction)
            layer.receive_scores(sums)
        return out, weights

    forward.__name__ = f"{PREFIX}{base}"
    return forward


def register_scoring_attention() -> None:
    """Register ``scored_sdpa`` / ``scored_eager`` with transformers (idempotent)."""
    # lazy: transformers.modeling_utils takes seconds to import, and only a model being switched needs it (every
    # `import kvbench.methods` -- config checks, dry runs -- would pay it otherwise)
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    masks = {"sdpa": sdpa_mask, "eager": eager_mask}
    for base in SUPPORTED_BASES:
        name = PREFIX + base
        if name not in AttentionInterface._global_mapping:
            AttentionInterface.register(name, scored_attention(base))
            AttentionMaskInterface.register(name, masks[base])


def use_scoring_attention(model) -> str:
    """Switch ``model`` to ``scored_<its implementation>`` in place; returns the new name.

    Raises ``ValueError`` for an implementation that cannot be wrapped.
    """
    register_scoring_attention()
    current = model.config._attn_implementation
    if current.startswith(PREFIX):
        return current
    if current not in SUPPORTED_BASES:
        raise ValueError(
            f"attention implementation {current!r} cannot report attention scores "
            f"(supported: {', '.join(SUPPORTED_BASES)})"
        )
    model.set_attn_implementation(PREFIX + current)
    return PREFIX + current


def is_scoring(model) -> bool:
    """Whether ``model`` runs a ``scored_*`` attention implementation."""
    return str(model.config._attn_implementation).startswith(PREFIX)
