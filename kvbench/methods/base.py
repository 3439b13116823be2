"""The Method interface every compression method implements, and the registry.

A method is a ``@dataclass`` whose fields are its parameters. The same class is
the Hydra schema of ``conf/method/<name>.yaml`` (registered by
:mod:`kvbench.compose`), so a typo or a wrong type fails when the config is
composed, and ``__post_init__`` checks ranges before any model is loaded: each
parameter is validated there, once.

Optional hooks, in the order the runner calls them (ARCHITECTURE.md):

* :meth:`Method.check_model` -- checks that need the model's config (not its
  weights), e.g. ``kv_heads`` must divide the model's KV heads;
* :meth:`Method.apply` -- one-time weight surgery (mean-pool / SVD GQA);
* :meth:`Method.new_cache` -- a fresh ``transformers.Cache`` for one sequence,
  carrying the runtime policy (H2O eviction, MiniCache merging);
* :meth:`Method.compress` -- the end-of-prefill step, called by the evaluator
  once the context is in the cache.

A method that can be a component of ``combined`` declares its ``axis`` and supplies
what the combined cache needs through a public hook: ``heads`` methods do their
surgery in ``apply``; ``tokens`` methods return an ``eviction()`` policy; ``layers``
methods a ``merging(config)`` plan.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

from kvbench.cache.attention_scores import GROUP_REDUCTIONS, PREFIX, SUPPORTED_BASES, is_scoring, use_scoring_attention
from kvbench.cache.base import KVCache, PlainCache
from kvbench.cache.preallocated import PreallocatedCache
from kvbench.cache.decode_budget import PARAMETERS as DECODE_PARAMETERS
from kvbench.errors import MethodConfigError
from kvbench.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

#: Every method, by the default of its ``name`` field; :meth:`~kvbench.registry.Registry.discover` imports
#: every module of this package, so a new method module edits no other file.
METHODS: Registry = Registry("method name", "kvbench.methods", lambda cls: cls.__dataclass_fields__["name"].default)
#: Class decorator: make ``cls`` selectable as ``method=<cls.name default>``.
register = METHODS.register


class Method:
    """Base class. Subclasses are dataclasses with a ``name: str = "<name>"`` first field."""

    name: str = "full"
    #: What the method compresses, so ``combined`` can compose it: ``heads`` (weight surgery that leaves
    #: fewer KV heads), ``layers`` (cross-layer merging), ``tokens`` (eviction), ``bits`` (quantization);
    #: None for methods that cannot be a component.
    axis: ClassVar[str | None] = None
    #: Why this method cannot go through the cache contract test (``nbytes()`` = every tensor the cache holds,
    #: checked on a tiny CPU model for every registered method: ``tests/contracts.py``), e.g. a CUDA-only kernel.
    #: None (every method so far): it is checked, so a new method cannot skip the check silently.
    cache_contract_exempt: ClassVar[str | None] = None
    #: Whether the method changes the tokenizer or the output vocabulary (none does yet): a suite that compares
    #: next-token distributions with full's (``suite=fidelity``) refuses it in one line.
    changes_vocabulary: ClassVar[bool] = False
    #: Why a ``tokens`` method takes no decode budget (``decode_budget_*``), said in one line when one is given.
    no_decode_budget: ClassVar[str | None] = None
    #: ``{old parameter: new name}``: parameters renamed since a release, refused in one line that names the new
    #: one (before the model loads) rather than as an unknown parameter.
    renamed: ClassVar[dict[str, str]] = {}

    def check_model(self, config: "PretrainedConfig") -> None:
        """Raise :class:`MethodConfigError` if the method cannot run on this model."""

    def apply(self, model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase | None" = None) -> "PreTrainedModel":
        """One-time model surgery. Default: none."""
        return model

    def new_cache(self, model: "PreTrainedModel") -> KVCache:
        """A fresh cache for one sequence (a :class:`~kvbench.cache.base.KVCache`: it reports its bytes).
        Default: every token in preallocated slots, for the model as it is (after :meth:`apply`)."""
        return uncompressed_cache(model.config)

    def compress(self, cache: KVCache) -> None:
        """End-of-prefill compression: the cache's own ``compress()`` (idempotent)."""
        cache.compress()

    @property
    def single_pass(self) -> bool:
        """Whether the evaluator must score each request in one forward over its whole sequence instead of
        prefill → compress → score (a masking simulation such as ``h2o protocol=simulate``). Default: no."""
        return False

    @property
    def changes_model(self) -> bool:
        """Whether :meth:`apply` edits the model (then a model shared across sweep jobs must be copied first)."""
        return type(self).apply is not Method.apply

    def components(self) -> dict[str, "Method"]:
        """``{axis: method}`` for a composite method (``combined``); empty for a single method."""
        return {}

    def changed_params(self, base: "Method | None" = None) -> dict[str, Any]:
        """The parameters that differ from ``base`` (default: the method with its default parameters), with
        defaults resolved on both sides (a null meaning 0.1 equals an explicit 0.1). How reports label a
        configuration; nested parameters (``combined``'s components) are compared key by key."""
        base = type(self)() if base is None else base
        return changed(self.params(), base.params())

    def params(self) -> dict[str, Any]:
        """The method's parameters (everything but ``name``), for records and reports."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "name"}


def uncompressed_cache(config, layout: str = "static") -> KVCache:
    """The cache of a method that keeps every token: preallocated slots (``static``,
    :class:`~kvbench.cache.preallocated.PreallocatedCache`) or transformers' ``DynamicCache`` (``dynamic``, and
    always for a model with sliding-window layers, whose window the slots do not model)."""
    if layout == "dynamic" or sliding_window_in_effect(config):
        return PlainCache(config=config)
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    return PreallocatedCache(text.num_hidden_layers)


def changed(mine: dict, base: dict) -> dict:
    """The entries of ``mine`` that differ from ``base`` (nested dicts key by key)."""
    out = {}
    for key, value in mine.items():
        other = base.get(key, dataclasses.MISSING)
        if isinstance(value, dict) and isinstance(other, dict):
            nested = changed(value, other)
            if nested:
                out[key] = nested
        elif value != other:
            out[key] = value
    return out


def sliding_window_in_effect(config) -> bool:
    """Whether some layer attends over a window shorter than the model's context: a ``layer_types`` entry other
    than full attention, or a ``sliding_window`` (switched on) below ``max_position_embeddings``. A window at
    least the context long (Phi-4-mini's 262144 over 131072 positions) slides nothing."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    if any(t != "full_attention" for t in getattr(text, "layer_types", None) or []):
        return True
    window = getattr(text, "sliding_window", None)
    if window is None or not getattr(text, "use_sliding_window", True):
        return False
    return window < (getattr(text, "max_position_embeddings", None) or window + 1)


def check_full_attention(method: str, config: "PretrainedConfig") -> None:
    """Token eviction keeps one logical length per layer: refuse sliding-window / linear-attention layers."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None) or []
    odd = sorted({t for t in layer_types if t != "full_attention"})
    if sliding_window_in_effect(text):
        raise MethodConfigError(
            f"method={method} needs full-attention layers only; this model has {', '.join(odd) or 'sliding_window'} "
            "layers (choose a model without sliding-window/linear attention)")


class ScoredAttention:
    """Mixin for methods whose cache reads attention probabilities (H2O, SnapKV, PyramidKV, TOVA).

    ``apply`` switches the model to ``scored_<impl>`` (the same attention, plus the probabilities the cache
    asks for: :mod:`kvbench.cache.attention_scores`); ``check_model`` refuses, before loading, the models and
    attention implementations that cannot be scored."""

    def check_model(self, config) -> None:
        check_full_attention(self.name, config)
        impl = getattr(config, "_attn_implementation", None)
        if impl is not None and not _scorable(impl):
            raise MethodConfigError(
                f"method={self.name} cannot score attention with model.attn_implementation={impl!r} (choose sdpa or eager)")

    def apply(self, model, tokenizer=None):
        """Switch attention to ``scored_<impl>``: the same attention, plus scores for the cache."""
        try:
            use_scoring_attention(model)
        except ValueError as err:
            raise MethodConfigError(f"method={self.name}: {err}") from None
        return model

    def require_scoring(self, model) -> None:
        """Raise unless :meth:`apply` ran on ``model`` (called by ``new_cache``)."""
        if not is_scoring(model):
            raise RuntimeError(f"method={self.name}: call method.apply(model) before method.new_cache(model) "
                               "(the cache needs the model's attention scores)")


def check_group_reduction(method) -> None:
    """One line for a ``group_reduction`` that is not a reduction kvbench knows (every scored token method)."""
    if method.group_reduction not in GROUP_REDUCTIONS:
        raise MethodConfigError(f"method.group_reduction={method.group_reduction!r} is not supported (choose one "
                                f"of: {', '.join(GROUP_REDUCTIONS)})")


def _scorable(impl: str) -> bool:
    return impl.removeprefix(PREFIX) in SUPPORTED_BASES


def methods_with(parameter: str) -> list[str]:
    """Registered methods that have ``parameter``."""
    return sorted(name for name, cls in METHODS.discover().items() if parameter in getattr(cls, "__dataclass_fields__", {}))


def renamed_parameter(name: str, parameter: str) -> str | None:
    """The one line for a parameter of method ``name`` that was renamed (None if it was not)."""
    cls = METHODS.discover().get(name)
    new = getattr(cls, "renamed", {}).get(parameter)
    if new is None:
        return None
    return f"method={name}: {parameter} was renamed {new} (set method.{new} instead)"
def no_decode_budget(name: str, parameter: str) -> str:
    """Why registered method ``name`` takes no decode-budget ``parameter`` (``decode_budget_*``, ``compress_every``),
    in one line: the kvbench CLI, ``lm_eval --model kvbench`` and :func:`build_method` say the same."""
    cls = METHODS[name]
    if cls.axis == "tokens":
        return f"method={name} cannot compress while decoding ({parameter}): {cls.no_decode_budget or 'no decode-time rule'}"
    return (f"method={name} has no token axis, so {parameter} does not apply (decode-time compression exists "
            f"for: {', '.join(methods_with('decode_budget_tokens'))})")


def build_method(name: str, **params: Any) -> Method:
    """Instantiate a registered method, with a clear error for an unknown name or parameter."""
    if name not in METHODS.discover():
        raise MethodConfigError(f"method={name!r} is not a kvbench method (choose one of: {', '.join(sorted(METHODS))})")
    cls = METHODS[name]
    fields = {f.name for f in dataclasses.fields(cls)} - {"name"}
    unknown = sorted(set(params) - fields)
    for old in unknown:
        if old in cls.renamed:
            raise MethodConfigError(renamed_parameter(name, old))
    if "protocol" in unknown:
        raise MethodConfigError(f"method={name} has no masking simulation (protocol=simulate exists for: "
                                f"{', '.join(methods_with('protocol'))}; {name} runs real compression only)")
    decoding = [p for p in unknown if p in DECODE_PARAMETERS]
    if decoding:
        raise MethodConfigError(no_decode_budget(name, decoding[0]))
    if unknown:
        raise MethodConfigError(
            f"method={name} has no parameter {', '.join(unknown)} (valid: {', '.join(sorted(fields)) or 'none'})"
        )
    return cls(**params)
