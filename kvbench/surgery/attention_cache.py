"""Find the KV cache among the arguments transformers passes to an attention module.

transformers has renamed this argument before: Llama-family layers passed ``past_key_values=`` up to
5.23 and pass ``cache=`` since 5.24; BLOOM passes ``layer_past=``. A replacement attention that
reads the wrong name receives ``None`` and silently runs *without* a cache (SVD-GQA did exactly that
on 5.24). :func:`cache_argument` therefore accepts every name transformers has used, and refuses to
run when a cache object arrives under any other name, instead of ignoring it.
"""

from __future__ import annotations

from collections.abc import Mapping

from kvbench.errors import KvbenchError

#: Names under which transformers has passed the cache to attention modules, newest first.
KNOWN_CACHE_NAMES = ("cache", "past_key_values", "layer_past")


class UnknownCacheArgumentError(KvbenchError, RuntimeError):
    """A cache reached an attention module under a name kvbench does not know."""


def _is_cache(value) -> bool:
    from transformers.cache_utils import Cache

    return isinstance(value, Cache)


def cache_argument(module_name: str, named: Mapping[str, object], extra: Mapping[str, object]):
    """The cache passed to ``module_name``'s forward, or ``None`` when there is none.

    ``named``: the module's explicit cache parameters (a subset of :data:`KNOWN_CACHE_NAMES`) with the
    values received; ``extra``: the rest of the keyword arguments. A ``Cache`` found in ``extra`` means
    transformers renamed the argument again: raise rather than run cacheless.
    """
    given = [(name, value) for name, value in named.items() if value is not None]
    stray = sorted(name for name, value in extra.items() if _is_cache(value))
    if stray:
        raise UnknownCacheArgumentError(
            f"{module_name} received the KV cache as `{stray[0]}`, an argument name kvbench does not know "
            f"(known: {', '.join(KNOWN_CACHE_NAMES)}). The installed transformers has probably renamed it; "
            "kvbench refuses to run this attention without its cache. Install the versions of the lock "
            "(make setup) or add the new name to kvbench.surgery.attention_cache.KNOWN_CACHE_NAMES")
    if len({id(value) for _, value in given}) > 1:
        names = ", ".join(name for name, _ in given)
        raise UnknownCacheArgumentError(f"{module_name} received two different caches ({names})")
    return given[0][1] if given else None
