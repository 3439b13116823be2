"""SVD-GQA attention for RoPE models: rotate, project to g heads, cache the projection.

RoPE rotates keys by a position-dependent matrix, so the key basis Ψ cannot be folded
into ``k_proj`` (METHODS.md §2). This module keeps the full key projection, rotates
queries and keys as the original attention does, then

* caches ``k̃ = RoPE(k_concat) Ψ_iᵀ`` -- g heads of dimension d instead of h;
* scores with ``q_j' = RoPE(q_j) Ψ_i^(p)ᵀ`` so that ``q_j' · k̃ ≈ RoPE(q_j) · RoPE(k_p)``.

Values need no replacement (Ω is fused into ``v_proj``/``o_proj`` beforehand), and the
attention itself is the model's own (``ALL_ATTENTION_FUNCTIONS``: sdpa, eager, flash),
run as ordinary GQA with g KV heads, so transformers' caches and ``generate`` just work.
The cache arrives as ``cache`` (transformers >= 5.24) or ``past_key_values`` (before); a cache under
any other name is an error, never a silent cacheless run (:mod:`kvbench.surgery.attention_cache`).
"""

from __future__ import annotations

import sys
from typing import Callable

import torch
from torch import nn

from kvbench.surgery.attention_cache import cache_argument
from kvbench.surgery.heads import HeadLayout, query_blocks

_COPIED = ("config", "layer_idx", "head_dim", "scaling", "attention_dropout", "is_causal", "sliding_window",
           "q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")


class SVDRopeAttention(nn.Module):
    """Drop-in replacement for a Llama-family attention module after SVD-GQA surgery.

    ``key_basis``: ``[g, d, t·d]`` (Ψ); ``v_proj``/``o_proj`` of ``attn`` must already hold Ω.
    """

    def __init__(self, attn: nn.Module, lay: HeadLayout, key_basis: torch.Tensor):
        super().__init__()
        for name in _COPIED:
            if hasattr(attn, name):
                setattr(self, name, getattr(attn, name))
        self.layout = lay
        self.num_key_value_groups = lay.n_query // lay.groups
        self.rotate: Callable = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        dtype = attn.k_proj.weight.dtype
        self.register_buffer("key_basis", key_basis.to(device=attn.k_proj.weight.device, dtype=dtype))
        self.register_buffer("query_basis", query_blocks(lay, key_basis).to(self.key_basis))

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None,
                past_key_values=None, **kwargs):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.models.llama.modeling_llama import eager_attention_forward

        cache = cache_argument(type(self).__name__, {"cache": cache, "past_key_values": past_key_values}, kwargs)

        lay = self.layout
        g, t, d = lay.groups, lay.per_group, lay.head_dim
        input_shape = hidden_states.shape[:-1]
        batch, n = input_shape
        query = self.q_proj(hidden_states).view(*input_shape, -1, d)
        key = self.k_proj(hidden_states).view(*input_shape, -1, d)
        if getattr(self, "q_norm", None) is not None:  # Qwen3-style per-head norms come before RoPE
            query, key = self.q_norm(query), self.k_norm(key)
        query, key = query.transpose(1, 2), key.transpose(1, 2)
        value = self.v_proj(hidden_states).view(*input_shape, -1, d).transpose(1, 2)  # already g heads

        cos, sin = position_embeddings
        query, key = self.rotate(query, key, cos, sin)
        # [b, h, n, d] -> [b, g, n, t·d] -> k̃ [b, g, n, d];  q_j' = RoPE(q_j) Ψ_i^(p)ᵀ
        key = key.view(batch, g, t, n, d).permute(0, 1, 3, 2, 4).reshape(batch, g, n, t * d)
        key = torch.einsum("bgnc,gec->bgne", key, self.key_basis)
        query = torch.einsum("bhnc,hec->bhne", query, self.query_basis)

        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)

        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        extra = {"sliding_window": self.sliding_window} if getattr(self, "sliding_window", None) else {}
        out, weights = attention(self, query, key, value, attention_mask,
                                 dropout=0.0 if not self.training else self.attention_dropout,
                                 scaling=self.scaling, **extra, **kwargs)
        out = self.o_proj(out.reshape(*input_shape, -1).contiguous())
        return out, weights


def rotary_module(model: nn.Module) -> nn.Module | None:
    for module in model.modules():
        if "Rotary" in type(module).__name__:
            return module
    return None


@torch.no_grad()
def has_rope(model: nn.Module) -> bool:
    """True when the model rotates keys by position: it has a rotary embedding whose cos/sin vary
    with position. A rotary module that is the identity (zero frequencies) counts as no RoPE."""
    rotary = rotary_module(model)
    if rotary is None:
        return False
    param = next(model.parameters())
    x = torch.zeros(1, dtype=torch.float32, device=param.device)
    positions = torch.tensor([[0, 1, 2, 3, 17, 1000]], device=param.device)
    cos, sin = rotary(x, positions)
    return bool(sin.abs().max() > 0 or (cos - cos[:, :1]).abs().max() > 0)


def svd_convert(model: nn.Module, lay: HeadLayout, bases: list[tuple[torch.Tensor, torch.Tensor]],
                rope: bool) -> nn.Module:
    """Apply SVD-GQA with per-layer ``(Ψ, Ω)``: values fused always; keys fused (no RoPE) or
    projected after rotation by :class:`SVDRopeAttention` (RoPE)."""
    from kvbench.surgery.heads import (editable_attention_layers, project_kv_rows, project_output_columns,
                                       project_query_rows, set_kv_heads)

    attn_modules = editable_attention_layers(model)
    if len(bases) != len(attn_modules):
        raise ValueError(f"{len(bases)} calibrated layers for a model with {len(attn_modules)} attention layers")
    parents = {id(child): (parent, name) for parent in model.modules() for name, child in parent.named_children()}
    for attn, (key_basis, value_basis) in zip(attn_modules, bases):
        attn.v_proj = project_kv_rows(attn.v_proj, lay, value_basis)
        attn.o_proj = project_output_columns(attn.o_proj, lay, value_basis)
        if rope:
            parent, name = parents[id(attn)]
            setattr(parent, name, SVDRopeAttention(attn, lay, key_basis))
        else:
            attn.k_proj = project_kv_rows(attn.k_proj, lay, key_basis)
            attn.q_proj = project_query_rows(attn.q_proj, lay, key_basis)
    set_kv_heads(model, attn_modules, lay.groups)
    return model
