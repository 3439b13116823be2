"""RoPE detection and the SVD-GQA replacement attention of kvbench.surgery.svd_attention."""

import copy

import torch
from transformers import DynamicCache

from kvbench.surgery.heads import HeadLayout, attention_layers
from kvbench.surgery.svd_attention import SVDRopeAttention, has_rope, svd_convert


def test_rope_detected_from_rotary_embedding_and_identity_rotary_counts_as_none(tiny_gqa):
    model, _ = tiny_gqa
    assert has_rope(model)
    model.model.rotary_emb.inv_freq.zero_()  # cos = 1, sin = 0 at every position: no rotation
    assert not has_rope(model)


def test_orthogonal_key_basis_in_replacement_attention_reproduces_logits_and_caches_projected_keys(tiny_gqa):
    model, _ = tiny_gqa
    ids = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(0))
    reference = model(ids).logits
    lay = HeadLayout(n_query=4, n_kv=2, head_dim=16, groups=2)
    gen = torch.Generator().manual_seed(1)
    bases = [(torch.linalg.qr(torch.randn(2, 16, 16, dtype=torch.float64, generator=gen))[0],
              torch.linalg.qr(torch.randn(2, 16, 16, dtype=torch.float64, generator=gen))[0]) for _ in range(4)]
    original_keys = DynamicCache(config=model.config)
    model(ids, cache=original_keys)
    converted = svd_convert(copy.deepcopy(model), lay, bases, rope=True)
    assert all(isinstance(a, SVDRopeAttention) for a in converted.model.modules() if hasattr(a, "q_proj"))
    cache = DynamicCache(config=converted.config)
    torch.testing.assert_close(converted(ids, cache=cache).logits, reference, atol=1e-4, rtol=0)
    # the cache holds k̃ = RoPE(k) Ψᵀ per group (here one head per group)
    expected = torch.einsum("bgnc,gec->bgne", original_keys.layers[0].keys.double(), bases[0][0]).float()
    torch.testing.assert_close(cache.layers[0].keys, expected, atol=1e-5, rtol=0)
    assert len(attention_layers(converted)) == 4
