"""H2O cache (Zhang et al. 2023, "H2O: Heavy-Hitter Oracle"): each (layer, KV head) keeps only
its heavy hitters and its most recent tokens, for real (METHODS.md §3).

Per layer the cache stores, for the kept tokens of every KV head (all heads keep the same number,
so the tensors stay dense):

* ``keys`` / ``values`` [b, h, S, d] -- gathered per head, still rotated at their original positions;
* ``scores`` [b, h, S] float32 -- attention each token has received so far (GQA: aggregated over the
  query heads sharing the KV head, see :func:`~kvbench.cache.attention_scores.aggregate_heads`);
* ``positions`` [b, h, S] int32 -- each kept token's logical position, sorted ascending.

Each forward: ``update`` appends the new tokens (score 0); the model's attention (switched to
``scored_<impl>`` by :func:`~kvbench.cache.attention_scores.use_scoring_attention`) adds the new
queries' attention probabilities to ``scores``; then, if more than H + R tokens are stored, the layer
keeps the last R tokens (by logical position) plus the H best-scored among the others
(:meth:`H2OLayer.priority`). After the prefill forward that is the paper's end-of-prefill eviction
(a gather); after a one-token step it evicts the single lowest-scored non-recent token in place: the
new token takes its slot (:meth:`~kvbench.cache.base.EvictingLayer.evict_lowest`), so slots are not
in logical order and the recent window is read from ``positions``. Evicted tokens' scores are dropped.
With H = 0 (``h2o_local``, a pure recency window) no decision reads a score, so none is computed: the
layer evicts the oldest token after the forward's attention, like ``streaming_llm`` without sinks.

Logical length ≠ stored length: ``get_seq_length`` returns the number of tokens seen (new tokens get
position = tokens seen, as without eviction) and ``get_mask_sizes`` returns the stored length with the
offset ``seen − stored``, so a multi-token forward after eviction attends to every kept token plus
the causally earlier new tokens. Budget from ratios: H = ⌊heavy_ratio·P⌋, R = ⌊recent_ratio·P⌋ with
P = the number of tokens of the first forward (the prompt); the budget then stays fixed for the life
of the cache (streamed chunks, decoding), as H2O's fixed-size KV cache. If that gives H + R = 0,
R = 1.

The seen/stored/positions bookkeeping is the evicting-layer base's (:mod:`kvbench.cache.base`); this
module only decides which tokens to keep. Batch: tensors are dense over the batch; masks are exact for
equal-length prompts (no padding).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch

from kvbench.cache.attention_scores import request_scores
from kvbench.cache.base import EvictingLayer, KVCache


@dataclass(frozen=True)
class H2OBudget:
    """Heavy and recent budgets, each as a ratio of the prompt length or as a token count (exactly one of
    each pair; the method dataclass validates the values)."""

    heavy_ratio: float | None = None
    heavy_tokens: int | None = None
    recent_ratio: float | None = None
    recent_tokens: int | None = None

    def resolve(self, prompt_length: int) -> tuple[int, int]:
        """(H, R) in tokens for a prompt of ``prompt_length`` tokens: ⌊ratio·P⌋ or the count."""
        heavy = self.heavy_tokens if self.heavy_tokens is not None else ratio_floor(self.heavy_ratio, prompt_length)
        recent = self.recent_tokens if self.recent_tokens is not None else ratio_floor(self.recent_ratio, prompt_length)
        if heavy + recent == 0:
            recent = 1
        return heavy, recent


def ratio_floor(ratio: float, n: int) -> int:
    """⌊ratio·n⌋ exactly for the decimal ratio the user typed (0.35·100 is 35, not 34.999… → 34)."""
    return int(Fraction(str(ratio)) * n)


def select_kept(scores: torch.Tensor, heavy: int, recent: int) -> torch.Tensor:
    """Indices [b, h, heavy+recent] (ascending) of the tokens to keep among the S stored ones.

    ``scores`` [b, h, S] with tokens in logical order and S > heavy + recent: the last ``recent``
    tokens, plus the ``heavy`` highest-scored among the first S − recent.
    """
    n = scores.shape[-1]
    recent_idx = torch.arange(n - recent, n, device=scores.device).expand(*scores.shape[:-1], recent)
    if heavy == 0:
        return recent_idx
    heavy_idx = torch.topk(scores[..., : n - recent], heavy, dim=-1, sorted=False).indices
    heavy_idx, _ = torch.sort(heavy_idx, dim=-1)
    return torch.cat([heavy_idx, recent_idx], dim=-1)


def newest(positions: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask ``[..., S]``: the ``k`` tokens with the largest logical positions of each row."""
    mask = torch.zeros(positions.shape, dtype=torch.bool, device=positions.device)
    if k > 0:
        mask.scatter_(-1, torch.topk(positions, min(k, positions.shape[-1]), dim=-1).indices, True)
    return mask


def keep_newest_and_top(positions: torch.Tensor, scores: torch.Tensor, newest_k: int, total: int) -> torch.Tensor:
    """Slot indices ``[..., total]`` (ascending) to keep: the ``newest_k`` newest tokens by logical position, plus
    the ``total − newest_k`` highest ``scores`` among the others (H2O's recent + heavy, SnapKV's window + top)."""
    ranked = scores.to(torch.float32).masked_fill(newest(positions, newest_k), float("inf"))
    return torch.sort(torch.topk(ranked, total, dim=-1, sorted=False).indices, dim=-1).values


