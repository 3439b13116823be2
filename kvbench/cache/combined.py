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

import torch
from transformers.cache_utils import Cache

from kvbench.cache.accounting import tensor_nbytes
from kvbench.cache.attention_scores import SCORE_AGGS, request_scores
from kvbench.cache.h2o import H2OBudget, H2OLayer, select_kept
from kvbench.cache.minicache import (NORMS, RETENTIONS, MergedPairLayer, flatten_index, gather_rows,
                                     merged_pairs, range_threshold, restore, retained_count, slerp_merge,
                                     unflatten_index)

_NO_SCORES = ("combined cache: the previous forward delivered no attention scores. The model must run the "
              "'scored_sdpa'/'scored_eager' attention: call the method's apply(model) first "
              "(kvbench.cache.attention_scores.use_scoring_attention)")


class MergedSlots:
    """Keys (or values) of one pair: unit directions [B, h, K, d], norms of both layers [B, G, K, 1] and the
    exactly-retained states of both layers with their flat (slot, batch, row) indices (G rows: 1 or h)."""

    def __init__(self, t: float, gamma: float, retention: str, per_head: bool):
        self.t, self.gamma, self.retention, self.per_head = t, gamma, retention, per_head
        self.direction = self.norm_a = self.norm_b = None
        self.kept_idx = self.kept_a = self.kept_b = None
        self.threshold = None  # range rule: [B, G, 1], fixed by the first forward

    @property
    def length(self) -> int:
        return 0 if self.direction is None else self.direction.shape[-2]

    def restore(self, role: int, new: torch.Tensor) -> torch.Tensor:
        """Layer a's (role 0) or b's (role 1) kept past, restored, followed by its exact ``new`` states."""
        n = self.length
        if n == 0:
            return new
        norm, kept = (self.norm_a, self.kept_a) if role == 0 else (self.norm_b, self.kept_b)
        x = new.new_empty(*new.shape[:-2], n + new.shape[-2], new.shape[-1])
        restore(self.direction, norm, self.kept_idx, kept, out=x[..., :n, :])
        x[..., n:, :] = new
        return x

    def step(self, x_a: torch.Tensor, x_b: torch.Tensor, keep: torch.Tensor | None) -> None:
        """Merge the new tokens ``x_a``/``x_b`` [B, h, q, d], keep the slots ``keep`` [B, G, K] of old + new
        (``None``: all), and choose which kept new tokens are retained exactly."""
        m = slerp_merge(x_a, x_b, self.t, self.per_head)
        old = self.length
        B, h, q, d = x_a.shape
        G = m.distance.shape[1]
        cat = (lambda mine, new: new) if old == 0 else (lambda mine, new: torch.cat([mine, new], dim=-2))
        direction = cat(self.direction, m.direction)
        norm_a, norm_b = cat(self.norm_a, m.norm_a), cat(self.norm_b, m.norm_b)
        distance = torch.cat([m.distance.new_full((B, G, old), -1.0), m.distance], dim=-1)  # old: no candidates
        if keep is None:
            keep = torch.arange(old + q, device=x_a.device).expand(B, G, old + q)
        K = keep.shape[-1]
        self.direction = direction.gather(2, keep.expand(B, h, K)[..., None].expand(B, h, K, d))
        self.norm_a, self.norm_b = norm_a.gather(2, keep[..., None]), norm_b.gather(2, keep[..., None])
        distance = distance.gather(2, keep)
        # old retained tokens move to their new slot, or go with their evicted slot
        slot = torch.full((B, G, old + q), -1, dtype=torch.long, device=x_a.device)
        slot.scatter_(2, keep, torch.arange(K, device=x_a.device).expand(B, G, K))
        if old and self.kept_idx.numel():
            b, g, n = unflatten_index(self.kept_idx, B, G)
            n = slot[b, g, n]
            alive = n >= 0
            b, g, n, ka, kb = b[alive], g[alive], n[alive], self.kept_a[alive], self.kept_b[alive]
        else:
            b = g = n = torch.zeros(0, dtype=torch.long, device=x_a.device)
            ka, kb = gather_rows(x_a, b, g, n, G), gather_rows(x_b, b, g, n, G)  # empty
        # new tokens to retain, among the kept ones
        is_new = keep >= old
        if self.gamma >= 1:
            chosen = is_new
        elif self.gamma <= 0:
            chosen = torch.zeros_like(is_new)
        elif self.retention == "range":
            if self.threshold is None:
                self.threshold = range_threshold(distance, self.gamma)
            chosen = is_new & (distance > self.threshold)
        else:  # top_fraction: fill each row up to ⌈γ·K⌉ with its most distant kept new tokens
            held = torch.zeros(B, G, dtype=torch.long, device=keep.device)
            held.index_put_((b, g), torch.ones_like(b), accumulate=True)
            order = distance.argsort(dim=2, descending=True)  # old slots (-1) last
            rank = torch.empty_like(order).scatter_(2, order, torch.arange(K, device=keep.device).expand(B, G, K))
            chosen = is_new & (rank < (retained_count(self.gamma, K) - held)[..., None])
        bn, gn, nn = chosen.nonzero(as_tuple=True)
        local = keep[bn, gn, nn] - old
        self.kept_idx = torch.cat([flatten_index(b, g, n, B, G), flatten_index(bn, gn, nn, B, G)])
        self.kept_a = torch.cat([ka, gather_rows(x_a, bn, gn, local, G)])
        self.kept_b = torch.cat([kb, gather_rows(x_b, bn, gn, local, G)])

    def nbytes(self) -> int:
        return tensor_nbytes(self.direction, self.norm_a, self.norm_b, self.kept_idx, self.kept_a, self.kept_b,
                             self.threshold)


