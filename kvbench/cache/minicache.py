"""MiniCache (Liu et al. 2024): merge the KV states of adjacent layers into one direction + two norms.

Pure functions first (reusable by ``combined``), then the cache that really stores merged pairs.

Shapes: KV states are ``[batch, kv_heads, tokens, head_dim]``. ``per_head=False`` treats a token's
states over all KV heads as one vector of size ``h*d`` (the paper's choice: one norm per token and
layer); ``per_head=True`` gives every (head, token) its own norm, direction and retention decision.
A "row" is what owns a norm: ``G = 1`` row per batch element (concat) or ``G = h`` (per head).

Merge of one token, Eq. 3-5 of MiniCache (METHODS.md §4)::

    r_a, r_b = |x_a|, |x_b|;   u_a, u_b = x_a / r_a, x_b / r_b;   Ω = arccos(u_a·u_b)
    e = sin((1-t)Ω)/sin Ω · u_a + sin(tΩ)/sin Ω · u_b      (linear interpolation when sin Ω ≈ 0)
    x̂_a = e · r_a / |e|,   x̂_b = e · r_b / |e|;            distance d = Ω / π ∈ [0, 1]

We store the unit direction ``e/|e|`` (model dtype), so restoring is one multiply.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer

from kvbench.cache.accounting import tensor_nbytes

RETENTIONS = ("top_fraction", "range")
NORMS = ("concat", "per_head")
_SIN_EPS = 1e-6
_TINY = 1e-12


class Merged(NamedTuple):
    """Result of :func:`slerp_merge`."""

    direction: torch.Tensor  # [B, h, N, d] unit shared direction, dtype of the inputs
    norm_a: torch.Tensor  # [B, G, N, 1] magnitudes of layer a (dtype of the inputs)
    norm_b: torch.Tensor  # [B, G, N, 1] magnitudes of layer b
    distance: torch.Tensor  # [B, G, N] float32 angular distance Ω/π in [0, 1]


def _dims(per_head: bool) -> tuple[int, ...]:
    return (-1,) if per_head else (1, -1)


def slerp_merge(x_a: torch.Tensor, x_b: torch.Tensor, t: float = 0.6, per_head: bool = False) -> Merged:
    """Merge two layers' states token by token (SLERP towards ``x_b`` by ``t``), computed in float32."""
    if x_a.shape != x_b.shape:
        raise ValueError(f"cannot merge states of shapes {tuple(x_a.shape)} and {tuple(x_b.shape)}")
    dims = _dims(per_head)
    xa, xb = x_a.float(), x_b.float()
    ra = xa.square().sum(dims, keepdim=True).sqrt()
    rb = xb.square().sum(dims, keepdim=True).sqrt()
    ua, ub = xa / ra.clamp_min(_TINY), xb / rb.clamp_min(_TINY)
    # Ω = arccos(u_a·u_b), computed as 2·atan2(|u_a − u_b|, |u_a + u_b|): exact near 0 and π, where arccos is not
    omega = 2 * torch.atan2((ua - ub).square().sum(dims, keepdim=True).sqrt(),
                            (ua + ub).square().sum(dims, keepdim=True).sqrt())
    sin = torch.sin(omega)
    near = sin.abs() < _SIN_EPS
    safe = torch.where(near, torch.ones_like(sin), sin)
    wa = torch.where(near, torch.full_like(sin, 1.0 - t), torch.sin((1.0 - t) * omega) / safe)
    wb = torch.where(near, torch.full_like(sin, t), torch.sin(t * omega) / safe)
    e = wa * ua + wb * ub
    e = e / e.square().sum(dims, keepdim=True).sqrt().clamp_min(_TINY)
    dtype = x_a.dtype
    return Merged(e.to(dtype), ra.to(dtype), rb.to(dtype), (omega / math.pi).squeeze(-1))


