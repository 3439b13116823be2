"""Token eviction from quantized streams (``combined`` with ``tokens`` and ``bits``; METHODS.md §5, §6).

**The rule** (:func:`keep`, unchanged from the ``cat``-based streams). Kept quantized tokens keep their codes and
their group's scale and zero point (a key channel group then covers fewer than G tokens, named by a per-token
group index stored beside the codes and counted in ``nbytes``), so eviction never changes a kept value. Rows
(batch × KV head) keep different tokens, and a stream is rectangular, so only the first ``m`` = min over rows of
kept quantized tokens stay quantized; a row's further kept quantized tokens move into the residual as the values
the model saw (dequantized), and are quantized again when they leave it. Every quantized token of a stream is
older than every residual token, so "the first" and "the newest" mean the same in slots and in positions.

**In place** (:func:`evict_in_place`: one token per row, a decode step over the budget). The same rule, without
rebuilding the stream: O(R) slots move, not the cache. A layer's key and value streams quantize different
prefixes (KIVI: keys ⌊T/R⌋·R, values T − R), yet the layer's one :class:`~kvbench.cache.base.TokenBook` indexes
both, so both streams and the book apply the same slot permutation. The stored slots ``[0, F)``, F = the fewest
quantized tokens of the streams, are in no particular order (quantized in every stream: only their codes move);
slots ``[F, S)`` stay in logical order, as KIVI's residual window needs. Evicting slot ``s`` of a row:

* ``s < F`` in some row: that row's slot ``s`` swaps with slot F − 1, every other row's newest token of
  ``[0, F)`` (by logical position) does; the ordered part now starts at F − 1;
* then each row drops its evicted token from the ordered part (order kept: a copy of ≤ S − F + 1 slots). A
  stream whose quantized prefix shrinks (some row evicted a quantized token) moves, in every other row, its
  last quantized token into the residual, dequantized: exactly the tokens :func:`keep` would move.

So the kept tokens, which of them are quantized, and every stored value are :func:`keep`'s (tested against it);
only the order of slots ``[0, F)`` differs. Channel groups that no kept token uses any more are dropped once they
outnumber twice those used after the last compaction (:func:`compact_groups`), so memory follows the kept
tokens, not the tokens seen, at an amortized O(1) per step.
"""

from __future__ import annotations

import torch

from kvbench.cache.slots import SlotStore


def _emptied(store: SlotStore) -> SlotStore:
    fresh = SlotStore(len(store.arrays))
    fresh.reserve(store.reserved)
    return fresh