class EvictingMergedPair:
    """Layers (a, a+1) sharing one evicted, merged store; see the module docstring for the rule."""

    def __init__(self, budget: H2OBudget, score_agg: str = "sum", t: float = 0.6, gamma: float = 0.05,
                 retention: str = "top_fraction", per_head: bool = False):
        self.budget, self.score_agg = budget, score_agg
        self.settings = (t, gamma, retention, per_head)
        self.reset()

    def reset(self) -> None:
        self.keys, self.values = MergedSlots(*self.settings), MergedSlots(*self.settings)
        self.scores: torch.Tensor | None = None  # [B, G, K] float32, summed over both layers (and heads if G=1)
        self.positions: torch.Tensor | None = None  # [B, G, K] int32 logical positions
        self.seen = [0, 0]
        self.heavy = self.recent = None
        self.new: list[tuple[torch.Tensor, torch.Tensor] | None] = [None, None]  # this forward's exact tokens
        self.sums: torch.Tensor | None = None  # layer a's column sums, until layer b's arrive
        self.awaiting: int | None = None

    @property
    def length(self) -> int:
        return self.keys.length

    def update(self, role: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.awaiting is not None:
            raise RuntimeError(_NO_SCORES)
        if role == 1 and (self.new[0] is None or self.new[0][0].shape != k.shape):
            raise RuntimeError("combined cache: the second layer of a merged pair ran without the first")
        if role == 0 and self.new[0] is not None:
            raise RuntimeError("combined cache: the first layer of a merged pair ran twice without the second")
        if self.heavy is None:
            self.heavy, self.recent = self.budget.resolve(k.shape[-2])
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
        B, G, q = sums.shape[0], sums.shape[1], ka.shape[-2]
        old = self.length
        start = self.seen[1] - q
        new_pos = torch.arange(start, start + q, dtype=torch.int32, device=ka.device).expand(B, G, q)
        scores = sums if old == 0 else sums + torch.cat([self.scores, sums.new_zeros(B, G, q)], dim=-1)
        positions = new_pos if old == 0 else torch.cat([self.positions, new_pos], dim=-1)
        keep = select_kept(scores, self.heavy, self.recent) if old + q > self.heavy + self.recent else None
        self.keys.step(ka, kb, keep)
        self.values.step(va, vb, keep)
        self.scores = scores if keep is None else scores.gather(2, keep)
        self.positions = positions if keep is None else positions.gather(2, keep)

    def seq_length(self, role: int) -> int:
        return self.seen[role]

    def nbytes(self) -> int:
        pending = [x for kv in self.new if kv is not None for x in kv]
        return (self.keys.nbytes() + self.values.nbytes()
                + tensor_nbytes(self.scores, self.positions, self.sums, *pending))


class EvictingPairLayer(MergedPairLayer):
    """One model layer's view of an :class:`EvictingMergedPair`; receives the scored attention's column sums."""

    def __init__(self, pair: EvictingMergedPair, role: int):
        super().__init__(pair, role)
        self.score_agg = pair.score_agg

    def update(self, key_states, value_states, *args, **kwargs):
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        request_scores(self, keys)
        return keys, values

    def receive_scores(self, column_sums: torch.Tensor) -> None:
        self.pair.receive_scores(self.role, column_sums)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        stored = self.pair.length
        return stored + query_length, self.pair.seq_length(self.role) - stored


class CombinedCache(Cache):
    """H2O layers below ``start_layer``; evicting merged pairs from it on (an odd last layer stays H2O)."""

    def __init__(self, num_layers: int, start_layer: int, budget: H2OBudget, score_agg: str = "sum",
                 t: float = 0.6, gamma: float = 0.05, retention: str = "top_fraction", norm: str = "concat"):
        for value, valid, what in ((score_agg, SCORE_AGGS, "score_agg"), (retention, RETENTIONS, "retention"),
                                   (norm, NORMS, "norm")):
            if value not in valid:
                raise ValueError(f"{what}={value!r} is not valid (choose one of: {', '.join(valid)})")
        if not 1 <= start_layer <= num_layers - 2:
            raise ValueError(f"start_layer={start_layer} must be in [1, {num_layers - 2}] for {num_layers} layers")
        layers = [H2OLayer(budget, score_agg) for _ in range(num_layers)]
        self.pairs: list[EvictingMergedPair] = []
        for a, b in merged_pairs(num_layers, start_layer):
            pair = EvictingMergedPair(budget, score_agg, t, gamma, retention, per_head=(norm == "per_head"))
            layers[a], layers[b] = EvictingPairLayer(pair, 0), EvictingPairLayer(pair, 1)
            self.pairs.append(pair)
        super().__init__(layers=layers)

    def compress(self) -> None:
        """Enforce the budget (idempotent: every forward already evicts and merges after its attention)."""
        for layer in self.layers:
            if isinstance(layer, H2OLayer):
                layer.evict()

    def nbytes(self) -> int:
        """Every tensor held: H2O layers' keys/values/scores/positions; per pair directions, norms,
        retained states and indices, scores and positions (each pair counted once)."""
        return sum(layer.nbytes() for layer in self.layers)

    def stored_length(self, layer_idx: int = 0) -> int:
        layer = self.layers[layer_idx]
        if isinstance(layer, EvictingPairLayer):
            return layer.pair.length
        return layer.keys.shape[-2] if layer.is_initialized else 0