def decode_split(target: int, heavy: int, recent: int) -> tuple[int, int]:
    """(heavy, recent) for a decode target: the target split in the prefill budget's proportion (H2O's default
    1:1), at least one recent token when the prefill budget has any."""
    if recent == 0:
        return target, 0
    kept_recent = min(target, max(1, target * recent // (heavy + recent)))
    return target - kept_recent, kept_recent


class H2OLayer(EvictingLayer):
    """One layer of an :class:`H2OCache`: keeps heavy hitters + recent tokens per KV head.

    With a decode budget (:class:`~kvbench.cache.decode_budget.DecodeBudget`) the forwards after the prefill are
    decode steps: scores accumulate at every step (the paper's rule), and on the due steps a layer over the decode
    target keeps the newest tokens (by logical position) plus the best-scored others, split by
    :func:`decode_split`. Without one the prefill budget holds at every step."""

    def __init__(self, budget: H2OBudget, group_reduction: str = "sum", decode=None):
        super().__init__(with_scores=True)
        self.budget = budget
        self.group_reduction = group_reduction
        self.decode = decode
        self.heavy: int | None = None
        self.recent: int | None = None
        self.steps = 0
        self.due = False
        self.awaiting_scores = False

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append the new tokens and return every stored key/value (attention runs over all of them)."""
        if self.awaiting_scores:
            raise RuntimeError(
                "H2O cache: the previous forward delivered no attention scores. The model must run the "
                "'scored_sdpa' or 'scored_eager' attention: call kvbench.methods.build_method('h2o').apply(model) "
                "(or kvbench.cache.attention_scores.use_scoring_attention(model)) first"
            )
        if self.heavy is None:
            self.heavy, self.recent = self.budget.resolve(key_states.shape[-2])
        elif self.decode is not None:
            self.steps += 1
            self.due = self.decode.due(self.steps)
        keys, values = super().update(key_states, value_states)
        if self.heavy == 0:  # a recency window: nothing reads a score, so none is computed
            self.evict(deferred=True)
        else:
            self.awaiting_scores = True
            request_scores(self, keys)
        return keys, values

    @property
    def budget_tokens(self) -> int | None:
        """H + R once the prompt length is known, else None."""
        return None if self.heavy is None else self.heavy + self.recent

    def receive_scores(self, column_sums: torch.Tensor) -> None:
        """Add this forward's attention column sums [b, h, S] and evict down to the budget."""
        self.book.add_scores(column_sums)
        self.awaiting_scores = False
        self.evict()

    def evict(self, deferred: bool = False) -> None:
        """Keep the last R tokens and the H best-scored others, if more than H + R are stored (``deferred``: the
        forward's attention is still to run on the stored slots)."""
        if self.awaiting_scores:
            raise RuntimeError("H2O cache: cannot evict before the last forward's attention scores arrived "
                               "(is the model's attention 'scored_sdpa'/'scored_eager'? see H2O.apply)")
        if not self.is_initialized:
            return
        stored = self.stored_tokens()
        if self.steps > 0:  # a decode step under a decode budget: the target, split as the prefill budget
            target = self.decode.target(self.book.seen)
            if self.due and stored > target:
                self.evict_lowest(self.priority(*decode_split(target, self.heavy, self.recent)), stored - target,
                                  deferred)
            self.due = False
        elif stored > self.budget_tokens:
            self.evict_lowest(self.priority(self.heavy, self.recent), stored - self.budget_tokens, deferred)

    def priority(self, heavy: int, recent: int) -> torch.Tensor:
        """Per slot: the ``recent`` most recent tokens (by logical position) above everything, the others by
        accumulated score (``heavy`` = 0: by position alone, the recency window). Keeping the top ``heavy + recent``
        is :func:`select_kept`'s rule in any slot order."""
        positions = self.book.positions
        if heavy == 0:
            return positions
        is_recent = positions >= self.book.seen - recent
        return torch.where(is_recent, torch.finfo(torch.float32).max, self.book.scores)

    def reset(self) -> None:
        super().reset()
        self.heavy = self.recent = None
        self.steps = 0
        self.due = False
        self.awaiting_scores = False


class H2OCache(KVCache):
    """A transformers ``Cache`` of :class:`H2OLayer` s, one per decoder layer."""

    def __init__(self, num_layers: int, budget: H2OBudget, group_reduction: str = "sum", decode=None):
        super().__init__(layers=[H2OLayer(budget, group_reduction, decode) for _ in range(num_layers)])
        self.budget = budget
        self.group_reduction = group_reduction

    @classmethod
    def for_model(cls, config, budget: H2OBudget, group_reduction: str = "sum", decode=None) -> "H2OCache":
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        return cls(text.num_hidden_layers, budget, group_reduction, decode)

    def compress(self) -> None:
        """Enforce the budget now (idempotent: every forward already evicts after its attention)."""
        for layer in self.layers:
            layer.evict()

    def stored_length(self, layer_idx: int = 0) -> int:
        """Tokens stored per KV head in a layer (≤ H + R after any forward)."""
        return self.stored_tokens(layer_idx)

    def kept_positions(self, layer_idx: int = 0) -> torch.Tensor:
        """Logical positions [b, h, S] of the tokens a layer keeps, per KV head, ascending."""
        return self.layers[layer_idx].kept_positions()
