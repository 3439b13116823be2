"""A cache that evicts tokens (H2O) and merges adjacent layers (MiniCache) at once (METHODS.md §5).

Layers below ``start_layer`` (and an unpaired last layer) are plain :class:`~kvbench.cache.h2o.H2OLayer` s:
each (layer, KV head) keeps its own heavy hitters + recent tokens. From ``start_layer`` on, layers
(S, S+1), (S+2, S+3), ... share one :class:`EvictingMergedPair`: a MiniCache merged pair whose slots are
evicted H2O-style.

**Rule: token sets agree wherever vectors are merged.** A merged vector carries one token of *both* layers
of the pair (and, with ``norm="concat"``, of *all* KV heads at once: one norm per token, as in the paper).
So the unit of eviction must contain the unit of merging:

* ``norm="per_head"``: each (pair, KV head) keeps one token set, chosen from the sum of the two layers'
  scores for that head;
* ``norm="concat"``: each pair keeps one token set for all its KV heads, chosen from the scores summed over
  the two layers and all KV heads.

Scores of a merged slot accumulate the same way (attention each layer's queries give the token, summed).
Budget, recent window and selection are H2O's (:class:`~kvbench.cache.h2o.H2OBudget`,
:func:`~kvbench.cache.h2o.select_kept`): keep the last R slots and the H best-scored others.

**Order: evict, then merge the kept tokens.** After each forward, once the pair's upper layer has delivered
its attention scores: the new tokens of both layers are merged (SLERP, per token; cheap and independent of
the other tokens), the pair's slots (old merged + new) are cut down to the kept set, and only then are the
exactly-retained tokens chosen among the *kept* new ones. With ``retention="top_fraction"`` a row holds
⌈γ·K⌉ retained tokens for K kept slots; an evicted retained token frees its place for a new one (at the end
of prefill: the ⌈γ·K⌉ kept tokens whose layers differ most). With ``range`` the row's threshold is fixed
from the kept tokens of the first forward. Hence memory ≈ MiniCache's ratio applied to H2O's kept tokens.

Attention: the lower layer attends over its restored kept past + its exact new tokens (which wait for the
upper layer), the upper layer likewise; prefill attention is exact. Positions are logical (tokens seen),
``get_mask_sizes`` gives the stored length and the offset, as in :mod:`kvbench.cache.h2o`; every layer stores
the same number of slots, so one mask serves all layers. With γ = 1 and H + R ≥ N this is ``full``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvbench.cache.attention_scores import request_scores
from kvbench.cache.base import KVCache, TokenBook, tensor_nbytes
from kvbench.cache.h2o import H2OBudget, H2OLayer, select_kept
from kvbench.cache.merging import MergedStore
from kvbench.cache.minicache import MergedPairLayer, merged_pairs

_NO_SCORES = ("combined cache: the previous forward delivered no attention scores. The model must run the "
              "'scored_sdpa'/'scored_eager' attention: call the method's apply(model) first "
              "(kvbench.cache.attention_scores.use_scoring_attention)")


@dataclass(frozen=True)
class Eviction:
    """What the ``tokens`` component supplies: H2O's budget and how a KV head's query heads combine."""

    budget: H2OBudget
    group_reduction: str = "sum"


@dataclass(frozen=True)
class Merging:
    """What the ``layers`` component supplies: MiniCache's start layer and merge settings."""

    start_layer: int
    t: float = 0.6
    gamma: float = 0.05
    retention: str = "top_fraction"
    norm: str = "concat"


