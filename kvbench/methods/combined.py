"""``combined``: compress heads × layers × tokens × bits at once (METHODS.md §5, §6).

One component per axis, each a registered kvbench method built with its own parameters:

* ``heads`` -- KV-head reduction by weight surgery: ``meanpool_gqa`` or ``svd_gqa`` (Ainslie et al. 2023;
  Yu et al. 2024). Default ``svd_gqa`` with ``kv_heads: 1``.
* ``layers`` -- cross-layer merging: ``minicache`` (Liu et al. 2024). Default: its paper defaults.
* ``tokens`` -- token eviction: ``h2o`` (Zhang et al. 2023). Default: 10% heavy + 10% recent.
* ``bits`` -- KV quantization: ``kivi`` or ``rtn`` (Liu et al. 2024; METHODS.md §6). Default ``null``.

Any axis may be ``null`` (skipped); ``<axis>_params`` of a skipped axis are ignored. Hydra overrides reach
the components: ``method.tokens_params.heavy_ratio=0.2``, ``method.heads=meanpool_gqa``,
``method.layers=null``; a key the YAML does not list is added with ``+``
(``+method.heads_params.calibration_sequences=8``).

Order: the head surgery runs first (the other components then see a model with g KV heads), then the token
component's ``apply`` (H2O switches attention to its scored wrapper). The cache: with both ``layers`` and
``tokens`` a :class:`~kvbench.cache.combined.CombinedCache` -- H2O layers below MiniCache's start layer,
evicting merged pairs from it on, under the rule *token sets agree wherever vectors are merged*: a pair keeps
one token set per KV head (``norm: per_head``) or one for all its KV heads (``norm: concat``), chosen from
the scores summed over both layers (and heads), and evicts before merging the kept tokens (details in
:mod:`kvbench.cache.combined`). With one of the two, that component's own cache; with neither, the
converted model's ``DynamicCache``. Each component set to its no-op (kv_heads = the model's, gamma 1,
H + R ≥ N) reproduces ``full``.

**Bits: quantize what the other axes store.** With ``bits`` alone (or with ``heads``), the bits method's own
quantized cache on the (converted) model. With ``layers``: the unmerged layers are quantized layers, each
merged pair's shared unit directions are quantized under the same rule (keys per channel for KIVI, per token
for RTN; the residual window applies to the pair's tokens), and its retained tokens are quantized per token
once they leave that window; only MiniCache's per-token norms stay in full precision
(:mod:`kvbench.cache.quantized_merging`). ``layers=minicache, bits=kivi``
with ``nbits: 4`` is the paper's MiniCache + KIVI-4 (``conf/method/minicache_kivi.yaml``). With ``tokens``:
the token method's cache, each layer storing the tokens it keeps quantized (same residual window and groups;
an evicted token leaves its key channel group, which keeps its scale for the tokens left in it -- see
:mod:`kvbench.cache.quantized_eviction`, which evicts a decode step's token in place). ``bits`` with both
``tokens`` and ``layers`` is refused (merged pairs that evict are not quantized).

Composition is by interface: a component is any registered method whose ``axis`` matches; the heads
component does its surgery in ``apply``, the tokens component supplies ``eviction()``, the layers component
``merging(config)``, the bits component ``quantization()``. Memory: the measured bytes count every tensor
(see the cache); the runner measures each component's ratio alone through the protocol
(:mod:`kvbench.eval.component_ratios`) and the record puts their product beside the measured ratio.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from kvbench.cache.attention_scores import is_scoring
from kvbench.cache.base import EvictingLayer
from kvbench.cache.combined import CombinedCache
from kvbench.cache.quantized_merging import QuantizedMergedPairCache
from kvbench.errors import MethodConfigError
from kvbench.methods.base import METHODS, Method, build_method, register

#: The axes ``combined`` composes, in the order their ``apply`` runs (surgery first).
AXES = ("heads", "layers", "tokens", "bits")
_KIND = {"heads": "KV-head reduction", "layers": "cross-layer merging", "tokens": "token-eviction",
         "bits": "quantization"}


def methods_on(axis: str) -> list[str]:
    """Registered methods that declare ``axis``."""
    return sorted(name for name, cls in METHODS.items() if cls.axis == axis)


def _component(axis: str, name: Optional[str], params: Any) -> Optional[Method]:
    if name is None:
        return None
    valid = f"method.{axis} takes one of: {', '.join(methods_on(axis))}, or null to skip the axis"
    if name not in methods_on(axis):
        home = METHODS[name].axis if name in METHODS else None
        if home is not None:
            raise MethodConfigError(f"method.{axis}={name!r} is a {_KIND.get(home, home)} method: it belongs on "
                                    f"method.{home}, not method.{axis} ({valid})")
        what = "cannot be combined" if name in METHODS else "is not a kvbench method"
        raise MethodConfigError(f"method.{axis}={name!r} {what} ({valid})")
    if not isinstance(params, Mapping):
        raise MethodConfigError(f"method.{axis}_params={params!r} must be a mapping of {name}'s parameters")
    with _on_axis(axis):
        return build_method(name, **dict(params))


@contextmanager
def _on_axis(axis: str):
    """Re-raise a component's MethodConfigError with its parameters named as set here: method.<axis>_params.x."""
    try:
        yield
    except MethodConfigError as err:
        msg = str(err)
        fixed = msg.replace("method.", f"method.{axis}_params.")
        raise MethodConfigError(fixed if fixed != msg else f"method.{axis}_params: {msg}") from None


