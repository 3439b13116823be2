"""Merging two layers' KV states into one direction + two norms (MiniCache, Liu et al. 2024), and the store
that holds merged states. Shared by ``minicache`` (:mod:`kvbench.cache.minicache`) and ``combined``
(:mod:`kvbench.cache.combined`), which adds eviction through the store's ``keep`` argument.

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
from fractions import Fraction
from typing import NamedTuple

import torch

from kvbench.cache.base import tensor_nbytes

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
    """⌈γ·N⌉ exactly for the decimal γ the user typed (0.07·100 is 7, not 8 from 7.000000000000001)."""
    return min(n_tokens, math.ceil(Fraction(str(gamma)) * n_tokens))


def range_threshold(distance: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-row threshold of the ``range`` rule: keep d > d_max − γ·(d_max − d_min) (the top γ of the range;
    a row whose distances are all equal keeps nothing)."""
    d_max, d_min = distance.amax(-1, keepdim=True), distance.amin(-1, keepdim=True)
    return d_max - gamma * (d_max - d_min)


def select_retained(distance: torch.Tensor, candidate: torch.Tensor, retention: str, gamma: float,
                    held: torch.Tensor | int = 0, threshold: torch.Tensor | None = None) -> torch.Tensor:
    """Which of the ``K`` slots of each row to keep exactly: a bool mask ``[B, G, K]`` within ``candidate``
    (the newly merged slots), from their angular ``distance`` ``[B, G, K]``.

    ``top_fraction``: a row keeps ⌈γ·K⌉ exact tokens in all; it already holds ``held`` (``[B, G]`` or an int),
    so the free places go to the candidates with the largest distance (at the end of prefill: the top
    ⌈γN⌉ of the context; while decoding, a new token takes a place when one opens).
    ``range``: candidates above the row's ``threshold`` (fixed from the context, see :func:`range_threshold`).
    γ = 1 keeps every candidate (reproduces full), γ = 0 none.
    """
    if gamma >= 1:
        return candidate.clone()
    if gamma <= 0:
        return torch.zeros_like(candidate)
    if retention == "range":
        return candidate & (distance > threshold)
    if retention != "top_fraction":
        raise ValueError(f"retention={retention!r} is not valid (choose one of: {', '.join(RETENTIONS)})")
    K = distance.shape[-1]
    quota = retained_count(gamma, K) - (held if torch.is_tensor(held) else torch.full(distance.shape[:2], held))
    ranked = distance.masked_fill(~candidate, float("-inf")).argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(ranked).scatter_(-1, ranked, torch.arange(K, device=distance.device).expand_as(ranked))
    return candidate & (rank < quota.to(rank.device)[..., None])


