"""``full``: the uncompressed baseline, a plain transformers ``DynamicCache``.

Every other method's accuracy, memory and speed are reported relative to this.
"""

from dataclasses import dataclass

from kvbench.methods.base import Method, register


@register
@dataclass
class Full(Method):
    name: str = "full"
