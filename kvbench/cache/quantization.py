"""Asymmetric uniform b-bit quantization of KV states with packed integer codes (METHODS.md §6).

A group ``x`` (the values that share one scale and zero point) is stored as::

    z = min(x),   s = (max(x) − min(x)) / (2^b − 1),   q = round((x − z) / s) ∈ [0, 2^b − 1],   x̂ = q·s + z

``s`` and ``z`` are stored in the dtype of the states (float32 on the bundled model, fp16/bf16 on GPU
models), and the codes are computed from the *stored* ``s`` and ``z``, so what is stored decides
dequantization. ``z`` is an element of ``x`` (exact in any dtype); ``s`` is rounded up to the next
representable value when casting made it too small, so every ``x`` lies in ``[z, z + (2^b − 1)·s]`` and is
reproduced within ``s/2``. A constant group has ``s = 0``: its codes are 0 and ``x̂ = z`` exactly.

Two groupings of states ``[batch, kv_heads, tokens, head_dim]`` (KIVI, Liu et al. 2024, Sec. 3):

* ``channel`` -- each channel over ``G`` consecutive tokens shares ``s, z`` (KIVI's keys: outlier channels
  get their own range). Scales ``[B, h, N/G, d]``; the token count must be a multiple of ``G``.
* ``token`` -- each token's channels, in groups of ``G`` consecutive channels within one head, share ``s, z``
  (KIVI's values; RTN's keys and values). Scales ``[B, h, N, d/G]``; ``G`` must divide ``d``.

Codes are packed along the head dimension: ``8/b`` codes per byte (4 at 2 bits, 2 at 4 bits), code ``i``
of a byte in bits ``[b·i, b·i + b)``. Codes ``[B, h, N, d·b/8]`` uint8, whatever the grouping.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

NBITS = (2, 4)
GROUPINGS = ("channel", "token")


class Quantized(NamedTuple):
    """Packed codes ``[B, h, N, d·b/8]`` (uint8) and the groups' ``scale`` and ``zero`` (the states' dtype)."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor


def pack(codes: torch.Tensor, nbits: int) -> torch.Tensor:
    """Codes ``[..., d]`` (uint8, each < 2^b) packed ``8/b`` per byte along the last dim: ``[..., d·b/8]``."""
    per = 8 // nbits
    if codes.shape[-1] % per:
        raise ValueError(f"cannot pack {codes.shape[-1]} codes of {nbits} bits into whole bytes ({per} per byte)")
    grouped = codes.reshape(*codes.shape[:-1], codes.shape[-1] // per, per)
    packed = grouped[..., 0].clone()
    for i in range(1, per):
        packed |= grouped[..., i] << (nbits * i)
    return packed


def unpack(packed: torch.Tensor, nbits: int) -> torch.Tensor:
    """Inverse of :func:`pack`: ``[..., n]`` bytes → ``[..., n·8/b]`` uint8 codes."""
    shifts = torch.arange(0, 8, nbits, dtype=torch.uint8, device=packed.device)
    return ((packed[..., None] >> shifts) & (2**nbits - 1)).reshape(*packed.shape[:-1], -1)


def _grouped(x: torch.Tensor, grouping: str, group_size: int) -> tuple[torch.Tensor, int]:
    """``x`` ``[B, h, N, d]`` viewed so that each group is a slice along the returned dim."""
    B, h, N, d = x.shape
    if grouping == "channel":
        if N % group_size:
            raise ValueError(f"per-channel groups need a multiple of {group_size} tokens, got {N}")
        return x.view(B, h, N // group_size, group_size, d), -2
    if grouping == "token":
        if d % group_size:
            raise ValueError(f"per-token groups of {group_size} channels must divide the head dim {d}")
        return x.view(B, h, N, d // group_size, group_size), -1
    raise ValueError(f"grouping={grouping!r} is not one of {GROUPINGS}")


def quantize(x: torch.Tensor, nbits: int, grouping: str, group_size: int) -> Quantized:
    """Quantize states ``x`` ``[B, h, N, d]`` in groups of ``group_size`` (see the module docstring)."""
    levels = 2**nbits - 1
    xg, dim = _grouped(x.contiguous(), grouping, group_size)
    zero = xg.amin(dim, keepdim=True)
    span = xg.amax(dim, keepdim=True).float() - zero.float()
    scale = (span / levels).to(x.dtype)
    short = scale.float() * levels < span  # the cast rounded s down: round it up, so max(x) stays within reach
    scale = torch.where(short, torch.nextafter(scale, torch.full_like(scale, float("inf"))), scale)
    safe = torch.where(scale == 0, torch.ones_like(scale), scale).float()
    codes = ((xg.float() - zero.float()) / safe).round_().clamp_(0, levels).to(torch.uint8)
    return Quantized(pack(codes.reshape(x.shape), nbits), scale.squeeze(dim), zero.squeeze(dim))


@functools.lru_cache(maxsize=None)
def code_table(nbits: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[256, 8/b]``: the ``8/b`` codes a byte packs, as numbers of ``dtype`` (exact: codes are below 16)."""
    return unpack(torch.arange(256, dtype=torch.uint8, device=device), nbits).view(256, -1).to(dtype)


def dequantize(q: Quantized, nbits: int, grouping: str, group_size: int,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """States ``[B, h, N, d]`` (dtype of the scales) from packed codes; written into ``out`` if given.

    Each byte's codes are looked up in :func:`code_table` (one row copy per byte; on CPU straight into ``out``,
    one batch × head row at a time, as ``out`` may be the first N tokens of a longer buffer), then scaled and
    shifted in place. Unpacking by shifts instead writes ``8/b`` strided, converting copies per byte (most of a
    ``kivi`` layer's decode-step update in a CPU profile); the lookup writes each byte's codes as one row. The
    values are the same bit for bit (a code is exact in any float dtype, and the scale and shift are unchanged;
    tested). Either way dequantization reads and writes every quantized token at every step: it grows with the
    cache, like attention.
    """
    B, h, N, packed = q.codes.shape
    per = 8 // nbits
    d = packed * per
    if out is None:
        out = q.scale.new_empty(B, h, N, d)
    table = code_table(nbits, out.dtype, out.device)
    index = q.codes.to(torch.int32).reshape(B * h, N * packed)
    rows = out.view(B * h, N * packed, per)  # the first N tokens of a longer buffer: each row is contiguous
    if out.device.type == "cpu":
        for row in range(B * h):
            torch.index_select(table, 0, index[row], out=rows[row])
    else:  # one kernel (a loop over rows would launch B·h of them)
        rows.copy_(table[index])
    if grouping == "channel":
        shape, dim = (B, h, N // group_size, group_size, d), -2
    else:
        shape, dim = (B, h, N, d // group_size, group_size), -1
    out.view(shape).mul_(q.scale.unsqueeze(dim)).add_(q.zero.unsqueeze(dim))
    return out


def quantized_nbytes(tokens: int, kv_heads: int, head_dim: int, nbits: int, group_size: int, elem: int,
                     batch: int = 1) -> int:
    """Bytes of ``tokens`` quantized tokens of one layer's keys (or values): codes + scales + zero points.
    The same for both groupings (N·d/G groups either way)."""
    codes = batch * kv_heads * tokens * head_dim * nbits // 8
    return codes + 2 * batch * kv_heads * tokens * head_dim // group_size * elem
