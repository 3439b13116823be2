"""Tiny seeded random models of every family in kvbench's support matrix (:mod:`kvbench.support`), built from each
family's transformers config class: no download, a few layers, small dims.

Every model shares the byte tokenizer's vocabulary (259 ids) and the same shape where the family allows it:
4 layers, hidden 64, 4 query heads of dim 16 (2 KV heads where the family has GQA). The family's own
peculiarities are switched ON, since they are what the matrix is about: Mistral's sliding window (16 tokens,
shorter than the tests' contexts), Gemma-2/3's alternating sliding/global layers and soft-capping, Qwen3's and
Gemma-3's per-head q/k norms, Phi-3's fused qkv, OPT's learned positions, BLOOM's ALiBi, GPT-NeoX's partial
rotary. Models are built once per session (:func:`tiny_family`) and must not be modified by a test (copy first).
"""

from __future__ import annotations

import functools

VOCAB = dict(vocab_size=259, bos_token_id=256, eos_token_id=257, pad_token_id=258)
SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
             max_position_embeddings=512, tie_word_embeddings=False)
#: The sliding window of the tiny sliding-window families: shorter than the tests' 64-token contexts.
WINDOW = 16
GQA = dict(num_key_value_heads=2, head_dim=16)
#: Families transformers runs with eager attention only.
EAGER_ONLY = ("bloom", "gemma2")
ALTERNATING = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


def _configs() -> dict:
    """``{family: (config class, kwargs)}``; a family's name is its key in :data:`kvbench.support.FAMILIES`."""
    from transformers import (BloomConfig, Gemma2Config, Gemma3TextConfig, GPTNeoXConfig, LlamaConfig,
                              MistralConfig, OPTConfig, Phi3Config, Qwen2Config, Qwen3Config)

    return {
        "llama": (LlamaConfig, dict(**SHAPE, **GQA)),
        "mistral": (MistralConfig, dict(**SHAPE, **GQA, sliding_window=WINDOW)),
        "qwen2": (Qwen2Config, dict(**SHAPE, **GQA)),
        "qwen3": (Qwen3Config, dict(**SHAPE, **GQA)),
        "gemma2": (Gemma2Config, dict(**SHAPE, **GQA, sliding_window=WINDOW, layer_types=ALTERNATING,
                                       query_pre_attn_scalar=16, attn_logit_softcapping=50.0,
                                       final_logit_softcapping=30.0)),
        "gemma3": (Gemma3TextConfig, dict(**SHAPE, **GQA, sliding_window=WINDOW, layer_types=ALTERNATING,
                                           query_pre_attn_scalar=16)),
        "phi3": (Phi3Config, dict(**SHAPE, num_key_value_heads=2, original_max_position_embeddings=512)),
        "opt": (OPTConfig, dict(hidden_size=64, ffn_dim=128, num_hidden_layers=4, num_attention_heads=4,
                                word_embed_proj_dim=64, max_position_embeddings=512, enable_bias=True)),
        "bloom": (BloomConfig, dict(hidden_size=64, n_layer=4, n_head=4)),
        "gpt_neox": (GPTNeoXConfig, dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                         num_attention_heads=4, max_position_embeddings=512, rotary_pct=0.5)),
    }


def family_names() -> list[str]:
    return sorted(_configs())


def tiny_family_config(family: str):
    """The tiny model's transformers config: sdpa attention, eager where the family has no sdpa (BLOOM)."""
    cls, kwargs = _configs()[family]
    config = cls(**VOCAB, **kwargs)
    config._attn_implementation = "eager" if family in EAGER_ONLY else "sdpa"
    return config


@functools.cache
def tiny_family(family: str, seed: int = 0):
    """``(model, tokenizer)``: the family's tiny model (float32, eval mode, seeded), built once per process."""
    import torch
    from transformers import AutoModelForCausalLM

    from kvbench.models import byte_tokenizer

    config = tiny_family_config(family)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.eval()
    return model, byte_tokenizer()