class EvictingMergedPair:
    """Layers (a, a+1) sharing one evicted, merged store; see the module docstring for the rule."""

    def __init__(self, eviction: Eviction, merging: Merging):
        self.eviction, self.merging = eviction, merging
        self.group_reduction = eviction.group_reduction
        self.reset()

    def reset(self) -> None:
        m = self.merging
        settings = (m.t, m.gamma, m.retention, m.norm == "per_head")
        self.keys, self.values = MergedStore(*settings), MergedStore(*settings)
        self.book = TokenBook(with_scores=True)  # rows: 1 (concat) or h (per head); scores summed over both layers
        self.seen = [0, 0]
        self.heavy = self.recent = None
        self.new: list[tuple[torch.Tensor, torch.Tensor] | None] = [None, None]  # this forward's exact tokens
        self.sums: torch.Tensor | None = None  # layer a's column sums, until layer b's arrive
        self.awaiting: int | None = None

    @property
    def length(self) -> int:
        return self.keys.length

    @property
    def positions(self) -> torch.Tensor | None:
        return self.book.positions

    def update(self, role: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.awaiting is not None:
            raise RuntimeError(_NO_SCORES)
        if role == 1 and (self.new[0] is None or self.new[0][0].shape != k.shape):
            raise RuntimeError("combined cache: the second layer of a merged pair ran without the first")
        if role == 0 and self.new[0] is not None:
            raise RuntimeError("combined cache: the first layer of a merged pair ran twice without the second")
        if self.heavy is None:
            self.heavy, self.recent = self.eviction.budget.resolve(k.shape[-2])
        self.new[role] = (k, v)
        self.seen[role] += k.shape[-2]
        self.awaiting = role
        return self.keys.restore(role, k), self.values.restore(role, v)

    def receive_scores(self, role: int, column_sums: torch.Tensor) -> None:
        """Attention column sums [B, h, K + q] of one layer; after the upper layer's: evict and merge."""
        if role != self.awaiting:
            raise RuntimeError(f"combined cache: scores for layer role {role}, expected {self.awaiting}")
        self.awaiting = None
        if role == 0:
            self.sums = column_sums
            return
        (ka, va), (kb, vb) = self.new
        sums = self.sums + column_sums
        self.new, self.sums = [None, None], None
        if not self.keys.per_head:
            sums = sums.sum(dim=1, keepdim=True)
        self.book.append(sums.shape[0], sums.shape[1], ka.shape[-2], ka.device)
        self.book.add_scores(sums)
        over = self.book.length > self.heavy + self.recent
        keep = select_kept(self.book.scores, self.heavy, self.recent) if over else None
        self.keys.step(ka, kb, keep)
        self.values.step(va, vb, keep)
        if keep is not None:
            self.book.keep(keep)

    def seq_length(self, role: int) -> int:
        return self.seen[role]

    def stored_tokens(self, role: int) -> int:
        return self.length

    def nbytes(self) -> int:
        pending = [x for kv in self.new if kv is not None for x in kv]
        return self.keys.nbytes() + self.values.nbytes() + self.book.nbytes() + tensor_nbytes(self.sums, *pending)


class EvictingPairLayer(MergedPairLayer):
    """One model layer's view of an :class:`EvictingMergedPair`; receives the scored attention's column sums."""

    def __init__(self, pair: EvictingMergedPair, role: int):
        super().__init__(pair, role)
        self.group_reduction = pair.group_reduction

    def update(self, key_states, value_states, *args, **kwargs):
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        request_scores(self, keys)
        return keys, values

    def receive_scores(self, column_sums: torch.Tensor) -> None:
        self.pair.receive_scores(self.role, column_sums)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        stored = self.pair.length
        return stored + query_length, self.pair.seq_length(self.role) - stored


class CombinedCache(KVCache):
    """H2O layers below ``merging.start_layer``; evicting merged pairs from it on (an odd last layer stays H2O)."""

    def __init__(self, num_layers: int, eviction: Eviction, merging: Merging):
        layers = [H2OLayer(eviction.budget, eviction.group_reduction) for _ in range(num_layers)]
        self.pairs: list[EvictingMergedPair] = []
        for a, b in merged_pairs(num_layers, merging.start_layer):
            pair = EvictingMergedPair(eviction, merging)
            layers[a], layers[b] = EvictingPairLayer(pair, 0), EvictingPairLayer(pair, 1)
            self.pairs.append(pair)
        super().__init__(layers=layers)

    def compress(self) -> None:
        """Enforce the budget (idempotent: every forward already evicts and merges after its attention)."""
        for layer in self.layers:
            if isinstance(layer, H2OLayer):
                layer.evict()

    def stored_length(self, layer_idx: int = 0) -> int:
        return self.stored_tokens(layer_idx)
