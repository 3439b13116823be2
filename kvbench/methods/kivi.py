"""``kivi``: tuning-free asymmetric 2/4-bit KV quantization (Liu et al. 2024, "KIVI: A Tuning-Free Asymmetric
2bit Quantization for KV Cache", ICML), with real packed storage (METHODS.md §6).

Keys are quantized **per channel** (each channel's values over G consecutive tokens share a scale and a zero
point: key outliers sit in fixed channels, Sec. 3 of KIVI), values **per token** (each token's channels in
groups of G). The most recent tokens stay in full precision -- keys until R of them can be quantized at once,
values while they are among the last R -- exactly as the authors' code streams them; quantization happens
after each forward's attention (the rule: :mod:`kvbench.cache.kivi`). The cache stores the packed codes
(4 per byte at 2 bits, 2 at 4 bits), the scales and zero points in the model's dtype, and the residual; its
``nbytes()`` counts exactly those tensors.

Built in torch (:mod:`kvbench.cache.quantization`, :mod:`kvbench.cache.kivi`), not on transformers'
``QuantizedCache``, whose residual policy and quanto axes differ from KIVI's and whose backend objects hide
the bytes. Dequantization is done on the fly in torch for attention (KIVI's fused CUDA kernels are a speed
optimisation, not a change of what is stored or computed).

Memory per token and head, ignoring the residual: b/16 + 2/G of fp16 (G = 32: 0.1875 at 2 bits, 5.3×;
0.3125 at 4 bits, 3.2×). On the bundled float32 model the scales are float32: b/32 + 2/G of float32.

Parameters:

* ``nbits`` -- bits per code, 2 (KIVI-2, default) or 4 (KIVI-4).
* ``group_size`` -- G, values per scale and zero point (paper: 32). Must divide the model's head dim
  (values are grouped per token within one head).
* ``residual_length`` -- R, tokens kept in full precision (paper: 128); a multiple of G (the authors' code
  asserts it), 0 = quantize every complete group. R ≥ the sequence length reproduces ``full`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvbench.cache.kivi import Quantization, QuantizedKVCache
from kvbench.cache.quantization import NBITS
from kvbench.methods.base import Method, MethodConfigError, register, sliding_window_in_effect


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_bits(nbits, group_size) -> None:
    """Validate the parameters every quantizing method shares (one line each)."""
    if nbits not in NBITS or not _is_int(nbits):
        choices = ", ".join(map(str, NBITS))
        raise MethodConfigError(f"method.nbits={nbits!r} is not supported (choose one of: {choices})")
    if not _is_int(group_size) or group_size <= 0:
        raise MethodConfigError(f"method.group_size={group_size!r} must be a positive number of values per scale "
                                "and zero point (paper: 32)")


def head_dim_of(config) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads


def check_quantizable(config, method: str, nbits: int, group_size: int) -> None:
    """Groups of G channels must tile the head dim, codes must fill whole bytes, and every layer must be full
    attention (a quantized layer stores every token: no sliding window)."""
    d = head_dim_of(config)
    if d % group_size:
        divisors = " or ".join(str(g) for g in [g for g in (8, 16, 32, 64, 128) if d % g == 0][-2:] or [1])
        raise MethodConfigError(f"method.group_size={group_size} must divide the model's head dim {d} (values are "
                                f"grouped per token, G channels at a time; choose e.g. {divisors})")
    if d * nbits % 8:
        raise MethodConfigError(f"method={method}: head dim {d} at {nbits} bits does not fill whole bytes")
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    odd = sorted({t for t in (getattr(text, "layer_types", None) or []) if t != "full_attention"})
    if sliding_window_in_effect(text):
        raise MethodConfigError(f"method={method} needs full-attention layers only; this model has "
                                f"{', '.join(odd) or 'sliding_window'} layers")


def num_layers(config) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return text.num_hidden_layers


@register
@dataclass
class KIVI(Method):
    axis = "bits"
    name: str = "kivi"
    nbits: int = 2
    group_size: int = 32
    residual_length: int = 128

    def __post_init__(self):
        check_bits(self.nbits, self.group_size)
        if not _is_int(self.residual_length) or self.residual_length < 0:
            raise MethodConfigError(f"method.residual_length={self.residual_length!r} must be a token count >= 0 "
                                    "(paper: 128)")
        if self.residual_length % self.group_size:
            lo = self.residual_length // self.group_size * self.group_size
            raise MethodConfigError(f"method.residual_length={self.residual_length} must be a multiple of "
                                    f"method.group_size={self.group_size} (keys are quantized R tokens at a time in "
                                    f"groups of G; e.g. {lo or self.group_size} or {lo + self.group_size})")

    def check_model(self, config) -> None:
        check_quantizable(config, self.name, self.nbits, self.group_size)

    def quantization(self) -> Quantization:
        """What ``combined``'s cache quantizes with on the bits axis."""
        return Quantization(self.nbits, self.group_size, self.residual_length, "channel", "token")

    def new_cache(self, model) -> QuantizedKVCache:
        self.check_model(model.config)
        return QuantizedKVCache(num_layers(model.config), self.quantization())
