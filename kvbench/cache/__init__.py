"""Caches that really store less, and exact byte accounting: what several methods share.

The contract (``base``, ``accounting``), eviction bookkeeping (``eviction``), attention scores, merging,
quantization, and the caches ``combined`` composes (``h2o``, ``minicache``, ``kivi``, ``combined``,
``quantized_merging``). A cache that one method alone uses lives in that method's module
(``kvbench/methods/snapkv.py``)."""

from kvbench.cache.accounting import cache_nbytes, full_cache_nbytes

__all__ = ["cache_nbytes", "full_cache_nbytes"]
