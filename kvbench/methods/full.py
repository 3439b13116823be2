"""``full``: the uncompressed baseline. Every other method's accuracy, memory and speed are reported relative to this.

Parameters:

* ``cache_layout`` -- ``static`` (default): every token in preallocated slots written in place
  (:class:`~kvbench.cache.preallocated.PreallocatedCache`, transformers' ``StaticCache`` contract), the fastest
  uncompressed cache and so the honest baseline for speed; its bytes are the allocated capacity (prompt + new
  tokens where the caller reserves them). ``dynamic``: transformers' ``DynamicCache`` (one ``cat`` per step).
  Both give the same logits, bit for bit (tests/methods/test_full.py).
"""

from dataclasses import dataclass

from kvbench.cache.preallocated import LAYOUTS
from kvbench.methods.base import Method, MethodConfigError, register, uncompressed_cache


@register
@dataclass
class Full(Method):
    name: str = "full"
    cache_layout: str = "static"

    def __post_init__(self):
        if self.cache_layout not in LAYOUTS:
            raise MethodConfigError(
                f"method.cache_layout={self.cache_layout!r} is not valid (choose one of: {', '.join(LAYOUTS)})")

    def new_cache(self, model):
        return uncompressed_cache(model.config, self.cache_layout)