def keep(stream, index: torch.Tensor) -> None:
    """Keep the stored tokens ``index`` ``[B, h, K]`` (quantized ones first, in logical order) of every row."""
    nq = stream.quantized_tokens
    m = int((index < nq).sum(-1).min()) if nq else 0
    tail = index[..., m:]
    if tail.shape[-1]:
        every = stream.read()
        stream.exact.hold(every.gather(2, tail[..., None].expand(-1, -1, -1, every.shape[-1])))
    else:
        stream.exact = _emptied(stream.exact)
    if nq == 0:
        return
    if m == 0:
        stream.coded, stream.scales, stream.groups = (_emptied(s) for s in (stream.coded, stream.scales, stream.groups))
        return
    head = index[..., :m]
    group = stream.group
    if stream.grouping == "channel":
        group = (head // stream.group_size).to(torch.int32) if group is None else group.gather(2, head)
    stream.coded.hold(stream.codes.gather(2, head[..., None].expand(-1, -1, -1, stream.codes.shape[-1])))
    for store in (stream.coded, stream.groups) if stream.grouping == "channel" else (stream.coded, stream.scales):
        store.reserve(max(store.reserved, index.shape[-1] + 1))  # a decode step adds one, then evicts one
    if stream.grouping == "token":
        along = head[..., None].expand(-1, -1, -1, stream.scale.shape[-1])
        stream.scales.hold(stream.scale.gather(2, along), stream.zero.gather(2, along))
        return
    compact_groups(stream, group)


def compact_groups(stream, group: torch.Tensor, in_place: bool = False) -> None:
    """Keep only the channel groups some token of a row uses (``group`` ``[B, h, Nq]``: each quantized token's),
    renumbered 0.. per row in ascending order (rows with fewer groups pad with a copy of their group 0, as a
    rectangular tensor needs). ``in_place``: into the stores' own slots, else into exact-size tensors."""
    n_groups = stream.scales.filled
    used = torch.zeros(*group.shape[:2], n_groups, dtype=torch.bool, device=group.device)
    used.scatter_(2, group.long(), True)
    renumbered = (used.to(torch.int32).cumsum(-1) - 1).gather(2, group.long())
    count = stream.compacted_groups = int(used.sum(-1).max())
    ids = torch.arange(n_groups, device=group.device).expand_as(used)
    old = torch.where(used, ids, n_groups).sort(-1).values[..., :count]
    old = torch.where(old == n_groups, 0, old)
    along = old[..., None].expand(-1, -1, -1, stream.scale.shape[-1])
    for store, arrays in ((stream.scales, (stream.scale.gather(2, along), stream.zero.gather(2, along))),
                          (stream.groups, (renumbered.to(torch.int32),))):
        if in_place:
            store.crop(store.filled)
            store.write(*arrays)
        else:
            store.hold(*arrays)


def _indexed_groups(stream) -> None:
    """Name each quantized key token's channel group explicitly (before its codes move)."""
    if stream.grouping == "channel" and stream.group is None and stream.quantized_tokens:
        B, h, nq = stream.codes.shape[:3]
        group = torch.arange(nq, dtype=torch.int32, device=stream.codes.device) // stream.group_size
        stream.groups.hold(group.expand(B, h, nq).clone())
        stream.groups.reserve(stream.coded.reserved)


def _token_stores(stream) -> tuple[SlotStore, ...]:
    """The stores with one slot per quantized token (they move together)."""
    return (stream.coded, stream.groups) if stream.grouping == "channel" else (stream.coded, stream.scales)


def evict_in_place(streams, book, slot: torch.Tensor) -> None:
    """Evict slot ``slot`` ``[B, h]`` of every row from ``streams`` and ``book`` (see the module docstring)."""
    for stream in streams:
        _indexed_groups(stream)
    free = min(stream.quantized_tokens for stream in streams)
    in_free = slot < free
    start = free
    if bool(in_free.any()):
        start = free - 1
        newest = book.positions[..., :free].argmax(-1)
        moving = torch.where(in_free, slot, newest)
        book.slots.swap(moving, start)
        for stream in streams:
            for store in _token_stores(stream):
                store.swap(moving, start)
        slot = torch.where(in_free, start, slot)
    book.slots.drop_after(start, slot - start)
    for stream in streams:
        _drop_ordered(stream, start, slot)


def _drop_ordered(stream, start: int, slot: torch.Tensor) -> None:
    """Drop stored slot ``slot`` ``[B, h]`` (≥ ``start``; slots from ``start`` on in logical order) of each row."""
    nq, nr = stream.quantized_tokens, stream.exact.filled
    quantized = slot < nq
    if not bool(quantized.any()):
        stream.exact.drop_after(0, slot - nq)
        return
    # the prefix shrinks by one: rows that evicted an exact token give up their last quantized one, dequantized
    last = torch.full_like(slot, nq - 1)
    moved = stream.dequantize(tokens=last[..., None])
    for store in _token_stores(stream):
        if store.arrays[0] is not None:
            store.drop_after(start, torch.where(quantized, slot, last) - start)
    candidates = moved if nr == 0 else torch.cat([moved, stream.residual], dim=-2)
    residual = SlotStore(1)
    residual.hold(candidates)
    residual.drop_after(0, torch.where(quantized, 0, slot - nq + 1))
    stream.exact.crop(nr)
    if residual.filled:
        stream.exact.write(residual.views()[0])
    if stream.grouping == "channel" and stream.scales.filled > 2 * stream.compacted_groups + 4:
        compact_groups(stream, stream.group, in_place=True)  # amortized: the stored groups at most doubled since