class MergedStore:
    """Keys (or values) of one layer pair: unit directions ``[B, h, K, d]``, both layers' norms ``[B, G, K, 1]``,
    and the exactly-retained states of both layers with their flat (slot, batch, row) indices (G rows: 1 for
    ``concat``, h for ``per_head``)."""

    def __init__(self, t: float, gamma: float, retention: str, per_head: bool):
        self.t, self.gamma, self.retention, self.per_head = t, gamma, retention, per_head
        self.direction = self.norm_a = self.norm_b = None
        self.kept_idx = self.kept_a = self.kept_b = None
        self.threshold = None  # range rule: [B, G, 1], fixed by the first step

    @property
    def length(self) -> int:
        return 0 if self.norm_a is None else self.norm_a.shape[-2]

    def restore(self, role: int, new: torch.Tensor | None = None) -> torch.Tensor:
        """Layer a's (role 0) or b's (role 1) kept past, restored, followed by its exact ``new`` states if given."""
        norm = self.norm_a if role == 0 else self.norm_b
        n = self.length
        if new is None:
            return restore(self._directions(), norm, *self._retained(role))
        if n == 0:
            return new
        x = new.new_empty(*new.shape[:-2], n + new.shape[-2], new.shape[-1])
        restore(self._directions(out=x[..., :n, :]), norm, *self._retained(role), out=x[..., :n, :])
        x[..., n:, :] = new
        return x

    def step(self, x_a: torch.Tensor, x_b: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """Merge the new tokens ``x_a``/``x_b`` ``[B, h, q, d]`` and append them; with ``keep`` ``[B, G, K]``, keep
        only those slots of old + new (eviction); then choose which kept new tokens are retained exactly."""
        m = slerp_merge(x_a, x_b, self.t, self.per_head)
        old = self.length
        B, h, q, d = x_a.shape
        G = m.distance.shape[1]
        cat = (lambda mine, new: new) if old == 0 else (lambda mine, new: torch.cat([mine, new], dim=-2))
        self._store_directions(m.direction, keep)
        norm_a, norm_b = cat(self.norm_a, m.norm_a), cat(self.norm_b, m.norm_b)
        distance = torch.cat([m.distance.new_full((B, G, old), -1.0), m.distance], dim=-1)  # old: no candidates
        if keep is None:
            keep = torch.arange(old + q, device=x_a.device).expand(B, G, old + q)
            self.norm_a, self.norm_b = norm_a, norm_b
        else:
            self.norm_a, self.norm_b = norm_a.gather(2, keep[..., None]), norm_b.gather(2, keep[..., None])
            distance = distance.gather(2, keep)
        K = keep.shape[-1]
        # old retained tokens move to their new slot, or go with their evicted slot
        slot = torch.full((B, G, old + q), -1, dtype=torch.long, device=x_a.device)
        slot.scatter_(2, keep, torch.arange(K, device=x_a.device).expand(B, G, K))
        if old and self.kept_idx.numel():
            b, g, n = unflatten_index(self.kept_idx, B, G)
            n = slot[b, g, n]
            alive = n >= 0
            b, g, n = b[alive], g[alive], n[alive]
        else:
            alive = None
            b = g = n = torch.zeros(0, dtype=torch.long, device=x_a.device)
        if self.retention == "range" and self.threshold is None:
            self.threshold = range_threshold(distance, self.gamma)
        held = torch.zeros(B, G, dtype=torch.long, device=x_a.device)
        held.index_put_((b, g), torch.ones_like(b), accumulate=True)
        chosen = select_retained(distance, keep >= old, self.retention, self.gamma, held, self.threshold)
        bn, gn, nn = chosen.nonzero(as_tuple=True)
        local = keep[bn, gn, nn] - old
        self._store_retained(alive, flatten_index(b, g, n, B, G), flatten_index(bn, gn, nn, B, G),
                             gather_rows(x_a, bn, gn, local, G), gather_rows(x_b, bn, gn, local, G))

    def _store_directions(self, new: torch.Tensor, keep: torch.Tensor | None) -> None:
        """Append the new tokens' unit directions; with ``keep`` ``[B, G, K]``, keep only those slots of old + new
        (the one place directions are written: a quantizing store overrides it,
        :mod:`kvbench.cache.quantized_merging`)."""
        direction = new if self.direction is None else torch.cat([self.direction, new], dim=-2)
        if keep is not None:
            B, h, _, d = direction.shape
            K = keep.shape[-1]
            direction = direction.gather(2, keep.expand(B, h, K)[..., None].expand(B, h, K, d))
        self.direction = direction

    def _directions(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """The stored unit directions ``[B, h, K, d]`` (a quantizing store writes them into ``out``)."""
        return self.direction

    def _store_retained(self, alive: torch.Tensor | None, moved_idx: torch.Tensor, new_idx: torch.Tensor,
                        new_a: torch.Tensor, new_b: torch.Tensor) -> None:
        """Keep the ``alive`` old retained states (None: none were held) at their flat indices ``moved_idx``, then
        append the newly retained ``new_a``/``new_b`` at ``new_idx`` (the one place retained states are written)."""
        old_a, old_b = (self.kept_a[alive], self.kept_b[alive]) if alive is not None else (new_a[:0], new_b[:0])
        self.kept_idx = torch.cat([moved_idx, new_idx])
        self.kept_a, self.kept_b = torch.cat([old_a, new_a]), torch.cat([old_b, new_b])

    def _retained(self, role: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Flat indices and exact states of layer a's (role 0) or b's (role 1) retained tokens."""
        return self.kept_idx, (self.kept_a if role == 0 else self.kept_b)

    def nbytes(self) -> int:
        return tensor_nbytes(self.direction, self.norm_a, self.norm_b, self.kept_idx, self.kept_a, self.kept_b,
                             self.threshold)
