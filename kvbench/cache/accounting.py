"""Bytes a cache really holds, measured from its tensors (EVALUATION.md, "Measuring memory").

A compressed cache reports its own ``nbytes()`` (every tensor it keeps: keys,
values, scores, indices, norms). For transformers' own caches we sum
``element_size * nelement`` over the keys and values of every layer.
"""

from __future__ import annotations

import torch


def tensor_nbytes(*tensors: torch.Tensor | None) -> int:
    """Sum of ``element_size * nelement`` over the given tensors (``None`` counts 0)."""
    return sum(t.element_size() * t.nelement() for t in tensors if t is not None)


def cache_nbytes(cache) -> int:
    """Bytes held by ``cache``: its own ``nbytes()`` if it has one, else the sum over its layers."""
    own = getattr(cache, "nbytes", None)
    if callable(own):
        return int(own())
    total = 0
    for layer in getattr(cache, "layers", []):
        layer_own = getattr(layer, "nbytes", None)
        if callable(layer_own):
            total += int(layer_own())
        else:
            total += tensor_nbytes(getattr(layer, "keys", None), getattr(layer, "values", None))
    return total


def full_cache_nbytes(config, n_tokens: int, dtype: torch.dtype) -> int:
    """What an uncompressed cache holds for ``n_tokens`` tokens: 2·L·h·d·N·b (METHODS.md).

    Used only as the denominator of a run's compression ratio; the ``full`` method's
    own measured bytes equal it (tested).
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_heads = text.num_attention_heads
    n_kv = getattr(text, "num_key_value_heads", None) or n_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // n_heads
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * text.num_hidden_layers * n_kv * head_dim * n_tokens * elem