@register
@dataclass
class Combined(Method):
    name: str = "combined"
    heads: Optional[str] = "svd_gqa"
    heads_params: Dict[str, Any] = field(default_factory=lambda: {"kv_heads": 1})
    layers: Optional[str] = "minicache"
    layers_params: Dict[str, Any] = field(default_factory=dict)
    tokens: Optional[str] = "h2o"
    tokens_params: Dict[str, Any] = field(default_factory=dict)
    bits: Optional[str] = None
    bits_params: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self._components: dict[str, Method] = {}
        for axis in AXES:
            component = _component(axis, getattr(self, axis), getattr(self, f"{axis}_params"))
            if component is not None:
                self._components[axis] = component
                setattr(self, f"{axis}_params", component.params())  # defaults resolved: one config, one hash
        simulated = [axis for axis, component in self._components.items() if component.single_pass]
        if simulated:
            raise MethodConfigError(
                f"method.{simulated[0]}_params.protocol=simulate: combined runs real caches only; the masking "
                f"simulation is a mode of {self._components[simulated[0]].name} alone (method={self._components[simulated[0]].name} "
                "method.protocol=simulate)")
        tokens = self._components.get("tokens")
        if tokens is not None and hasattr(tokens, "decoding") and tokens.decoding() is not None:
            raise MethodConfigError(
                f"method.tokens_params: combined compresses with the prefill budget only; decode_budget_* is for "
                f"method={tokens.name} alone (drop it from method.tokens_params)")
        if "layers" in self._components and tokens is not None and not hasattr(tokens, "eviction"):
            with_pairs = sorted(name for name in methods_on("tokens") if hasattr(METHODS[name], "eviction"))
            raise MethodConfigError(
                f"method.tokens={self.tokens!r} cannot evict merged pairs with method.layers={self.layers!r}: the "
                f"combined cache needs an eviction() policy, which only {', '.join(with_pairs)} supplies "
                f"(set method.layers=null to run {self.tokens} alone on the tokens axis)")
        if self.bits is not None and self.tokens is not None and self.layers is not None:
            raise MethodConfigError(
                f"method.bits={self.bits!r} with both method.tokens={self.tokens!r} and method.layers={self.layers!r} "
                "is not supported: quantized merged pairs do not evict (set one of method.tokens, method.layers "
                "or method.bits to null)")

    def components(self) -> dict[str, Method]:
        return dict(self._components)

    def changed_params(self, base: Method | None = None) -> dict:
        """Axes that differ from ``base`` (default: the default combination), and each component's parameters
        that differ from that component's own defaults."""
        base = type(self)() if base is None else base
        changed = {k: v for k, v in super().changed_params(base).items() if not k.endswith("_params")}
        for axis, component in self._components.items():
            other = base.components().get(axis)
            own = component.changed_params(other if other is not None and other.name == component.name else None)
            if own:
                changed[f"{axis}_params"] = own
        return changed

    def check_model(self, config) -> None:
        for axis, component in self._components.items():
            with _on_axis(axis):
                component.check_model(config)

    def apply(self, model, tokenizer=None):
        for component in self._components.values():  # AXES order: head surgery first
            model = component.apply(model, tokenizer)
        return model

    def new_cache(self, model):
        layers, tokens, bits = (self._components.get(axis) for axis in ("layers", "tokens", "bits"))
        if bits is not None:
            if tokens is not None:
                return self._quantized_eviction_cache(model, tokens, bits)
            if layers is None:
                return bits.new_cache(model)
            with _on_axis("bits"):
                bits.check_model(model.config)
            text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
            return QuantizedMergedPairCache(text.num_hidden_layers, layers.merging(model.config), bits.quantization())
        if layers is None or tokens is None:
            return (layers or tokens or Method()).new_cache(model)
        if not is_scoring(model):
            raise RuntimeError("method=combined: call method.apply(model) before method.new_cache(model) "
                               "(the cache needs the model's attention scores)")
        text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        return CombinedCache(text.num_hidden_layers, tokens.eviction(), layers.merging(model.config))

    @staticmethod
    def _quantized_eviction_cache(model, tokens: Method, bits: Method):
        """The tokens method's own cache, every layer storing its kept keys and values quantized."""
        with _on_axis("bits"):
            bits.check_model(model.config)
        cache = tokens.new_cache(model)
        if not all(isinstance(layer, EvictingLayer) for layer in cache.layers):
            raise MethodConfigError(f"method.tokens={tokens.name!r}: its cache does not evict through EvictingLayer, "
                                    "so it cannot store quantized tokens (set method.bits=null)")
        for layer in cache.layers:
            layer.quantize_with(bits.quantization())
        return cache
