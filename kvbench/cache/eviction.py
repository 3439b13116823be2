"""What the token-eviction baselines share (METHODS.md §7): a budget fixed by the prompt, the layer that
applies it, and the selection primitives. Each baseline (``streaming_llm``, ``snapkv``, ``pyramidkv``,
``tova``, ``knorm``) is one module in :mod:`kvbench.methods` whose layer only says *which* tokens to keep.

* :class:`TokenBudget` -- tokens kept per (layer, KV head): ``⌊budget_ratio·P⌋`` of the prompt (P = the
  tokens of the cache's first forward; :func:`~kvbench.cache.h2o.ratio_floor` is exact for the decimal
  the user typed, so 1,500 tokens at 0.2 keep 300, not 299) or ``budget_tokens``; at least 1. It checks
  its own values when a method builds it, so a bad budget is one line before any model loads.
* :class:`BudgetLayer` -- an :class:`~kvbench.cache.base.EvictingLayer` that resolves its budget at the
  first forward and keeps it for the life of the cache (streamed chunks, decoding). After each append a
  subclass either evicts at once (rules that read no attention: the forward's attention still runs over every
  token -- a gather leaves the returned tensors intact, an in-place eviction waits for the attention,
  ``evict_lowest(..., deferred=True)`` -- and only what is *stored* shrinks) or asks the scored attention
  for the probabilities it needs (:func:`~kvbench.cache.attention_scores.request_scores`) and evicts when
  they arrive. A forward whose requested scores never arrive fails on the next one, never silently.
* :class:`BudgetCache` -- a cache of such layers: ``compress()`` checks that every eviction happened,
  ``notes()`` reports what the cache had to adapt (a clamped window or budget) for the record.
* :func:`top_k_sorted`, :func:`pool1d`, :func:`rows` -- selection helpers; :func:`newest`,
  :func:`keep_newest_and_top` and :func:`pool_by_position` read the book's *logical* positions, so decode-time
  selection never assumes that storage slots are in token order.

Decode-time compression (:class:`~kvbench.cache.decode_budget.DecodeBudget`, METHODS_NEXT.md §6): with a decode
budget, every forward after the prefill is a decode step; on the steps the budget makes due, a layer holding more
than the target calls its subclass's :meth:`BudgetLayer.decode_step` with ``compress=True`` and
:attr:`BudgetLayer.target` set to the decode target (prefill selection uses the same attribute, set to the prefill
budget). Without a decode budget every forward goes through :meth:`BudgetLayer.after_append` as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kvbench.cache.base import EvictingLayer, KVCache
from kvbench.cache.decode_budget import DecodeBudget
from kvbench.cache.h2o import keep_newest_and_top, newest, ratio_floor  # noqa: F401 (re-exported)
from kvbench.errors import MethodConfigError

POOLINGS = ("avg", "max")
#: The budget when neither ``budget_ratio`` nor ``budget_tokens`` is given: 20% of the prompt (H2O's default total).
DEFAULT_RATIO = 0.2


@dataclass(frozen=True)
class TokenBudget:
    """A ratio of the prompt length or a token count (exactly one), checked on construction."""

    ratio: float | None = None
    tokens: int | None = None

    def __post_init__(self):
        if self.ratio is not None and self.tokens is not None:
            raise MethodConfigError(
                f"method.budget_ratio={self.ratio} and method.budget_tokens={self.tokens} both set: give the "
                "budget either as a ratio of the prompt or as a token count (set the other to null)")
        if self.ratio is None and self.tokens is None:
            raise MethodConfigError("no budget: set method.budget_ratio or method.budget_tokens")
        if self.ratio is not None and not (0 < self.ratio <= 1):
            raise MethodConfigError(
                f"method.budget_ratio={self.ratio} must lie in (0, 1] (a fraction of the prompt length)")
        if self.tokens is not None and self.tokens < 1:
            raise MethodConfigError(f"method.budget_tokens={self.tokens} must be a token count >= 1")

    @classmethod
    def of(cls, ratio: float | None, tokens: int | None) -> "TokenBudget":
        """The budget a method's ``budget_ratio`` / ``budget_tokens`` describe (both null: :data:`DEFAULT_RATIO`)."""
        return cls(DEFAULT_RATIO if ratio is None and tokens is None else ratio, tokens)

    def resolve(self, prompt_length: int) -> int:
        """Tokens kept per (layer, KV head) for a prompt of ``prompt_length`` tokens (at least 1)."""
        if self.tokens is not None:
            return self.tokens
        return max(1, ratio_floor(self.ratio, prompt_length))

    def __str__(self) -> str:
        return f"budget_tokens={self.tokens}" if self.tokens is not None else f"budget_ratio={self.ratio}"


