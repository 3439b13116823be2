"""Caches that really store less, and exact byte accounting."""

from kvbench.cache.accounting import cache_nbytes, full_cache_nbytes

__all__ = ["cache_nbytes", "full_cache_nbytes"]
