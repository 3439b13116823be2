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
keeps the last R tokens plus the H best-scored among the others (:func:`select_kept`). After the
prefill forward that is the paper's end-of-prefill eviction, after a one-token step it evicts the
single lowest-scored non-recent token; evicted tokens' scores are dropped.

Logical length ≠ stored length: ``get_seq_length`` returns the number of tokens seen (new tokens get
position = tokens seen, as without eviction) and ``get_mask_sizes`` returns the stored length with the
offset ``seen − stored``, so a multi-token forward after eviction attends to every kept token plus
the causally earlier new tokens. Budget from ratios: H = ⌊heavy_ratio·P⌋, R = ⌊recent_ratio·P⌋ with
P = the number of tokens of the first forward (the prompt); the budget then stays fixed for the life
of the cache (streamed chunks, decoding), as H2O's fixed-size KV cache. If that gives H + R = 0,
R = 1.

Batch: tensors are dense over the batch, but the causal/padding mask is only exact without padding
(the evaluation protocol runs batch size 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from kvbench.cache.accounting import tensor_nbytes
from kvbench.cache.attention_scores import SCORE_AGGS, request_scores


@dataclass(frozen=True)
class H2OBudget:
    """Heavy and recent budgets, each as a ratio of the prompt length or as a token count."""

    heavy_ratio: float | None = None
    heavy_tokens: int | None = None
    recent_ratio: float | None = None
    recent_tokens: int | None = None

    def __post_init__(self):
        for ratio, count, what in ((self.heavy_ratio, self.heavy_tokens, "heavy"),
                                   (self.recent_ratio, self.recent_tokens, "recent")):
            if (ratio is None) == (count is None):
                raise ValueError(f"give exactly one of {what}_ratio and {what}_tokens")
            if count is not None and count < 0:
                raise ValueError(f"{what}_tokens={count} must be >= 0")
            if ratio is not None and not 0 <= ratio <= 1:
                raise ValueError(f"{what}_ratio={ratio} must lie in [0, 1]")

    def resolve(self, prompt_length: int) -> tuple[int, int]:
        """(H, R) in tokens for a prompt of ``prompt_length`` tokens."""
        heavy = self.heavy_tokens if self.heavy_tokens is not None else int(self.heavy_ratio * prompt_length)
        recent = self.recent_tokens if self.recent_tokens is not None else int(self.recent_ratio * prompt_length)
        if heavy + recent == 0:
            recent = 1
        return heavy, recent


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


class H2OLayer(CacheLayerMixin):
    """One layer of an :class:`H2OCache`."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, budget: H2OBudget, score_agg: str = "sum"):
        super().__init__()
        if score_agg not in SCORE_AGGS:
            raise ValueError(f"score_agg={score_agg!r} is not supported (choose one of: {', '.join(SCORE_AGGS)})")
        self.budget = budget
        self.score_agg = score_agg
        self.scores: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.seen = 0
        self.prompt_length: int | None = None
        self.heavy: int | None = None
        self.recent: int | None = None
        self.awaiting_scores = False

    # -- transformers' layer interface -------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        b, h = key_states.shape[:2]
        self.keys = key_states.new_empty(b, h, 0, key_states.shape[-1])
        self.values = value_states.new_empty(b, h, 0, value_states.shape[-1])
        self.scores = torch.zeros(b, h, 0, dtype=torch.float32, device=self.device)
        self.positions = torch.zeros(b, h, 0, dtype=torch.int32, device=self.device)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append the new tokens and return every stored key/value (attention runs over all of them)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.awaiting_scores:
            raise RuntimeError(
                "H2O cache: the previous forward delivered no attention scores. The model must run the "
                "'scored_sdpa' or 'scored_eager' attention: call kvbench.methods.build_method('h2o').apply(model) "
                "(or kvbench.cache.attention_scores.use_scoring_attention(model)) first"
            )
        b, h, n_new = key_states.shape[:3]
        if self.prompt_length is None:
            self.prompt_length = n_new
            self.heavy, self.recent = self.budget.resolve(n_new)
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self.scores = torch.cat([self.scores, self.scores.new_zeros(b, h, n_new)], dim=-1)
        new_pos = torch.arange(self.seen, self.seen + n_new, dtype=torch.int32, device=self.device)
        self.positions = torch.cat([self.positions, new_pos.expand(b, h, n_new)], dim=-1)
        self.seen += n_new
        self.awaiting_scores = True
        request_scores(self, self.keys)
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        stored = self.keys.shape[-2] if self.is_initialized else 0
        return stored + query_length, self.seen - stored

    def get_seq_length(self) -> int:
        """The logical length: tokens seen, evicted or not (positions of new tokens follow it)."""
        return self.seen

    def get_max_length(self) -> int:
        return -1

    # -- H2O ---------------------------------------------------------------------------------
    @property
    def budget_tokens(self) -> int | None:
        """H + R once the prompt length is known, else None."""
        return None if self.heavy is None else self.heavy + self.recent

    def receive_scores(self, column_sums: torch.Tensor) -> None:
        """Add this forward's attention column sums [b, h, S] and evict down to the budget."""
        if column_sums.shape != self.scores.shape:
            raise RuntimeError(f"H2O cache: scores of shape {tuple(column_sums.shape)} for a cache of "
                               f"{tuple(self.scores.shape)}")
        self.scores += column_sums
        self.awaiting_scores = False
        self.evict()

    def evict(self) -> None:
        """Keep the last R tokens and the H best-scored others, if more than H + R are stored."""
        if self.awaiting_scores:
            raise RuntimeError("H2O cache: cannot evict before the last forward's attention scores arrived "
                               "(is the model's attention 'scored_sdpa'/'scored_eager'? see H2O.apply)")
        if not self.is_initialized or self.keys.shape[-2] <= self.budget_tokens:
            return
        keep = select_kept(self.scores, self.heavy, self.recent)
        self.keys = self.keys.gather(2, keep[..., None].expand(-1, -1, -1, self.keys.shape[-1]))
        self.values = self.values.gather(2, keep[..., None].expand(-1, -1, -1, self.values.shape[-1]))
        self.scores = self.scores.gather(2, keep)
        self.positions = self.positions.gather(2, keep)

    def nbytes(self) -> int:
        return tensor_nbytes(self.keys, self.values, self.scores, self.positions)

    # -- housekeeping --------------------------------------------------------------------------
    def reset(self) -> None:
        self.keys = self.values = self.scores = self.positions = None
        self.is_initialized = False
        self.seen = 0
        self.prompt_length = self.heavy = self.recent = None
        self.awaiting_scores = False

    def _select_batch(self, fn) -> None:
        if self.is_initialized:
            self.keys, self.values = fn(self.keys), fn(self.values)
            self.scores, self.positions = fn(self.scores), fn(self.positions)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._select_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._select_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._select_batch(lambda t: t[indices, ...])

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("an H2O cache cannot be cropped: evicted tokens are gone")


class H2OCache(Cache):
    """A transformers ``Cache`` of :class:`H2OLayer` s, one per decoder layer."""

    def __init__(self, num_layers: int, budget: H2OBudget, score_agg: str = "sum"):
        super().__init__(layers=[H2OLayer(budget, score_agg) for _ in range(num_layers)])
        self.budget = budget
        self.score_agg = score_agg

    @classmethod
    def for_model(cls, config, budget: H2OBudget, score_agg: str = "sum") -> "H2OCache":
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        return cls(text.num_hidden_layers, budget, score_agg)

    def compress(self) -> None:
        """Enforce the budget now (idempotent: every forward already evicts after its attention)."""
        for layer in self.layers:
            layer.evict()

    def nbytes(self) -> int:
        """Bytes of every tensor held: keys, values, scores and positions of all layers."""
        return sum(layer.nbytes() for layer in self.layers)

    def stored_length(self, layer_idx: int = 0) -> int:
        """Tokens stored per KV head in a layer (≤ H + R after any forward)."""
        layer = self.layers[layer_idx]
        return layer.keys.shape[-2] if layer.is_initialized else 0

    def kept_positions(self, layer_idx: int = 0) -> torch.Tensor:
        """Logical positions [b, h, S] of the tokens a layer keeps, per KV head."""
        return self.layers[layer_idx].positions
