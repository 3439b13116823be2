"""``rtn``: naive round-to-nearest KV quantization, the baseline of MiniCache's LongBench table (Liu et al. 2024,
"MiniCache", Table 1: RTN, 3.21×) and of KIVI's analysis (METHODS.md §6).

Keys and values alike are quantized **per token** (each token's channels in groups of G share a scale and a
zero point), asymmetric, with **no** full-precision window: every token is quantized right after the forward
that produced it (that forward sees it exactly). Same packed storage and byte accounting as ``kivi``
(:mod:`kvbench.cache.kivi`); the only differences are the key grouping and the residual. Per-token keys mix
each key's outlier channels into every group, which is why 2-bit RTN collapses where KIVI-2 holds (KIVI,
Sec. 3).

Parameters:

* ``nbits`` -- bits per code, 2 or 4 (default 4: 4 + 2·16/32 = 5 bits per fp16 value, 3.2×, the ratio
  MiniCache's table gives RTN).
* ``group_size`` -- G channels per scale and zero point (default 32); must divide the model's head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvbench.cache.kivi import Quantization, QuantizedKVCache
from kvbench.methods.base import Method, register
from kvbench.methods.kivi import check_bits, check_quantizable, num_layers


@register
@dataclass
class RTN(Method):
    axis = "bits"
    name: str = "rtn"
    nbits: int = 4
    group_size: int = 32

    def __post_init__(self):
        check_bits(self.nbits, self.group_size)

    def check_model(self, config) -> None:
        check_quantizable(config, self.name, self.nbits, self.group_size)

    def quantization(self) -> Quantization:
        """What ``combined``'s cache quantizes with on the bits axis: per token, no residual."""
        return Quantization(self.nbits, self.group_size, 0, "token", "token")

    def new_cache(self, model) -> QuantizedKVCache:
        self.check_model(model.config)
        return QuantizedKVCache(num_layers(model.config), self.quantization())
