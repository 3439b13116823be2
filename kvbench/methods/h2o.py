"""``h2o``: heavy-hitter eviction (Zhang et al. 2023, "H2O: Heavy-Hitter Oracle for Efficient
Generative Inference of Large Language Models"), with real eviction (METHODS.md §3).

Every (layer, KV head) keeps H "heavy hitters" -- the tokens with the largest accumulated attention
score s[k] = Σ_q softmax(q·Kᵀ/√d)[q, k] over every query processed so far -- plus the R most recent
tokens; everything else is dropped from the cache for good (kvbench/cache/h2o.py). Attention itself
runs with the model's own implementation (sdpa or eager); the scores are computed beside it in query
chunks (kvbench/cache/attention_scores.py).

Parameters (each budget is a ratio of the prompt length P = tokens of the first forward, or a count):

* ``heavy_ratio`` / ``heavy_tokens`` -- H = ⌊heavy_ratio·P⌋ or H = heavy_tokens. Default ratio 0.1.
* ``recent_ratio`` / ``recent_tokens`` -- R = ⌊recent_ratio·P⌋ or R = recent_tokens. Default ratio 0.1.
  Give at most one of ratio/count per budget (set the other to null). Defaults H = R = 10% of P: the
  paper's 20% KV cache. ``h2o_local`` (heavy 0, recent 20%) is the paper's "local" baseline.
* ``group_reduction`` -- GQA: how the query heads sharing a KV head combine: ``sum`` (default: the paper's
  accumulated score is a sum, and its code is MHA-only) or ``mean`` of their probabilities (same ranking), or
  ``max`` (per query token, the largest of the group). The name every scored token method uses; it was
  ``score_agg`` until issue 26, and a config that still says ``score_agg`` is refused in one line.
* ``protocol`` -- ``real`` (default): the eviction above, under kvbench's prefill → compress → score
  protocol. ``simulate``: the paper's own lm-eval procedure (METHODS.md §3b,
  :mod:`kvbench.cache.h2o_simulation`): each request is scored in ONE forward over its whole sequence
  of n tokens with attention masked to the top-⌊heavy_ratio·n⌋ keys by attention summed over *all*
  queries (later ones included) plus a band of ⌊recent_ratio·n⌋ keys before each query. Nothing is
  evicted (the record's KV ratio is 1.0) and selection sees the future: a simulation, labelled as such
  in the record (``protocol=simulate``) and the report (``(simulated)``). Generation re-runs the whole
  sequence once per new token.

The budget is fixed once the prompt is seen and holds while streaming further chunks or decoding, unless

* ``decode_budget_tokens`` / ``decode_budget_ratio`` / ``compress_every`` -- compression while decoding
  (:mod:`kvbench.cache.decode_budget`), independent of the prefill budget (``heavy_ratio=1`` turns the prefill
  eviction off). H2O's own per-step rule (METHODS_NEXT.md §6, the authors' code): scores accumulate over every
  query; every ``compress_every`` steps a layer over the decode target keeps the newest tokens plus the
  best-scored others, the target split between recent and heavy in the prefill budget's proportion (default
  1:1). Not with ``protocol=simulate`` nor inside ``combined`` (refused in one line).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from kvbench.cache.base import PlainCache
from kvbench.cache.combined import Eviction
from kvbench.cache.decode_budget import DecodeBudget, decode_budget_of
from kvbench.cache.h2o import H2OBudget, H2OCache
from kvbench.cache.h2o_simulation import is_simulating, use_simulated_attention
from kvbench.methods.base import (Method, MethodConfigError, ScoredAttention, check_full_attention, check_group_reduction,
                                  register)

DEFAULT_RATIO = 0.1
PROTOCOLS = ("real", "simulate")


@register
@dataclass
class H2O(ScoredAttention, Method):
    axis = "tokens"
    renamed = {"score_agg": "group_reduction"}
    name: str = "h2o"
    heavy_ratio: Optional[float] = None
    heavy_tokens: Optional[int] = None
    recent_ratio: Optional[float] = None
    recent_tokens: Optional[int] = None
    group_reduction: str = "sum"
    protocol: str = "real"
    decode_budget_tokens: Optional[int] = None
    decode_budget_ratio: Optional[float] = None
    compress_every: int = 1

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise MethodConfigError(
                f"method.protocol={self.protocol!r} is not valid (choose one of: {', '.join(PROTOCOLS)})")
        check_group_reduction(self)
        for what, low_ok in (("heavy", True), ("recent", False)):
            ratio, count = getattr(self, f"{what}_ratio"), getattr(self, f"{what}_tokens")
            if ratio is not None and count is not None:
                raise MethodConfigError(
                    f"method.{what}_ratio={ratio} and method.{what}_tokens={count} both set: give the {what} "
                    f"budget either as a ratio of the prompt or as a token count (set the other to null)")
            if ratio is not None and not ((0 <= ratio if low_ok else 0 < ratio) and ratio <= 1):
                interval = "[0, 1]" if low_ok else "(0, 1]"
                raise MethodConfigError(
                    f"method.{what}_ratio={ratio} must lie in {interval} (a fraction of the prompt length)")
            if count is not None and count < 0:
                raise MethodConfigError(f"method.{what}_tokens={count} must be a token count >= 0")
        if self.heavy_tokens == 0 and self.recent_tokens == 0:
            raise MethodConfigError("method.heavy_tokens=0 and method.recent_tokens=0 leave no cache: "
                                    "at least one of them must be >= 1")
        if self.decoding() is not None and self.protocol == "simulate":
            raise MethodConfigError("method.protocol=simulate masks attention in one forward and keeps no cache to "
                                    "compress while decoding: drop decode_budget_* or set method.protocol=real")
        for what in ("heavy", "recent"):  # resolve the default (both null = 10%), so 0.1 and null are one config
            if getattr(self, f"{what}_ratio") is None and getattr(self, f"{what}_tokens") is None:
                setattr(self, f"{what}_ratio", DEFAULT_RATIO)

    @property
    def single_pass(self) -> bool:
        """``protocol=simulate``: the evaluator scores each request in one masked forward (nothing evicted)."""
        return self.protocol == "simulate"

    def check_model(self, config) -> None:
        if self.single_pass:  # the simulation computes attention itself: any implementation will do
            check_full_attention(self.name, config)
        else:
            super().check_model(config)

    def apply(self, model, tokenizer=None):
        if not self.single_pass:
            return super().apply(model, tokenizer)
        try:
            use_simulated_attention(model, self.budget(), self.group_reduction)
        except ValueError as err:
            raise MethodConfigError(f"method={self.name} protocol=simulate: {err}") from None
        return model

    def budget(self) -> H2OBudget:
        """The resolved :class:`~kvbench.cache.h2o.H2OBudget` (defaults: 10% heavy, 10% recent)."""
        return H2OBudget(self.heavy_ratio, self.heavy_tokens, self.recent_ratio, self.recent_tokens)

    def decoding(self) -> DecodeBudget | None:
        """The decode budget (None: the prefill budget holds while decoding)."""
        return decode_budget_of(self)

    def eviction(self) -> Eviction:
        """The policy ``combined``'s cache applies on the tokens axis (the prefill budget only)."""
        if self.decoding() is not None:
            raise MethodConfigError("method=combined's tokens component evicts with H2O's prefill budget at every "
                                    "step and has no decode budget: drop decode_budget_* from the h2o component")
        return Eviction(self.budget(), self.group_reduction)

    def new_cache(self, model):
        if self.single_pass:  # the simulation masks attention in one forward: the cache holds every token
            if not is_simulating(model):
                raise RuntimeError("method=h2o protocol=simulate: call method.apply(model) before method.new_cache(model)")
            return PlainCache(config=model.config)
        self.require_scoring(model)
        return H2OCache.for_model(model.config, self.budget(), self.group_reduction, self.decoding())
