"""method=full: the preallocated cache (cache_layout=static) equals DynamicCache bit for bit and holds its reservation."""

from __future__ import annotations

import pytest
import torch

from kvbench.cache import cache_nbytes
from kvbench.cache.base import PlainCache
from kvbench.cache.preallocated import PreallocatedCache
from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import MethodConfigError, build_method
from tests.conftest import random_ids

pytestmark = pytest.mark.usefixtures("no_grad")


def test_static_and_dynamic_layouts_give_identical_logits_and_tokens_at_batch_above_one(tiny_gqa):
    model, _ = tiny_gqa
    contexts = [random_ids(30, seed=s)[0].tolist() for s in range(3)]
    runs = {}
    for layout in ("static", "dynamic"):
        protocol = CompressionProtocol(model, build_method("full", cache_layout=layout), model.config)
        runs[layout] = protocol.generate_batch(contexts, 12, return_logits=True)
    (static_tokens, static_logits), (dynamic_tokens, dynamic_logits) = runs["static"], runs["dynamic"]
    assert static_tokens == dynamic_tokens
    assert torch.equal(static_logits, dynamic_logits)


def test_static_layout_scores_continuations_like_dynamic_through_a_multi_token_forward(tiny_gqa):
    model, _ = tiny_gqa
    context, continuations = random_ids(25)[0].tolist(), [random_ids(5, seed=s)[0].tolist() for s in (1, 2)]
    scores = [CompressionProtocol(model, build_method("full", cache_layout=layout), model.config)
              .score_continuations(context, continuations) for layout in ("static", "dynamic")]
    assert scores[0] == scores[1]


def test_a_reserved_static_cache_allocates_prompt_plus_new_tokens_once_and_counts_them(tiny_gqa):
    model, _ = tiny_gqa
    protocol = CompressionProtocol(model, build_method("full"), model.config)
    cache = protocol.prefill_batch([random_ids(20, seed=s)[0].tolist() for s in range(2)], then=8)
    assert isinstance(cache, PreallocatedCache)
    buffers = [layer.store.arrays[0] for layer in cache.layers]
    dynamic = CompressionProtocol(model, build_method("full", cache_layout="dynamic"), model.config)
    exact = cache_nbytes(dynamic.prefill_batch([random_ids(20, seed=s)[0].tolist() for s in range(2)]))
    assert cache_nbytes(cache) == exact * 28 // 20  # the capacity (20 + 8 tokens) is what is held
    for token in range(8):
        protocol.forward_batch(cache, torch.full((2, 1), token))
    assert [layer.store.arrays[0] for layer in cache.layers] == buffers  # no step reallocated
    assert cache.get_seq_length() == 28


def test_dynamic_layout_and_sliding_window_models_keep_dynamic_cache(tiny_gqa):
    from transformers import MistralConfig

    model, _ = tiny_gqa
    assert isinstance(build_method("full", cache_layout="dynamic").new_cache(model), PlainCache)
    windowed = MistralConfig(num_hidden_layers=2, sliding_window=8, max_position_embeddings=64)
    assert isinstance(build_method("full").new_cache(type("M", (), {"config": windowed})()), PlainCache)


def test_an_unknown_cache_layout_is_one_clear_line():
    with pytest.raises(MethodConfigError, match="cache_layout='paged' is not valid"):
        build_method("full", cache_layout="paged")
