"""BLOOM attention with g KV heads, so KV-head surgery applies to ALiBi models (bloomz-7b1).

BLOOM's ``BloomAttention`` is multi-head only and fuses Q, K, V into one
``query_key_value`` linear laid out per head as ``[q_k | k_k | v_k]``. :func:`unfuse_qkv`
swaps each for :class:`BloomGroupedAttention`: the same computation (ALiBi bias per query
head, causal mask, ``dense`` output) with separate ``q_proj``/``k_proj``/``v_proj``/``o_proj``
and KV heads shared by ``num_key_value_groups`` query heads. Splitting is exact; the
generic head surgery (mean-pool, SVD fused path; ALiBi has no rotation) then edits it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kvbench.surgery.attention_cache import cache_argument


def _linear(weight: torch.Tensor, bias: torch.Tensor, like: nn.Linear) -> nn.Linear:
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=True, device=like.weight.device, dtype=like.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)
    return new


class BloomGroupedAttention(nn.Module):
    """``BloomAttention`` with separate projections and ``num_key_value_groups`` query heads per KV head."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        n_heads, d = attn.num_heads, attn.head_dim
        self.num_heads, self.head_dim, self.layer_idx = n_heads, d, attn.layer_idx
        self.num_key_value_groups = 1
        self.inv_norm_factor, self.beta = attn.inv_norm_factor, attn.beta
        self.hidden_dropout, self.attention_dropout = attn.hidden_dropout, attn.attention_dropout
        qkv = attn.query_key_value
        w = qkv.weight.detach().view(n_heads, 3, d, -1)
        b = qkv.bias.detach().view(n_heads, 3, d)
        self.q_proj, self.k_proj, self.v_proj = (_linear(w[:, i].reshape(n_heads * d, -1), b[:, i].reshape(-1), qkv)
                                                 for i in range(3))
        self.o_proj = attn.dense

    def forward(self, hidden_states, residual, alibi, attention_mask, layer_past=None, use_cache=False,
                output_attentions=False, cache=None, past_key_values=None, **kwargs):
        layer_past = cache_argument(type(self).__name__, {"layer_past": layer_past, "cache": cache,
                                                          "past_key_values": past_key_values}, kwargs)
        batch, q_len, _ = hidden_states.shape
        h, d = self.num_heads, self.head_dim
        query = self.q_proj(hidden_states).view(batch, q_len, h, d).transpose(1, 2)
        key = self.k_proj(hidden_states).view(batch, q_len, -1, d).transpose(1, 2)
        value = self.v_proj(hidden_states).view(batch, q_len, -1, d).transpose(1, 2)
        if layer_past is not None:
            key, value = layer_past.update(key, value, self.layer_idx)
        key = key.repeat_interleave(self.num_key_value_groups, dim=1)
        value = value.repeat_interleave(self.num_key_value_groups, dim=1)

        scores = alibi.baddbmm(batch1=query.reshape(batch * h, q_len, d),
                               batch2=key.reshape(batch * h, -1, d).transpose(-1, -2),
                               beta=self.beta, alpha=self.inv_norm_factor)
        weights = scores.view(batch, h, q_len, -1)
        if attention_mask is not None:
            weights = weights + attention_mask
        probs = self.attention_dropout(F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype))
        context = torch.matmul(probs, value).transpose(1, 2).reshape(batch, q_len, h * d)
        out = self.o_proj(context)
        out = residual + F.dropout(out, p=self.hidden_dropout, training=self.training)
        return out, probs


def unfuse_qkv(model: nn.Module) -> nn.Module:
    """Replace every ``BloomAttention`` by the equivalent :class:`BloomGroupedAttention` (in place)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ == "BloomAttention":
                setattr(parent, name, BloomGroupedAttention(child))
    return model