def top_k_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores along the last dim, in ascending (logical) order."""
    return torch.sort(torch.topk(scores, k, dim=-1, sorted=False).indices, dim=-1).values


def pool1d(scores: torch.Tensor, kernel_size: int, kind: str = "avg") -> torch.Tensor:
    """SnapKV's smoothing: 1-D pooling over neighbouring tokens, stride 1, ``kernel_size // 2`` padding on
    each side (odd kernels keep the length). ``avg`` counts the zero padding (PyTorch's default, as the
    official code), ``max`` ignores it."""
    if kernel_size == 1 or scores.shape[-1] == 0:
        return scores
    flat = scores.reshape(-1, 1, scores.shape[-1])
    pool = F.avg_pool1d if kind == "avg" else F.max_pool1d
    return pool(flat, kernel_size=kernel_size, stride=1, padding=kernel_size // 2).reshape(scores.shape)


def pool_by_position(scores: torch.Tensor, positions: torch.Tensor, kernel_size: int, kind: str = "avg") -> torch.Tensor:
    """:func:`pool1d` along the tokens' logical order (neighbours by position, whatever the slot order), returned
    in slot order."""
    order = positions.argsort(dim=-1)
    pooled = pool1d(scores.gather(-1, order), kernel_size, kind)
    return torch.empty_like(pooled).scatter_(-1, order, pooled)


def rows(index: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
    """A 1-D slot index (or ``[b, 1, K]``) as the ``[b, h, K]`` index :meth:`EvictingLayer.keep` takes."""
    if index.ndim == 1:
        index = index[None, None]
    return index.expand(batch, heads, index.shape[-1])


class BudgetLayer(EvictingLayer):
    """An evicting layer with a budget fixed at its first forward. Subclasses implement :meth:`after_append`
    (and :meth:`select` when they request attention scores)."""

    #: The method's name, for messages.
    method = "eviction"
    #: How a KV head's query heads combine in the scores this layer requests (see ``aggregate_heads``).
    group_reduction = "sum"

    def __init__(self, budget: TokenBudget, with_scores: bool = False, decode: DecodeBudget | None = None):
        super().__init__(with_scores)
        self.budget = budget
        self.decode = decode
        self.capacity: int | None = None
        #: Tokens the current selection keeps: the prefill budget, or the decode target during a decode step.
        self.target: int | None = None
        #: Forwards since the prefill (decode steps), counted only with a decode budget.
        self.steps = 0
        self.awaiting_scores = False
        self.note: str | None = None

    def resolve_capacity(self, prompt_length: int) -> int:
        """Tokens this layer keeps per KV head, from the first forward's length."""
        return self.budget.resolve(prompt_length)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append the new tokens; return every stored key/value (attention runs over all of them)."""
        if self.awaiting_scores:
            raise RuntimeError(_no_scores(self.method))
        first = self.capacity is None
        if first:
            self.capacity = self.resolve_capacity(key_states.shape[-2])
        keys, values = super().update(key_states, value_states)
        if first or self.decode is None:
            self.target = self.capacity
            self.after_append(keys, first)
        else:
            self.steps += 1
            target = self.decode.target(self.book.seen)
            compress = self.decode.due(self.steps) and self.stored_tokens() > target
            if compress:
                self.target = target
            self.decode_step(keys, compress)
        return keys, values

    def after_append(self, keys: torch.Tensor, first: bool) -> None:
        """Evict now, or request the attention scores :meth:`select` needs. ``first``: the prefill forward."""
        raise NotImplementedError

    def decode_step(self, keys: torch.Tensor, compress: bool) -> None:
        """A decode step under a decode budget: with ``compress``, keep :attr:`target` tokens (now, or once the
        requested scores arrive). Methods that refuse a decode budget never get here."""
        raise NotImplementedError

    def receive_scores(self, column_sums: torch.Tensor) -> None:
        """Scores requested by :meth:`after_append` [b, h, stored]: evict down to the budget."""
        self.awaiting_scores = False
        self.keep(self.select(column_sums))

    def select(self, column_sums: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check_evicted(self) -> None:
        if self.awaiting_scores:
            raise RuntimeError(_no_scores(self.method))

    def reset(self) -> None:
        super().reset()
        self.capacity = self.target = None
        self.steps = 0
        self.awaiting_scores = False
        self.note = None


def _no_scores(method: str) -> str:
    return (f"method={method}: the previous forward delivered no attention scores. The model must run the "
            f"'scored_sdpa' or 'scored_eager' attention: call the method's apply(model) first "
            f"(kvbench.cache.attention_scores.use_scoring_attention)")


class BudgetCache(KVCache):
    """A transformers ``Cache`` of :class:`BudgetLayer` s, one per decoder layer."""

    def compress(self) -> None:
        """Every layer evicts during the forward itself; this only checks that none is still waiting for scores."""
        for layer in self.layers:
            layer.check_evicted()

    def notes(self) -> list[str]:
        return list(dict.fromkeys(layer.note for layer in self.layers if layer.note))

    def stored_length(self, layer_idx: int = 0) -> int:
        """Tokens stored per KV head in a layer."""
        return self.stored_tokens(layer_idx)

    def kept_positions(self, layer_idx: int = 0) -> torch.Tensor:
        """Logical positions [b, h, S] of the tokens a layer keeps, per KV head, ascending."""
        return self.layers[layer_idx].kept_positions()


def num_layers(config) -> int:
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    return text.num_hidden_layers
