"""KV-head grouping shared by mean-pool GQA and SVD-GQA (METHODS.md §1–2).

Conventions. A model has H query heads, h KV heads of dimension d; the target is g KV
heads, ``t = h/g`` heads per group, group i = KV heads ``i·t … i·t+t−1``. Query head j
used KV head ``j // (H/h)``; it now uses group ``j // (H/g)``, at *position*
``p = (j // (H/h)) % t`` inside the group. Weights follow ``torch.nn.Linear``: rows
of ``k_proj.weight`` are output channels, head k owns rows ``k·d … k·d+d−1``.

Supported attention: modules with separate ``q_proj``/``k_proj``/``v_proj``/``o_proj``
linears and a ``layer_idx`` (Llama, Mistral, Qwen2/3, SmolLM2, ... in transformers 5), and
BLOOM, whose fused ``query_key_value`` is split first (:mod:`kvbench.surgery.bloom`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kvbench.errors import MethodConfigError

_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class HeadLayout:
    """Head counts of a model and of its target grouping."""

    n_query: int  # H
    n_kv: int  # h
    head_dim: int  # d
    groups: int  # g

    @property
    def per_group(self) -> int:  # t = h/g
        return self.n_kv // self.groups

    def query_slot(self, j: int) -> tuple[int, int]:
        """``(group i, position p)`` of the KV head that query head ``j`` used before grouping."""
        kv = j // (self.n_query // self.n_kv)
        return kv // self.per_group, kv % self.per_group


def head_counts(config) -> tuple[int, int, int]:
    """``(H, h, d)`` from a transformers config (the text config for multimodal models)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_query = text.num_attention_heads
    n_kv = getattr(text, "num_key_value_heads", None) or n_query
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // n_query
    return n_query, n_kv, head_dim


def check_kv_heads(kv_heads: int, config) -> None:
    """``kv_heads`` must divide the model's KV heads (so groups are equal and contiguous)."""
    _, n_kv, _ = head_counts(config)
    divisors = [k for k in range(1, n_kv + 1) if n_kv % k == 0]
    choices = ", ".join(map(str, divisors[:-1])) + (" or " if len(divisors) > 1 else "") + str(divisors[-1])
    if kv_heads > n_kv:
        raise MethodConfigError(f"method.kv_heads={kv_heads} is larger than the model's {n_kv} KV heads "
                                f"(choose {choices})")
    if n_kv % kv_heads:
        raise MethodConfigError(f"method.kv_heads={kv_heads} must divide the model's {n_kv} KV heads "
                                f"(choose {choices})")


def check_positive_kv_heads(kv_heads: int) -> None:
    if not isinstance(kv_heads, int) or kv_heads <= 0:
        raise MethodConfigError(f"method.kv_heads={kv_heads!r} must be a positive number of KV heads "
                                "(a divisor of the model's KV heads, e.g. 1)")


def attention_layers(model: nn.Module) -> list[nn.Module]:
    """The model's self-attention modules in layer order; a clear error for unsupported architectures."""
    found = [m for m in model.modules()
             if all(isinstance(getattr(m, p, None), nn.Linear) for p in _PROJECTIONS) and hasattr(m, "layer_idx")]
    if not found:
        kinds = sorted({type(m).__name__ for m in model.modules() if "Attention" in type(m).__name__})
        raise MethodConfigError(
            "KV-head surgery needs attention with separate q_proj/k_proj/v_proj/o_proj "
            f"(Llama, Mistral, Qwen2 ...); this model has {', '.join(kinds) or 'no attention module'}")
    return sorted(found, key=lambda m: m.layer_idx)


def editable_attention_layers(model: nn.Module) -> list[nn.Module]:
    """:func:`attention_layers` after splitting fused projections (BLOOM's ``query_key_value``; exact)."""
    from kvbench.surgery.bloom import unfuse_qkv

    return attention_layers(unfuse_qkv(model))


def layout(model: nn.Module, kv_heads: int) -> HeadLayout:
    check_kv_heads(kv_heads, model.config)
    return HeadLayout(*head_counts(model.config), groups=kv_heads)


def set_kv_heads(model: nn.Module, attn_modules: list[nn.Module], kv_heads: int) -> None:
    """Record the new KV-head count in the config (DynamicCache/generate read it) and in each module."""
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n_query = text.num_attention_heads
    text.num_key_value_heads = kv_heads
    for attn in attn_modules:
        attn.num_key_value_groups = n_query // kv_heads
        if hasattr(attn, "num_key_value_heads"):
            attn.num_key_value_heads = kv_heads
        cfg = getattr(attn, "config", None)
        if cfg is not None and cfg is not text and hasattr(cfg, "num_key_value_heads"):
            cfg.num_key_value_heads = kv_heads


# ---------------------------------------------------------------------------------------------
# Weight edits (all computed in float64, written back in the weight's dtype)