def restore(direction: torch.Tensor, norm: torch.Tensor, kept_idx: torch.Tensor | None = None,
            kept: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """One layer's states from the shared unit direction and its norms, with retained tokens put back exactly
    (written into ``out`` if given, e.g. the first N slots of the tensor attention will read)."""
    x = torch.mul(direction, norm, out=out) if out is not None else direction * norm
    if kept_idx is not None and kept_idx.numel():
        b, g, n = unflatten_index(kept_idx, x.shape[0], norm.shape[1])
        if norm.shape[1] == 1:
            x[b, :, n, :] = kept
        else:
            x[b, g, n, :] = kept
    return x


def flatten_index(b: torch.Tensor, g: torch.Tensor, n: torch.Tensor, batch: int, groups: int) -> torch.Tensor:
    """Token-major flat index (int32) of rows ``(b, g)`` at token ``n``: stays valid when tokens are appended."""
    return ((n * batch + b) * groups + g).to(torch.int32)


def unflatten_index(idx: torch.Tensor, batch: int, groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    idx = idx.long()
    g, bn = idx % groups, idx // groups
    return bn % batch, g, bn // batch


def gather_rows(x: torch.Tensor, b: torch.Tensor, g: torch.Tensor, n: torch.Tensor, groups: int) -> torch.Tensor:
    """The exact states of the selected (row, token)s: ``[M, h, d]`` (concat) or ``[M, d]`` (per head)."""
    return x[b, :, n, :] if groups == 1 else x[b, g, n, :]


def retained_count(gamma: float, n_tokens: int) -> int:
    """⌈γ·N⌉, robust to float noise (0.07·100 must give 7, not 8)."""
    return min(n_tokens, math.ceil(round(gamma * n_tokens, 6)))


def range_threshold(distance: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-row threshold of the ``range`` rule: keep d > d_max − γ·(d_max − d_min) (the top γ of the range;
    a row whose distances are all equal keeps nothing)."""
    d_max, d_min = distance.amax(-1, keepdim=True), distance.amin(-1, keepdim=True)
    return d_max - gamma * (d_max - d_min)


def select_retained(distance: torch.Tensor, retention: str, gamma: float, n_before: int,
                    threshold: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which of ``q`` newly merged tokens (``distance``: ``[B, G, q]``) to keep exactly: ``(b, g, n_local)``.

    ``top_fraction``: the row keeps ⌈γ·n⌉ tokens in all after these ``n = n_before + q``; the extra slots go to
    the new tokens with the largest distance (at the end of prefill: the top ⌈γN⌉ of the context).
    ``range``: tokens above the row's ``threshold`` (fixed from the context, see :func:`range_threshold`).
    """
    B, G, q = distance.shape
    empty = distance.new_zeros(0, dtype=torch.long)
    if gamma <= 0 or q == 0:
        return empty, empty, empty
    if gamma >= 1:  # every token kept exactly, whatever the rule (γ = 1 reproduces full)
        return torch.ones_like(distance, dtype=torch.bool).nonzero(as_tuple=True)
    if retention == "top_fraction":
        k = retained_count(gamma, n_before + q) - retained_count(gamma, n_before)
        if k <= 0:
            return empty, empty, empty
        n = distance.topk(k, dim=-1).indices.reshape(-1)
        b = torch.arange(B, device=distance.device).repeat_interleave(G * k)
        g = torch.arange(G, device=distance.device).repeat_interleave(k).repeat(B)
        return b, g, n
    if retention == "range":
        return (distance > threshold).nonzero(as_tuple=True)
    raise ValueError(f"retention={retention!r} is not valid (choose one of: {', '.join(RETENTIONS)})")


class MergedStates:
    """Keys (or values) of one merged layer pair: direction, both norms, retained tokens of both layers."""

    def __init__(self, t: float, gamma: float, retention: str, per_head: bool):
        self.t, self.gamma, self.retention, self.per_head = t, gamma, retention, per_head
        self.direction = self.norm_a = self.norm_b = None
        self.kept_idx = self.kept_a = self.kept_b = None
        self.threshold = None  # range rule only: [B, G, 1] float32

    @property
    def length(self) -> int:
        return 0 if self.direction is None else self.direction.shape[-2]

    def append(self, x_a: torch.Tensor, x_b: torch.Tensor) -> None:
        """Merge ``q`` new tokens of both layers and append them (retention as in :func:`select_retained`)."""
        m = slerp_merge(x_a, x_b, self.t, self.per_head)
        B, G = m.distance.shape[:2]
        if self.retention == "range" and self.threshold is None:
            self.threshold = range_threshold(m.distance, self.gamma)
        b, g, n = select_retained(m.distance, self.retention, self.gamma, self.length, self.threshold)
        idx = flatten_index(b, g, n + self.length, B, G)
        ka, kb = gather_rows(x_a, b, g, n, G), gather_rows(x_b, b, g, n, G)
        if self.direction is None:
            self.direction, self.norm_a, self.norm_b = m.direction, m.norm_a, m.norm_b
            self.kept_idx, self.kept_a, self.kept_b = idx, ka, kb
        else:
            self.direction = torch.cat([self.direction, m.direction], dim=-2)
            self.norm_a = torch.cat([self.norm_a, m.norm_a], dim=-2)
            self.norm_b = torch.cat([self.norm_b, m.norm_b], dim=-2)
            self.kept_idx = torch.cat([self.kept_idx, idx])
            self.kept_a = torch.cat([self.kept_a, ka])
            self.kept_b = torch.cat([self.kept_b, kb])

    def restore(self, role: int, new: torch.Tensor | None = None) -> torch.Tensor:
        """Layer a's (``role=0``) or layer b's (``role=1``) states, a fresh tensor, followed by ``new`` if given."""
        norm, kept = (self.norm_a, self.kept_a) if role == 0 else (self.norm_b, self.kept_b)
        if new is None:
            return restore(self.direction, norm, self.kept_idx, kept)
        n = self.length
        shape = (*self.direction.shape[:-2], n + new.shape[-2], self.direction.shape[-1])
        x = torch.empty(shape, dtype=self.direction.dtype, device=self.direction.device)
        restore(self.direction, norm, self.kept_idx, kept, out=x[..., :n, :])
        x[..., n:, :] = new
        return x

    def nbytes(self) -> int:
        return tensor_nbytes(self.direction, self.norm_a, self.norm_b, self.kept_idx, self.kept_a, self.kept_b,
                             self.threshold)


class MergedPair:
    """The shared storage of layers (a, a+1). Dense until merged; merged at ``compress()`` or lazily.

    Lifecycle: during the first forward both layers keep full K/V (layer a's is needed until b has run).
    ``compress()`` -- or, if nobody calls it, layer a's first update of a later forward -- merges them and
    frees both. Afterwards layer a attends over its restored past + its exact new tokens, which wait until
    layer b has run; layer b's update restores its past, then merges both layers' new tokens and appends.
    """

    def __init__(self, t: float, gamma: float, retention: str, per_head: bool):
        self.settings = (t, gamma, retention, per_head)
        self.reset()

    def reset(self) -> None:
        t, gamma, retention, per_head = self.settings
        self.dense: list[tuple[torch.Tensor, torch.Tensor] | None] = [None, None]
        self.keys = MergedStates(t, gamma, retention, per_head)
        self.values = MergedStates(t, gamma, retention, per_head)
        self.merged = False
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None  # layer a's new tokens awaiting layer b

    def compress(self) -> None:
        if self.merged or self.dense[0] is None or self.dense[1] is None:
            return
        (ka, va), (kb, vb) = self.dense
        if ka.shape[-2] != kb.shape[-2]:
            raise RuntimeError(f"cannot merge layers holding {ka.shape[-2]} and {kb.shape[-2]} tokens "
                               "(compress() called in the middle of a forward?)")
        self.keys.append(ka, kb)
        self.values.append(va, vb)
        self.dense = [None, None]
        self.merged = True

    def update(self, role: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if role == 0 and not self.merged and self.dense[1] is not None:
            self.compress()  # a new forward after an uncompressed prefill (e.g. generate): merge now
        if not self.merged:
            old = self.dense[role]
            self.dense[role] = (k, v) if old is None else (torch.cat([old[0], k], -2), torch.cat([old[1], v], -2))
            return self.dense[role]
        keys, values = self.keys.restore(role, k), self.values.restore(role, v)
        if role == 0:
            self.pending = (k, v)
        else:
            if self.pending is None or self.pending[0].shape != k.shape:
                raise RuntimeError("MiniCache: the second layer of a merged pair ran without the first")
            self.keys.append(self.pending[0], k)
            self.values.append(self.pending[1], v)
            self.pending = None
        return keys, values

    def seq_length(self, role: int) -> int:
        if not self.merged:
            return 0 if self.dense[role] is None else self.dense[role][0].shape[-2]
        pending = self.pending[0].shape[-2] if (role == 0 and self.pending is not None) else 0
        return self.keys.length + pending

    def nbytes(self) -> int:
        dense = [x for kv in self.dense if kv is not None for x in kv]
        return self.keys.nbytes() + self.values.nbytes() + tensor_nbytes(*dense, *(self.pending or ()))


class MergedPairLayer(CacheLayerMixin):
    """One model layer's view of a :class:`MergedPair` (``role`` 0 = lower layer a, 1 = upper layer b)."""

    is_sliding = False
    is_croppable = False

    def __init__(self, pair: MergedPair, role: int):
        super().__init__()
        self.pair, self.role = pair, role

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        return self.pair.update(self.role, key_states, value_states)

    def get_seq_length(self) -> int:
        return self.pair.seq_length(self.role)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def nbytes(self) -> int:
        """The pair's bytes are counted once, on its lower layer."""
        return self.pair.nbytes() if self.role == 0 else 0

    def offload(self):  # the merged states stay where they are
        pass

    def prefetch(self):
        pass

    def reset(self) -> None:
        if self.role == 0:
            self.pair.reset()
        self.is_initialized = False

    def _unsupported(self, what: str):
        raise NotImplementedError(f"MiniCache does not support {what} (batch size changes or rollback)")

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            self._unsupported("crop")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._unsupported("beam search")

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0 and repeats != 1:
            self._unsupported("batch_repeat_interleave")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            self._unsupported("batch_select_indices")


def merged_pairs(num_layers: int, start_layer: int) -> list[tuple[int, int]]:
    """Adjacent pairs (S, S+1), (S+2, S+3), ... within ``num_layers``; an odd last layer stays unmerged."""
    return [(a, a + 1) for a in range(start_layer, num_layers - 1, 2)]


class MergedPairCache(Cache):
    """Plain dynamic layers below ``start_layer`` (and an unpaired last layer); merged pairs from it onward."""

    def __init__(self, num_layers: int, start_layer: int, t: float = 0.6, gamma: float = 0.05,
                 retention: str = "top_fraction", norm: str = "concat"):
        if retention not in RETENTIONS:
            raise ValueError(f"retention={retention!r} is not valid (choose one of: {', '.join(RETENTIONS)})")
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r} is not valid (choose one of: {', '.join(NORMS)})")
        if not 1 <= start_layer <= num_layers - 2:
            raise ValueError(f"start_layer={start_layer} must be in [1, {num_layers - 2}] for {num_layers} layers")
        layers: list[CacheLayerMixin] = [DynamicLayer() for _ in range(num_layers)]
        self.pairs: list[MergedPair] = []
        for a, b in merged_pairs(num_layers, start_layer):
            pair = MergedPair(t, gamma, retention, per_head=(norm == "per_head"))
            layers[a], layers[b] = MergedPairLayer(pair, 0), MergedPairLayer(pair, 1)
            self.pairs.append(pair)
        super().__init__(layers=layers)

    def compress(self) -> None:
        """End of prefill: merge every pair's dense states (idempotent)."""
        for pair in self.pairs:
            pair.compress()

    def nbytes(self) -> int:
        """Every tensor held: dynamic layers' K/V, and per pair directions, norms, retained states, indices."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, MergedPairLayer):
                total += layer.nbytes()
            else:
                total += tensor_nbytes(layer.keys, layer.values)
        return total
