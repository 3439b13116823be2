"""Attention over a ragged per-KV-head cache (:mod:`kvbench.cache.ragged`), without a padded copy.

A head-wise method (AdaKV, Feng et al. 2024; DuoAttention, Xiao et al. 2024) leaves each KV head of a layer
with its own number of tokens. The cache stores them *packed*: ``keys`` ``[T, d]`` with ``T = Σ_{b,h} n_{b,h}``,
rows in (batch, KV head) order. A transformers attention function takes keys ``[b, h, S, d]``, so the cache
layer cannot hand its keys to the model's attention as they are. Instead it hands over an empty placeholder
(:func:`hand_off`) and the scored attention wrapper (:mod:`kvbench.cache.attention_scores`), seeing that very
tensor (identity check, as for score requests), calls :func:`ragged_attention` on the packed store.

Paths, all returning ``[b, q, H, d]`` as transformers' attention functions do:

* **loop** (CPU, and CUDA without flash-attn): for each (batch, KV head) row, its query heads attend over a
  *view* of its packed keys -- one SDPA call per row, no padded or per-query-head copy of the cache at any time
  (the transient memory is one row's logits, ``g·q·n`` floats).
* **varlen** (CUDA, fp16/bf16, ``flash_attn`` installed): one ``flash_attn_varlen_func`` call, each (batch, KV head)
  row a sequence with one KV head and its ``g`` query heads (GQA inside the kernel), ``cu_seqlens_k`` from the
  per-row lengths; ``causal=True`` is bottom-right aligned in flash-attn ≥ 2.1, as a cache needs. Not tested
  here (no GPU on the development machine): guarded by an import check, off otherwise.

Causality is bottom-right: the ``q`` new tokens are the last ``q`` entries of every row, so query ``i`` sees the
row's first ``n − q + i + 1`` keys. Masks built by transformers are not read: the protocol refuses padding
(equal-length batches), so the only mask is this causal one.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

_pending = threading.local()


def hand_off(store, batch: int, heads: int, head_dim: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Placeholders ``[b, h, 0, d]`` a ragged layer returns from ``update``: the next attention call that receives
    the first of them attends over ``store`` instead (:func:`take`). An attention function that is not kvbench's
    wrapper would see zero keys (NaN outputs), never a silently wrong cache."""
    key = like.new_empty(batch, heads, 0, head_dim)
    _pending.request = (key, store)
    return key, like.new_empty(batch, heads, 0, head_dim)


def hand_over(key: torch.Tensor, reader) -> None:
    """Let the next attention call on ``key`` be answered by ``reader.attend(...)`` (a per-head masked cache)."""
    _pending.request = (key, reader)


def take(key: torch.Tensor):
    """What was handed off with ``key`` (consumed): an object with ``attend(module, query, key, value, fn, scaling,
    kwargs)``, or None when ``key`` is an ordinary key tensor."""
    request = getattr(_pending, "request", None)
    if request is None or request[0] is not key:
        return None
    _pending.request = None
    return request[1]


def flash_varlen():
    """flash-attn's variable-length kernel, or None when it is not installed."""
    try:
        from flash_attn import flash_attn_varlen_func  # type: ignore[import-not-found]
    except ImportError:
        return None
    return flash_attn_varlen_func


def ragged_attention(query: torch.Tensor, store, scaling: float) -> torch.Tensor:
    """Attention of ``query`` ``[b, H, q, d]`` over the packed ``store``: ``[b, q, H, d]``."""
    if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and flash_varlen() is not None:
        return _varlen_attention(query, store, scaling)
    return _loop_attention(query, store, scaling)


def _causal(q_len: int, n: int, device) -> torch.Tensor | None:
    """Bottom-right causal mask ``[q, n]`` (True = attend), or None for one query row (it sees every key)."""
    if q_len == 1:
        return None
    return torch.ones(q_len, n, dtype=torch.bool, device=device).tril_(n - q_len)


def _loop_attention(query: torch.Tensor, store, scaling: float) -> torch.Tensor:
    b, n_heads, q_len, d = query.shape
    h = store.lengths.shape[1]
    g = n_heads // h
    out = query.new_empty(b, n_heads, q_len, store.values.shape[-1])
    lengths = store.lengths.flatten().tolist()
    start = 0
    for row, n in enumerate(lengths):
        i, j = divmod(row, h)
        keys, values = store.keys[start:start + n], store.values[start:start + n]  # views of the packed store
        out[i, j * g:(j + 1) * g] = F.scaled_dot_product_attention(
            query[i:i + 1, j * g:(j + 1) * g], keys.expand(1, g, n, d), values.expand(1, g, n, values.shape[-1]),
            attn_mask=_causal(q_len, n, query.device), scale=scaling)[0]
        start += n
    return out.transpose(1, 2).contiguous()


def _varlen_attention(query: torch.Tensor, store, scaling: float) -> torch.Tensor:  # pragma: no cover - CUDA only
    b, n_heads, q_len, d = query.shape
    h = store.lengths.shape[1]
    g = n_heads // h
    rows = b * h
    packed_q = query.reshape(b, h, g, q_len, d).permute(0, 1, 3, 2, 4).reshape(rows * q_len, g, d)
    cu_q = torch.arange(0, (rows + 1) * q_len, q_len, dtype=torch.int32, device=query.device)
    cu_k = F.pad(store.lengths.flatten().cumsum(0, dtype=torch.int32), (1, 0))
    out = flash_varlen()(packed_q, store.keys[:, None], store.values[:, None], cu_q, cu_k, q_len,
                         int(store.lengths.max()), softmax_scale=scaling, causal=True)
    return out.reshape(b, h, q_len, g, -1).permute(0, 2, 1, 3, 4).reshape(b, q_len, n_heads, -1)
