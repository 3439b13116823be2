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

Fused (``FUSED``, the default): when a request scores *every* query row (H2O, ``combined``) and the base is
``sdpa``, the wrapper does not run sdpa and then recompute the same QKᵀ and softmax for the scores; it computes
the probabilities once, in float32 query chunks, and takes both the column sums and the output (P·V) from them.
That halves the attention work of a scored prefill (the cost that made ``h2o``'s prefill 1.37× ``full``'s);
the output equals sdpa's within float rounding (tested), not bit for bit. Requests for a few rows (SnapKV's
window, TOVA's last query) keep sdpa's own output: their scores are cheap beside it.

What a request asks for: the query heads of each KV head combine by the layer's ``score_agg``, and
``last_rows`` limits the sum to the forward's last query rows: every row (H2O's accumulated scores),
the last ``w`` prompt queries (SnapKV's observation window) or the current query alone (TOVA).

Caches whose layers store different numbers of tokens (PyramidKV's per-layer budgets): transformers
builds one mask, sized for layer 0; the wrapper re-aligns it to each layer's keys (:func:`align_mask`),
so a forward of several tokens after compression works in every layer.
"""

from __future__ import annotations

import sys
import threading

import torch

#: Implementations the wrapper can sit on. ``flash_attention_*`` / ``flex_attention`` have their own
#: mask conventions and are not wrapped (yet).
SUPPORTED_BASES = ("sdpa", "eager")
PREFIX = "scored_"
SCORE_AGGS = ("sum", "mean", "max")
#: Logits materialised at once while scoring (float32: 4 MiB), but at least MIN_ROWS query rows.
#: Small chunks also skip most of the causal upper triangle (only each chunk's diagonal block is masked).
CHUNK_ELEMENTS = 1 << 20
MIN_ROWS = 16
#: Score every row *and* compute the output from the same probabilities (sdpa base, H2O-style requests): the
#: output then equals sdpa's within float rounding, not bit for bit. False: sdpa runs, scores beside it.
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
    raise ValueError(f"score_agg={agg!r} is not supported (choose one of: {', '.join(SCORE_AGGS)})")


def _mask_rows(mask: torch.Tensor, start: int, stop: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Rows start:stop of a 4D mask [b, 1|H, q, kv], shaped to broadcast over [b, h, g, C, kv]."""
    b, h, g, _, kv = shape
    rows = mask[:, :, start:stop, :kv]
    if rows.shape[1] == 1:
        return rows[:, :, None]
    return rows.reshape(rows.shape[0], h, g, stop - start, kv)


def attention_column_sums(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    agg: str = "sum",
    chunk_elements: int = CHUNK_ELEMENTS,
    min_rows: int = MIN_ROWS,
    value: torch.Tensor | None = None,
):
    """Σ over query rows of the causal attention probabilities, per KV head: [b, h, kv] float32.

    ``query`` [b, H, q, d], ``key`` [b, h, kv, d] (not repeated for GQA). ``attention_mask`` is the
    4D mask the model passed to attention (bool: True = attend; float: additive) or ``None``, which
    means the plain causal mask aligned bottom-right (query i sees keys 0 … kv − q + i), the case of
    every forward through a cache.

    With ``value`` [b, h, kv, d] also the attention output from the *same* probabilities (one QKᵀ and
    softmax serve both, see :func:`scored_attention`): returns ``(sums, output [b, q, H, d])``, the output in
    the layout transformers' attention functions return, computed in float32 and cast to the query's dtype.
    """
    b, n_heads, q_len, d = query.shape
    h, kv = key.shape[1], key.shape[2]
    g = n_heads // h
    past = kv - q_len  # keys every query sees (cached tokens) before the causal block
    keys_t = key.to(torch.float32).transpose(-1, -2)[:, :, None]  # [b, h, 1, d, kv]
    values = None if value is None else value.to(torch.float32)[:, :, None]  # [b, h, 1, kv, dv]
    output = None if value is None else query.new_empty(b, h, g, q_len, value.shape[-1], dtype=torch.float32)
    out = torch.zeros(b, h, kv, dtype=torch.float32, device=query.device)
    chunk = max(min_rows, chunk_elements // max(1, b * n_heads * kv))
    for start in range(0, q_len, chunk):
        stop = min(q_len, start + chunk)
        q_chunk = query[:, :, start:stop].to(torch.float32).reshape(b, h, g, stop - start, d) * scaling
        if attention_mask is None:
            # causal, bottom-right aligned: rows start..stop-1 see keys < past + stop; only the
            # diagonal block [past + start, past + stop) needs masking
            visible = past + stop
            logits = torch.matmul(q_chunk, keys_t[..., :visible])  # [b, h, g, C, visible]
            if stop - start > 1:
                block = torch.ones(stop - start, stop - start, dtype=torch.bool, device=query.device).triu_(1)
                logits[..., past + start:].masked_fill_(block, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            out[..., :visible] += aggregate_heads(probs, agg)
            if values is not None:
                torch.matmul(probs, values[..., :visible, :], out=output[:, :, :, start:stop])
            continue
        logits = torch.matmul(q_chunk, keys_t)  # [b, h, g, C, kv]
        rows = _mask_rows(attention_mask, start, stop, logits.shape)
        if rows.dtype == torch.bool:
            logits.masked_fill_(~rows, float("-inf"))
        else:
            logits.add_(rows.to(torch.float32))
        probs = torch.nan_to_num_(torch.softmax(logits, dim=-1), nan=0.0)  # fully padded rows: no score
        out += aggregate_heads(probs, agg)
        if values is not None:
            torch.matmul(probs, values, out=output[:, :, :, start:stop])
    if values is None:
        return out
    return out, output.reshape(b, n_heads, q_len, -1).transpose(1, 2).to(query.dtype).contiguous()


def fusable(base: str, last_rows: int | None, kwargs: dict) -> bool:
    """Whether the scored forward can compute the attention output itself from the probabilities it scores:
    every query row is scored (H2O's accumulated scores), the base is ``sdpa`` (``eager`` already returns its
    probabilities), and nothing but a mask and a scale shapes the attention (no dropout, softcap, sliding window,
    sinks or position bias)."""
    if base != "sdpa" or last_rows is not None or not FUSED:
        return False
    extras = ("softcap", "sliding_window", "s_aux", "position_bias")
    return not kwargs.get("dropout") and all(kwargs.get(name) is None for name in extras)


def _base_function(base: str, module):
    if base == "eager":
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if eager is None:
            raise RuntimeError(f"{type(module).__name__} has no eager_attention_forward to wrap; use sdpa")
        return eager
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[base]


def scored_attention(base: str):
    """The attention function ``scored_<base>``: ``base`` attention, plus scores when a cache asks."""

    def forward(module, query, key, value, attention_mask, **kwargs):
        request = getattr(_pending, "request", None)
        fn = _base_function(base, module)
        attention_mask = align_mask(attention_mask, key.shape[-2])
        if request is None or request[1] is not key:
            return fn(module, query, key, value, attention_mask, **kwargs)
        _pending.request = None
        layer, _, last_rows = request
        if fusable(base, last_rows, kwargs) and not query.requires_grad:  # one QKᵀ + softmax for output and scores
            scaling = kwargs.get("scaling")
            if scaling is None:
                scaling = getattr(module, "scaling", query.shape[-1] ** -0.5)
            with torch.no_grad():
                sums, out = attention_column_sums(query, key, attention_mask, scaling, layer.score_agg, value=value)
            layer.receive_scores(sums)
            return out, None
        out, weights = fn(module, query, key, value, attention_mask, **kwargs)
        b, n_heads, q_len, _ = query.shape
        h, kv = key.shape[1], key.shape[2]
        first = 0 if last_rows is None else max(0, q_len - last_rows)  # the query rows that score
        with torch.no_grad():  # scores are bookkeeping: never part of an autograd graph
            if weights is not None and tuple(weights.shape) == (b, n_heads, q_len, kv):
                probs = weights[:, :, first:].to(torch.float32).reshape(b, h, n_heads // h, q_len - first, kv)
                sums = aggregate_heads(probs, layer.score_agg)
            else:
                scaling = kwargs.get("scaling")
                if scaling is None:
                    scaling = getattr(module, "scaling", query.shape[-1] ** -0.5)
                rows_mask = None if attention_mask is None else attention_mask[:, :, first:]
                sums = attention_column_sums(query[:, :, first:].detach(), key.detach(), rows_mask, scaling,
                                             layer.score_agg)
            layer.receive_scores(sums)
        return out, weights

    forward.__name__ = f"{PREFIX}{base}"
    return forward


def register_scoring_attention() -> None:
    """Register ``scored_sdpa`` / ``scored_eager`` with transformers (idempotent)."""
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