def _head_rows(linear: nn.Linear, n_heads: int, d: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight [n_heads, d, D], bias [n_heads, d] or None)`` in float64."""
    w = linear.weight.detach().double().view(n_heads, d, -1)
    b = None if linear.bias is None else linear.bias.detach().double().view(n_heads, d)
    return w, b


def _replace_linear(old: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                    device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight.to(old.weight.dtype))
        if bias is not None:
            new.bias.copy_(bias.to(old.weight.dtype))
    return new


def project_kv_rows(linear: nn.Linear, lay: HeadLayout, basis: torch.Tensor | None) -> nn.Linear:
    """New k/v projection with g heads: group i's rows ``= basis_i @ W_group`` (Eq. of METHODS.md §2).

    ``basis``: ``[g, d, t·d]`` (SVD) or ``None`` for the mean over the group (mean-pool, §1).
    """
    g, t, d = lay.groups, lay.per_group, lay.head_dim
    w, b = _head_rows(linear, lay.n_kv, d)
    w = w.reshape(g, t * d, -1)
    b = None if b is None else b.reshape(g, t * d)
    if basis is None:
        basis = torch.cat([torch.eye(d, dtype=torch.float64)] * t, dim=1).expand(g, d, t * d) / t
    basis = basis.to(device=w.device, dtype=torch.float64)
    new_w = torch.einsum("gec,gcD->geD", basis, w).reshape(g * d, -1)
    new_b = None if b is None else torch.einsum("gec,gc->ge", basis, b).reshape(g * d)
    return _replace_linear(linear, new_w, new_b)


def query_blocks(lay: HeadLayout, basis: torch.Tensor) -> torch.Tensor:
    """``[H, d, d]``: for query head j in group i at position p, the block ``basis_i^(p)``."""
    d = lay.head_dim
    blocks = []
    for j in range(lay.n_query):
        i, p = lay.query_slot(j)
        blocks.append(basis[i, :, p * d:(p + 1) * d])
    return torch.stack(blocks)


def project_query_rows(q_proj: nn.Linear, lay: HeadLayout, key_basis: torch.Tensor) -> nn.Linear:
    """``W_Q,j' = Ψ_i^(p) W_Q,j`` (keys fused without RoPE): then ``q_j' · k̃ = q_j · (k̃ Ψ_i^(p))``."""
    w, b = _head_rows(q_proj, lay.n_query, lay.head_dim)
    blocks = query_blocks(lay, key_basis.to(device=w.device, dtype=torch.float64))
    new_w = torch.einsum("hec,hcD->heD", blocks, w).reshape(lay.n_query * lay.head_dim, -1)
    new_b = None if b is None else torch.einsum("hec,hc->he", blocks, b).reshape(-1)
    return _replace_linear(q_proj, new_w, new_b)


def project_output_columns(o_proj: nn.Linear, lay: HeadLayout, value_basis: torch.Tensor) -> nn.Linear:
    """``W_O,j' = W_O,j Ω_i^(p)ᵀ``: head j's output ``õ_j Ω_i^(p)`` is folded into ``o_proj``."""
    d = lay.head_dim
    w = o_proj.weight.detach().double().view(o_proj.out_features, lay.n_query, d)
    blocks = query_blocks(lay, value_basis.to(device=w.device, dtype=torch.float64))
    new_w = torch.einsum("Dhc,hec->Dhe", w, blocks).reshape(o_proj.out_features, -1)
    bias = None if o_proj.bias is None else o_proj.bias.detach().double()
    return _replace_linear(o_proj, new_w, bias)


def expand_kv_heads(model: nn.Module) -> nn.Module:
    """Turn a GQA model into the exactly equivalent MHA model by repeating each KV head H/h times.

    The inverse of grouping: used to prove that both conversions recover the original model.
    """
    n_query, n_kv, d = head_counts(model.config)
    rep = n_query // n_kv
    attn_modules = editable_attention_layers(model)
    for attn in attn_modules:
        for name in ("k_proj", "v_proj"):
            linear = getattr(attn, name)
            w, b = _head_rows(linear, n_kv, d)
            w = w.repeat_interleave(rep, dim=0).reshape(n_query * d, -1)
            b = None if b is None else b.repeat_interleave(rep, dim=0).reshape(-1)
            setattr(attn, name, _replace_linear(linear, w, b))
    set_kv_heads(model, attn_modules, n_query)
    return model


def meanpool_kv_heads(model: nn.Module, kv_heads: int) -> nn.Module:
    """Mean-pool GQA (METHODS.md §1): each group's key/value projection = mean of its heads'."""
    lay = layout(model, kv_heads)
    attn_modules = editable_attention_layers(model)
    for attn in attn_modules:
        attn.k_proj = project_kv_rows(attn.k_proj, lay, None)
        attn.v_proj = project_kv_rows(attn.v_proj, lay, None)
    set_kv_heads(model, attn_modules, kv_heads)
    return model
