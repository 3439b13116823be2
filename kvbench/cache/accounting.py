"""Bytes a cache really holds, measured from its tensors (EVALUATION.md, "Measuring memory").

Every cache kvbench builds implements ``nbytes()`` (:class:`kvbench.cache.base.KVCache`): every tensor it
keeps, keys, values, scores, indices, norms. A transformers cache is counted only when each of its layers
is a plain dynamic layer (keys and values are then all it holds); anything else is refused rather than
under-counted.
"""

from __future__ import annotations

import torch

from kvbench.cache.base import KVCache, plain_layer_nbytes, tensor_nbytes

__all__ = ["cache_nbytes", "full_cache_nbytes", "tensor_nbytes"]


def cache_nbytes(cache) -> int:
    """Bytes held by ``cache``: a kvbench cache's own count, or a plain transformers cache's keys and values."""
    if isinstance(cache, KVCache):
        return int(cache.nbytes())
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"cannot count the bytes of a {type(cache).__name__}: not a kvbench or transformers cache")
    return sum(plain_layer_nbytes(layer) for layer in layers)


def full_cache_nbytes(config, n_tokens: int, dtype: torch.dtype) -> int:
    """What an uncompressed cache holds for ``n_tokens`` tokens: 2·h·d·b·Σ_layers N_l (METHODS.md), where N_l = N
    for a global layer and min(N, W − 1) for a sliding-window layer of window W, which is what transformers'
    own cache keeps (Mistral v0.1, Gemma-2/3: their ``full`` stores no more, so a ratio is never inflated by
    tokens the model itself drops).

    Used only as the denominator of a run's compression ratio; the ``full`` method's
    own measured bytes equal it (tested).
    """
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    n_heads = text.num_attention_heads
    n_kv = getattr(text, "num_key_value_heads", None) or n_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // n_heads
    elem = torch.empty((), dtype=dtype).element_size()
    tokens = sum(min(n_tokens, window - 1) if window else n_tokens for window in layer_windows(text))
    return 2 * n_kv * head_dim * tokens * elem


def layer_windows(text_config) -> list[int | None]:
    """Per layer, the sliding window transformers' cache keeps (None: a global layer), read as
    ``DynamicCache(config=...)`` reads it (``layer_types``, else ``sliding_window`` on every layer)."""
    from transformers.cache_utils import get_layer_types_and_kwargs

    types, kwargs = get_layer_types_and_kwargs(text_config)
    return [kw.get("sliding_window") if kind in ("sliding_attention", "chunked_attention") else None
            for kind, kw in zip(types, kwargs)]
