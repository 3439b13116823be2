"""``method=minicache`` on real (tiny random / bundled) models: exactness, protocol, generate, bytes, config."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from kvbench.cache import cache_nbytes, full_cache_nbytes
from kvbench.cache.minicache import MergedPairLayer
from kvbench.methods.base import MethodConfigError, build_method
from tests.conftest import method_from_config



def ids(n, seed=0, vocab=256):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, n), generator=g)


@torch.no_grad()
def full_logits(model, tokens):
    return model(input_ids=tokens, cache=DynamicCache(config=model.config), use_cache=True).logits


@torch.no_grad()
def protocol_logits(model, method, context, continuation):
    """Prefill the context, compress, then score the continuation in one forward (kvbench protocol)."""
    cache = method.new_cache(model)
    model(input_ids=context, cache=cache, use_cache=True)
    method.compress(cache)
    return model(input_ids=continuation, cache=cache, use_cache=True).logits, cache


@torch.no_grad()
def greedy(model, cache, prompt, n, compress=None):
    """Token-by-token greedy decoding with explicit forwards (compress after the prompt, if given)."""
    logits = model(input_ids=prompt, cache=cache, use_cache=True).logits
    if compress:
        compress(cache)
    out = []
    for _ in range(n):
        tok = logits[:, -1:].argmax(-1)
        out.append(int(tok))
        logits = model(input_ids=tok, cache=cache, use_cache=True).logits
    return out


@pytest.mark.parametrize("kind,norm", [("llama-gqa", "concat"), ("llama-mha", "per_head"), ("llama-gqa", "per_head")])
def test_gamma_one_reproduces_full_logits_and_greedy_tokens(kind, norm):
    from kvbench.models import tiny_llama

    model, _ = tiny_llama(kind, seed=0)
    method = build_method("minicache", start_layer=1, gamma=1.0, norm=norm)  # pair (1,2), layer 3 unpaired
    tokens = ids(40)
    ref = full_logits(model, tokens)
    got, cache = protocol_logits(model, method, tokens[:, :30], tokens[:, 30:])
    assert isinstance(cache.layers[1], MergedPairLayer) and not isinstance(cache.layers[3], MergedPairLayer)
    assert cache.pairs[0].merged
    torch.testing.assert_close(got, ref[:, 30:], rtol=1e-4, atol=1e-4)
    want = model.generate(tokens, cache=DynamicCache(config=model.config), max_new_tokens=16,
                          do_sample=False)
    got_gen = model.generate(tokens, cache=method.new_cache(model), max_new_tokens=16, do_sample=False)
    assert torch.equal(got_gen, want)
    assert greedy(model, method.new_cache(model), tokens, 16, method.compress) == want[0, 40:].tolist()


def test_gamma_one_with_the_range_rule_reproduces_full_context_logits(tiny_gqa):
    model, _ = tiny_gqa
    method = build_method("minicache", gamma=1.0, retention="range")
    tokens = ids(36, seed=1)
    got, _ = protocol_logits(model, method, tokens[:, :30], tokens[:, 30:])
    torch.testing.assert_close(got, full_logits(model, tokens)[:, 30:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("norm", ["concat", "per_head"])
def test_attention_sees_each_layers_restored_past_plus_its_exact_new_tokens(tiny_gqa, norm):
    model, _ = tiny_gqa
    method = build_method("minicache", start_layer=1, gamma=0.1, norm=norm)
    tokens = ids(40, seed=2)
    cache = method.new_cache(model)
    with torch.no_grad():
        model(input_ids=tokens[:, :32], cache=cache, use_cache=True)
    method.compress(cache)
    # reference: a plain cache whose merged layers hold exactly what MiniCache restores
    ref = DynamicCache(config=model.config)
    pair = cache.pairs[0]
    for layer in range(4):
        if layer in (1, 2):
            k, v = pair.keys.restore(layer - 1), pair.values.restore(layer - 1)
        else:
            k, v = cache.layers[layer].keys, cache.layers[layer].values
        ref.update(k.clone(), v.clone(), layer)
    with torch.no_grad():
        want = model(input_ids=tokens[:, 32:], cache=ref, use_cache=True).logits
        got = model(input_ids=tokens[:, 32:], cache=cache, use_cache=True).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # merging is lossy at γ < 1 (otherwise this test would prove nothing)
    assert (full_logits(model, tokens)[:, 32:] - got).abs().max() > 1e-4


def test_deep_copied_compressed_cache_scores_continuations_like_a_fresh_one(tiny_gqa):
    model, _ = tiny_gqa
    method = build_method("minicache", gamma=0.1)
    context, conts = ids(30, seed=3), [ids(6, seed=4), ids(4, seed=5)]
    shared = method.new_cache(model)
    with torch.no_grad():
        model(input_ids=context, cache=shared, use_cache=True)
    method.compress(shared)
    before = cache_nbytes(shared)
    for cont in conts:
        copied = copy.deepcopy(shared)
        with torch.no_grad():
            got = model(input_ids=cont, cache=copied, use_cache=True).logits
        want, _ = protocol_logits(model, method, context, cont)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert copied.get_seq_length() == 30 + cont.shape[1]
    assert cache_nbytes(shared) == before and shared.get_seq_length() == 30


def test_generate_without_compress_merges_lazily_like_explicit_compress(tiny_gqa):
    model, _ = tiny_gqa
    method = build_method("minicache", gamma=0.05)
    prompt = ids(48, seed=6)
    cache = method.new_cache(model)
    out = model.generate(prompt, cache=cache, max_new_tokens=12, do_sample=False)
    assert out[0, 48:].tolist() == greedy(model, method.new_cache(model), prompt, 12, method.compress)
    n = 48 + 12 - 1  # the last generated token is never fed back
    assert all(cache.get_seq_length(layer) == n for layer in range(4))
    assert cache.pairs[0].merged
    assert cache_nbytes(cache) < 0.85 * full_cache_nbytes(model.config, n, torch.float32)


def test_streamed_chunks_compressed_after_each_keep_logical_positions(tiny_gqa):
    model, _ = tiny_gqa
    method = build_method("minicache", gamma=1.0)
    tokens = ids(50, seed=7)
    cache = method.new_cache(model)
    logits = []
    with torch.no_grad():
        for i in range(0, 50, 16):
            logits.append(model(input_ids=tokens[:, i:i + 16], cache=cache, use_cache=True).logits)
            method.compress(cache)
    assert cache.get_seq_length() == 50 and cache.pairs[0].keys.length == 50
    torch.testing.assert_close(torch.cat(logits, 1), full_logits(model, tokens), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("params,message", [
    (dict(t=1.5), r"method.t=1.5 must be in \[0, 1\]"),
    (dict(t=-0.1), r"method.t=-0.1 must be in \[0, 1\]"),
    (dict(gamma=2.0), r"method.gamma=2.0 must be in \[0, 1\]"),
    (dict(retention="threshold"), r"method.retention='threshold' is not valid \(choose one of: top_fraction, range\)"),
    (dict(norm="l2"), r"method.norm='l2' is not valid \(choose one of: concat, per_head\)"),
    (dict(start_layer=0), r"method.start_layer=0 must be null"),
])
def test_bad_parameters_raise_a_clear_error(params, message):
    with pytest.raises(MethodConfigError, match=message):
        build_method("minicache", **params)


def test_start_layer_is_checked_against_the_model_and_defaults_to_half(tiny_gqa):
    model, _ = tiny_gqa
    with pytest.raises(MethodConfigError, match=r"method.start_layer=3 must be in \[1, 2\] for this 4-layer model"):
        build_method("minicache", start_layer=3).check_model(model.config)
    method = build_method("minicache")
    method.check_model(model.config)
    assert method.resolved_start_layer(model.config) == 2
    cache = method.new_cache(model)
    assert [isinstance(layer, MergedPairLayer) for layer in cache.layers] == [False, False, True, True]


def test_hydra_config_composes_to_the_method_defaults():
    method = method_from_config("method=minicache", "method.gamma=0.1", "method.start_layer=3")
    assert (method.gamma, method.start_layer, method.t, method.retention, method.norm) == (
        0.1, 3, 0.6, "top_fraction", "concat")
    with pytest.raises(Exception, match="gamma"):
        method_from_config("method=minicache", "method.gamma=lots")


def test_bundled_model_bytes_follow_the_formula_and_gamma_one_is_exact(smollm2_shared):
    model, _ = smollm2_shared
    cfg = model.config  # 30 layers, 3 KV heads, head_dim 64: S = 15, pairs (15,16) .. (27,28), layer 29 alone
    tokens = ids(80, seed=8, vocab=cfg.vocab_size)
    method = build_method("minicache")
    cache = method.new_cache(model)
    with torch.no_grad():
        model(input_ids=tokens, cache=cache, use_cache=True)
    method.compress(cache)
    n = 80
    full = full_cache_nbytes(cfg, n, torch.float32)
    h, d, gamma = 3, 64, 0.05
    k = -(-gamma * n // 1)
    pair_ratio = 0.5 + 1 / (h * d) + k / n  # ⌈γN⌉/N retained
    expected = full * (16 + 14 * pair_ratio) / 30  # 16 plain layers, 7 pairs = 14 merged layers
    assert abs(cache_nbytes(cache) / expected - 1) < 0.01
    exact = build_method("minicache", gamma=1.0)
    got, _ = protocol_logits(model, exact, tokens[:, :64], tokens[:, 64:])
    torch.testing.assert_close(got, full_logits(model, tokens)[:, 64:], rtol=1e-4, atol=1e-3)


def test_gamma_one_matches_full_under_the_kvbench_protocol(tiny_gqa):
    from kvbench.eval.protocol import CompressionProtocol

    model, _ = tiny_gqa
    context, conts, text = list(range(10, 60)), [[1, 2, 3], [4, 5], [6, 7, 8, 9]], list(range(70, 110))
    results = {}
    for label, method in (("full", build_method("full")), ("minicache", build_method("minicache", gamma=1.0))):
        protocol = CompressionProtocol(model, method)
        results[label] = (protocol.score_continuations(context, conts), protocol.stream_logprob(context, text, 8),
                          protocol.generate(context, 12))
    (scores, stream, gen), (want_scores, want_stream, want_gen) = results["minicache"], results["full"]
    assert [g for _, g in scores] == [g for _, g in want_scores] and gen == want_gen
    assert [s for s, _ in scores] == pytest.approx([s for s, _ in want_scores], abs=1e-4)
    assert stream == pytest.approx(want_stream, abs=1e-4)


def test_gamma_one_matches_full_through_lm_eval(tiny_gqa):
    from lm_eval import simple_evaluate

    from kvbench.suites.lm_eval import task_manager
    from kvbench.eval.lm import KvbenchLM

    model, tokenizer = tiny_gqa
    tasks = ["kvbench_recall_mc", "kvbench_prose_ppl"]
    out = {}
    for name, params in (("full", {}), ("minicache", {"gamma": 1.0})):
        lm = KvbenchLM(model=model, tokenizer=tokenizer, method_obj=build_method(name, **params), max_length=2048)
        out[name] = simple_evaluate(model=lm, tasks=tasks, limit=2, task_manager=task_manager(tasks),
                                    bootstrap_iters=0, random_seed=0)["results"]
    for task in tasks:
        for metric, value in out["full"][task].items():
            if isinstance(value, float):
                assert out["minicache"][task][metric] == pytest.approx(value, rel=1e-4, abs=1e-4), (task, metric)
