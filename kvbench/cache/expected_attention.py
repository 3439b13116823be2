"""Expected Attention (Devoto, Jeblick, Jégou 2025, arXiv:2510.00636): the attention *future* queries are expected
to pay each cached key, from the statistics of the queries seen so far. Query-agnostic by construction: the
question is never read (METHODS_NEXT.md §5; NVIDIA/kvpress ``expected_attention_press.py``).

Per layer and query head, over the prompt's queries *before* RoPE (the first ``n_sink`` excluded): their mean μ and
(biased) covariance Σ. A future query at position ``t`` is ``R_t q``; averaged over the next ``n_future`` positions
the rotation is ``R̄ = (1/n_f) Σ_j R_{P+j}`` (the model's own rotary frequencies and scaling), so the expected
query is ``μ̄ = R̄μ`` with covariance ``Σ̄ = R̄ΣR̄ᵀ``. For a Gaussian query the expected exponentiated logit of key
``k`` is ``exp(s·μ̄ᵀk + s²·kᵀΣ̄k/2)`` (s = the attention scale, 1/√d): its log is the key's expected logit; a softmax
over the non-sink keys gives the expected attention, averaged over a KV head's query heads (``group_reduction``),
optionally times ``‖v‖₂`` (``use_vnorm``, kvpress's default). The sink tokens are kept by construction.

RoPE here is transformers' ``rotate_half`` layout (pairs ``i`` and ``i + r/2`` over the first ``r`` rotated dims;
partial rotary leaves the rest unrotated). Without rotary frequencies (learned positions) R̄ is the identity.
"""

from __future__ import annotations

import torch


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x·cos + rotate_half(x)·sin`` over the first ``len(cos)`` dims of ``x`` (the rest unchanged)."""
    r = cos.shape[-1]
    head, tail = x[..., :r], x[..., r:]
    half = torch.cat([-head[..., r // 2:], head[..., : r // 2]], dim=-1)
    return torch.cat([head * cos + half * sin, tail], dim=-1)


def angles(inv_freq: torch.Tensor, positions: torch.Tensor, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` ``[len(positions), r]`` as transformers' rotary embedding builds them (scaling included)."""
    freqs = positions.to(torch.float64)[:, None] * inv_freq.to(torch.float64)[None]
    emb = torch.cat([freqs, freqs], dim=-1)
    return (emb.cos() * scaling).to(torch.float32), (emb.sin() * scaling).to(torch.float32)


def unrotated_queries(query: torch.Tensor, inv_freq: torch.Tensor | None, scaling: float, first: int) -> torch.Tensor:
    """Queries ``[b, H, n, d]`` at positions ``first…`` before RoPE (``R_t⁻¹``; ``R_t`` is a rotation times ``scaling``)."""
    q = query.to(torch.float32)
    if inv_freq is None:
        return q
    cos, sin = angles(inv_freq, torch.arange(first, first + q.shape[-2]), scaling)
    return rotate(q, cos, -sin) / scaling ** 2


def query_statistics(queries: torch.Tensor, n_sink: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[b, H, d]`` and biased covariance ``[b, H, d, d]`` of queries ``[b, H, n, d]`` past the first ``n_sink``."""
    seen = queries[..., n_sink:, :] if queries.shape[-2] > n_sink else queries
    mean = seen.mean(dim=-2)
    centred = seen - mean[..., None, :]
    return mean, centred.transpose(-1, -2) @ centred / seen.shape[-2]


def future_statistics(mean: torch.Tensor, cov: torch.Tensor, inv_freq: torch.Tensor | None, scaling: float,
                      start: int, n_future: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R̄μ, R̄ΣR̄ᵀ)`` with ``R̄`` the mean rotation over positions ``start … start + n_future − 1``."""
    if inv_freq is None:
        return mean, cov
    cos, sin = angles(inv_freq, torch.arange(start, start + n_future), scaling)
    cos, sin = cos.mean(dim=0), sin.mean(dim=0)
    d = mean.shape[-1]
    matrix_t = rotate(torch.eye(d), cos, sin)  # row i = R̄ e_i: the transpose of R̄
    return rotate(mean, cos, sin), matrix_t.T @ cov @ matrix_t


def expected_scores(mean: torch.Tensor, cov: torch.Tensor | None, keys: torch.Tensor, values: torch.Tensor,
                    scale: float, group_reduction: str = "mean", use_vnorm: bool = True,
                    epsilon: float = 0.0) -> torch.Tensor:
    """Expected attention ``[b, h, n]`` of each key ``[b, h, n, d]`` from the expected queries ``mean`` ``[b, H, d]``
    (and ``cov`` ``[b, H, d, d]``, or None to drop the covariance term); the softmax runs over the given keys."""
    b, n_heads, d = mean.shape
    h = keys.shape[1]
    k = keys.to(torch.float32).repeat_interleave(n_heads // h, dim=1)  # [b, H, n, d], transient
    logits = scale * torch.einsum("bhd,bhnd->bhn", mean, k)
    if cov is not None:
        logits = logits + scale ** 2 / 2 * torch.einsum("bhnd,bhde,bhne->bhn", k, cov, k)
    probs = torch.softmax(logits, dim=-1).view(b, h, n_heads // h, -1)
    scores = {"mean": probs.mean(dim=2), "sum": probs.sum(dim=2), "max": probs.amax(dim=2)}[group_reduction]
    if use_vnorm:
        scores = (scores + epsilon) * values.to(torch.float32).norm(dim=-1)
    return scores
