"""method=combined end to end: no-op components reproduce full, measured bytes vs the product of the
components' ratios, the protocol (deep copies, generation), axis choices, Hydra config, bad input."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from kvbench.cache import cache_nbytes, full_cache_nbytes
from kvbench.cache.preallocated import PreallocatedCache
from kvbench.eval.component_ratios import component_ratios
from kvbench.cache.combined import CombinedCache
from kvbench.cache.h2o import H2OCache
from kvbench.cache.minicache import MergedPairCache
from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import MethodConfigError, build_method
from tests.conftest import method_from_config, random_ids

SVD_FAST = dict(calibration_sequences=2, calibration_length=64, reuse_calibration=False)
NO_OP_LAYERS = dict(start_layer=1, gamma=1.0)
NO_OP_TOKENS = dict(heavy_ratio=1.0, recent_ratio=1.0)  # budget 2x the prompt


pytestmark = pytest.mark.usefixtures("no_grad")


def _component_ratios(method, converted, ids, reference_config):
    """Each component's ratio alone, their product and the measured ratio, as the runner records them."""
    protocol = CompressionProtocol(converted, method, reference_config)
    protocol.prefill(ids)
    return component_ratios(protocol)


def _applied(model, tokenizer, **params):
    method = build_method("combined", **params)
    return method, method.apply(copy.deepcopy(model), tokenizer)


@pytest.mark.parametrize("kind,heads,norm", [
    ("llama-gqa", "svd_gqa", "concat"), ("llama-gqa", "meanpool_gqa", "per_head"), ("llama-mha", "meanpool_gqa", "concat"),
])
def test_no_op_components_reproduce_full_logits_and_greedy_tokens(kind, heads, norm):
    from kvbench.models import tiny_llama

    model, tok = tiny_llama(kind, seed=0)
    n_kv = model.config.num_key_value_heads
    heads_params = dict(kv_heads=n_kv, **(SVD_FAST if heads == "svd_gqa" else {}))
    method, converted = _applied(model, tok, heads=heads, heads_params=heads_params,
                                 layers_params=dict(NO_OP_LAYERS, norm=norm), tokens_params=NO_OP_TOKENS)
    tokens = random_ids(40)
    cache = method.new_cache(converted)
    assert isinstance(cache, CombinedCache)
    got = converted(input_ids=tokens[:, :30], cache=cache).logits
    method.compress(cache)
    got = torch.cat([got, converted(input_ids=tokens[:, 30:], cache=cache).logits], dim=1)
    torch.testing.assert_close(got, model(input_ids=tokens).logits, rtol=1e-4, atol=1e-4)
    want = model.generate(tokens, cache=DynamicCache(config=model.config), max_new_tokens=8, do_sample=False)
    got_gen = converted.generate(tokens, cache=method.new_cache(converted), max_new_tokens=8, do_sample=False)
    assert torch.equal(got_gen, want)


@pytest.mark.parametrize("norm", ["concat", "per_head"])
def test_measured_bytes_are_within_5_percent_of_the_product_of_component_ratios(tiny_gqa, norm):
    model, tok = tiny_gqa
    method, converted = _applied(model, tok, heads_params=dict(kv_heads=1, **SVD_FAST),
                                 layers_params=dict(norm=norm))  # svd 2->1 heads, minicache L/2, h2o 10%+10%
    ratios = _component_ratios(method, converted, random_ids(300)[0].tolist(), model.config)
    assert set(ratios) == {"svd_gqa", "minicache", "h2o", "product", "measured"}
    assert ratios["svd_gqa"] == 2.0 and 1.1 < ratios["minicache"] < 1.4 and 4 < ratios["h2o"] < 5
    assert ratios["product"] == pytest.approx(ratios["svd_gqa"] * ratios["minicache"] * ratios["h2o"])
    assert ratios["measured"] == pytest.approx(ratios["product"], rel=0.05)
    # "measured" is what the protocol records for the combined method
    protocol = CompressionProtocol(converted, method, model.config)
    protocol.prefill(random_ids(300)[0].tolist())
    assert protocol.stats.full_bytes / protocol.stats.stored_bytes == ratios["measured"]


def test_protocol_scores_deep_copied_continuations_and_generates_like_a_fresh_cache(tiny_gqa):
    model, tok = tiny_gqa
    method, converted = _applied(model, tok, heads="meanpool_gqa", layers_params=dict(start_layer=1, gamma=0.1))
    context, continuations = random_ids(50, seed=1)[0].tolist(), [[5, 6, 7, 8], [9, 10]]
    scored = CompressionProtocol(converted, method, model.config).score_continuations(context, continuations)
    for continuation, (logprob, _) in zip(continuations, scored):
        fresh = CompressionProtocol(converted, method, model.config).score_continuations(context, [continuation])
        assert fresh[0][0] == pytest.approx(logprob, abs=1e-5)
    protocol = CompressionProtocol(converted, method, model.config)
    generated = protocol.generate(context, max_new_tokens=8)
    cache = method.new_cache(converted)
    converted(input_ids=torch.tensor([context[:-1]]), cache=cache)
    method.compress(cache)
    logits, by_hand = converted(input_ids=torch.tensor([context[-1:]]), cache=cache).logits, []
    for _ in range(8):
        by_hand.append(int(logits[0, -1].argmax()))
        logits = converted(input_ids=torch.tensor([[by_hand[-1]]]), cache=cache).logits
    assert generated == by_hand
    assert protocol.stats.stored_bytes < protocol.stats.full_bytes / 8


@pytest.mark.parametrize("axes,cache_type", [(dict(layers=None), H2OCache), (dict(tokens=None), MergedPairCache),
                                             (dict(layers=None, tokens=None), PreallocatedCache)])
def test_a_null_axis_is_skipped(tiny_gqa, axes, cache_type):
    model, tok = tiny_gqa
    method, converted = _applied(model, tok, heads="meanpool_gqa", **axes)
    assert set(method.components()) == {"heads", "layers", "tokens"} - set(axes)
    cache = method.new_cache(converted)
    assert type(cache) is cache_type
    converted(input_ids=random_ids(20), cache=cache)
    method.compress(cache)
    assert converted.config.num_key_value_heads == 1 and cache_nbytes(cache) > 0


@pytest.mark.parametrize("params,message", [
    (dict(tokens="minicache"), "method.tokens='minicache' is a cross-layer merging method: it belongs on "
                               "method.layers"),
    (dict(heads="h2o"), "method.heads='h2o' is a token-eviction method: it belongs on method.tokens"),
    (dict(layers="svd_gqa"), "method.layers='svd_gqa' is a KV-head reduction method: it belongs on method.heads"),
    (dict(tokens="quest"), "method.tokens='quest' is not a kvbench method .*method.tokens takes one of: .*h2o"),
    (dict(tokens="snapkv"), "method.tokens='snapkv' cannot evict merged pairs with method.layers='minicache'.*"
                            "only h2o supplies .*set method.layers=null"),
    (dict(layers="full"), "method.layers='full' cannot be combined .*minicache, or null"),
    (dict(tokens_params=dict(heavy_ratio=2.0)), r"method.tokens_params.heavy_ratio=2.0 must lie in \[0, 1\]"),
    (dict(layers_params=dict(gamma=1.5)), r"method.layers_params.gamma=1.5 must be in \[0, 1\]"),
    (dict(layers_params=dict(norm="both")), "method.layers_params.norm='both'.*concat, per_head"),
    (dict(heads_params=dict(kv_heads=0)), "method.heads_params.kv_heads=0 must be a positive number"),
    (dict(heads="meanpool_gqa", heads_params=dict(kv_heads=1, rope="auto")), "no parameter rope .*valid: kv_heads"),
    (dict(tokens_params=[0.1]), "method.tokens_params=.*must be a mapping"),
])
def test_bad_combinations_and_parameters_are_rejected_before_model_load(params, message):
    with pytest.raises(MethodConfigError, match=message):
        build_method("combined", **params)


def test_model_checks_name_the_component_parameter(tiny_gqa):
    model, _ = tiny_gqa
    with pytest.raises(MethodConfigError, match=r"method.heads_params.kv_heads=3 is larger .*choose 1 or 2"):
        build_method("combined", heads="meanpool_gqa", heads_params=dict(kv_heads=3)).check_model(model.config)
    with pytest.raises(MethodConfigError, match=r"method.layers_params.start_layer=3 must be in \[1, 2\]"):
        build_method("combined", layers_params=dict(start_layer=3)).check_model(model.config)


def test_hydra_config_composes_and_overrides_reach_the_components(tiny_gqa):
    method = method_from_config("method=combined")
    assert (method.heads, method.layers, method.tokens) == ("svd_gqa", "minicache", "h2o")
    assert method.components()["heads"].kv_heads == 1 and method.components()["layers"].gamma == 0.05
    assert method.components()["tokens"].budget().heavy_ratio == 0.1
    method = method_from_config("method=combined", "method.heads=meanpool_gqa", "method.tokens_params.heavy_ratio=0.2",
                                "method.layers_params.norm=per_head")
    assert type(method.components()["heads"]).__name__ == "MeanPoolGQA"
    assert method.components()["tokens"].heavy_ratio == 0.2 and method.components()["layers"].norm == "per_head"
    assert set(method_from_config("method=combined", "method.layers=null").components()) == {"heads", "tokens"}
    model, tok = tiny_gqa
    method.check_model(model.config)
    converted = method.apply(model, tok)
    cache = method.new_cache(converted)
    converted(input_ids=random_ids(30), cache=cache)
    method.compress(cache)
    assert cache.stored_length(3) == 9  # 6 heavy + 3 recent of 30


def test_bundled_model_measured_bytes_match_the_product_of_component_ratios(smollm2):
    model, tok = smollm2
    reference_config = copy.deepcopy(model.config)
    method = build_method("combined", heads="meanpool_gqa")  # SVD calibration is too slow for a unit test
    method.check_model(model.config)
    converted = method.apply(model, tok)
    text = "The quick brown fox jumps over the lazy dog. " * 30
    ids = tok(text)["input_ids"][:160]
    ratios = _component_ratios(method, converted, ids, reference_config)
    assert ratios["meanpool_gqa"] == 3.0
    assert ratios["measured"] == pytest.approx(ratios["product"], rel=0.05)
    assert ratios["measured"] > 15  # 3 (heads) x ~1.26 (layers) x ~4.8 (tokens)


def test_changed_params_name_only_what_differs_from_each_components_defaults():
    from kvbench.methods import build_method

    assert build_method("combined", layers_params={"t": 0.6, "gamma": 0.05}).changed_params() == {}
    changed = build_method("combined", tokens_params={"heavy_ratio": 0.2}, layers=None).changed_params()
    assert changed == {"layers": None, "tokens_params": {"heavy_ratio": 0.2}}


# -- the bits axis (METHODS.md §6): quantize what the other axes store -------------------------------------
KIVI_TINY = dict(group_size=8, residual_length=16)


def test_bits_with_no_op_layers_and_a_residual_covering_the_sequence_reproduces_full(tiny_gqa):
    model, tok = tiny_gqa
    method, converted = _applied(model, tok, heads=None, tokens=None, layers_params=NO_OP_LAYERS, bits="kivi",
                                 bits_params=dict(group_size=8, residual_length=64))
    tokens = random_ids(40)
    cache = method.new_cache(converted)
    assert type(cache).__name__ == "QuantizedMergedPairCache"
    got = converted(input_ids=tokens[:, :30], cache=cache).logits
    method.compress(cache)
    got = torch.cat([got, converted(input_ids=tokens[:, 30:], cache=cache).logits], dim=1)
    torch.testing.assert_close(got, model(input_ids=tokens).logits, rtol=1e-4, atol=1e-4)
    want = model.generate(tokens, cache=DynamicCache(config=model.config), max_new_tokens=8, do_sample=False)
    assert torch.equal(converted.generate(tokens, cache=method.new_cache(converted), max_new_tokens=8,
                                          do_sample=False), want)


@pytest.mark.parametrize("bits,params", [("kivi", dict(nbits=2)), ("kivi", dict(nbits=4)), ("rtn", dict(nbits=4))])
def test_bundled_model_minicache_with_bits_bytes_follow_the_closed_form_formula(smollm2_shared, bits, params):
    """16 quantized layers (0-14 and the unpaired 29) + 7 pairs whose directions are quantized streams, with
    full-precision norms (one per token and layer, concat) and ⌈γN⌉ retained tokens of both layers + int32 index,
    quantized per token once their position leaves the window (how many did is read from the pair)."""
    from kvbench.cache.quantization import quantized_nbytes

    model, _ = smollm2_shared
    N, h, d, e, b = 300, 3, 64, 4, params["nbits"]
    method = build_method("combined", heads=None, tokens=None, bits=bits, bits_params=params)
    protocol = CompressionProtocol(model, method, model.config)
    cache = protocol.prefill(random_ids(N, seed=5, vocab=model.config.vocab_size)[0].tolist())
    R = 128 if bits == "kivi" else 0
    quantized = [N // R * R if R else N, N - R]  # keys, values
    layer = sum(quantized_nbytes(q, h, d, b, 32, e) + h * d * (N - q) * e for q in quantized)
    M = -(-5 * N // 100)  # ⌈0.05·N⌉
    pairs = 7 * (layer + 2 * (2 * N * e + M * 4))  # directions, norms of both layers, retained indices
    for pair in cache.pairs:
        for store in (pair.keys, pair.values):
            mq = store.retained_quantized
            pairs += 2 * (quantized_nbytes(mq, h, d, b, 32, e) + (M - mq) * h * d * e)  # retained, both layers
    assert protocol.stats.stored_bytes == pytest.approx(16 * layer + pairs, rel=0.01)
    if params["nbits"] == 4 and bits == "kivi":  # the paper's MiniCache + KIVI-4
        # norms and retained tokens in the window stay exact: the product of the components' ratios is an upper bound
        ratios = component_ratios(protocol)
        assert ratios["measured"] < ratios["product"] < 1.1 * ratios["measured"]


@pytest.mark.parametrize("axes,cache_type", [(dict(heads=None, layers=None), "QuantizedKVCache"),
                                             (dict(heads="meanpool_gqa", layers=None), "QuantizedKVCache"),
                                             (dict(heads="meanpool_gqa"), "QuantizedMergedPairCache")])
def test_the_bits_component_quantizes_the_converted_model_or_the_merged_cache(tiny_gqa, axes, cache_type):
    model, tok = tiny_gqa
    method, converted = _applied(model, tok, tokens=None, bits="rtn", bits_params=dict(group_size=8), **axes)
    cache = method.new_cache(converted)
    assert type(cache).__name__ == cache_type
    converted(input_ids=random_ids(40), cache=cache)
    method.compress(cache)
    kv_heads = converted.config.num_key_value_heads
    assert cache.layers[0].key_stream.codes.shape == (1, kv_heads, 40, 16 * 4 // 8)
    assert cache_nbytes(cache) < 0.5 * full_cache_nbytes(model.config, 40, torch.float32)


def _tokens_then(model, tok, tokens, tokens_params, ids, split, **bits):
    """Logits of a prefill of ids[:, :split] (then compress) and a forward of the rest, and the cache."""
    params = dict(heads=None, layers=None, tokens=tokens, tokens_params=tokens_params, **bits)
    method, converted = _applied(model, tok, **params)
    cache = method.new_cache(converted)
    got = converted(input_ids=ids[:, :split], cache=cache).logits
    method.compress(cache)
    if split < ids.shape[1]:
        got = torch.cat([got, converted(input_ids=ids[:, split:], cache=cache).logits], dim=1)
    return got, cache, method, converted


@pytest.mark.parametrize("tokens,tokens_params", [
    ("h2o", dict(heavy_ratio=0.2, recent_ratio=0.2)), ("snapkv", dict(budget_tokens=12, window=4)),
    ("streaming_llm", dict(budget_tokens=12)), ("tova", dict(budget_tokens=12)), ("knorm", dict(budget_tokens=12)),
])
def test_tokens_with_bits_and_a_residual_covering_the_sequence_reproduces_the_tokens_method(tiny_gqa, tokens,
                                                                                          tokens_params):
    model, tok = tiny_gqa
    ids = random_ids(40)
    want, _, _, _ = _tokens_then(model, tok, tokens, tokens_params, ids, 30)
    got, cache, method, converted = _tokens_then(model, tok, tokens, tokens_params, ids, 30, bits="kivi",
                                                 bits_params=dict(group_size=8, residual_length=64))
    assert cache.layers[0].quantization is not None and cache.layers[0].key_stream.quantized_tokens == 0
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    plain = build_method(tokens, **tokens_params)
    plain_model = plain.apply(copy.deepcopy(model), tok)
    want_ids = plain_model.generate(ids, cache=plain.new_cache(plain_model), max_new_tokens=6, do_sample=False)
    assert torch.equal(converted.generate(ids, cache=method.new_cache(converted), max_new_tokens=6,
                                          do_sample=False), want_ids)


def test_tokens_with_bits_store_the_kept_tokens_as_codes_bytes_by_the_closed_form_formula(tiny_gqa):
    """H2O at 20% + 20% of 40 tokens keeps 16 per KV head; RTN-2 (R = 0) stores them as 2-bit codes with a scale
    and zero point per 8 channels, beside H2O's positions (int32) and scores (float32)."""
    from kvbench.cache.quantization import quantized_nbytes

    model, tok = tiny_gqa
    _, cache, _, _ = _tokens_then(model, tok, "h2o", dict(heavy_ratio=0.2, recent_ratio=0.2), random_ids(40), 40,
                                  bits="rtn", bits_params=dict(nbits=2, group_size=8))
    h, d, kept = 2, 16, 16
    layer = 2 * quantized_nbytes(kept, h, d, 2, 8, elem=4) + h * kept * (4 + 4)
    assert cache_nbytes(cache) == 4 * layer
    assert all(layer.key_stream.quantized_tokens == kept and layer.key_stream.residual is None for layer in cache.layers)


def test_tokens_with_bits_is_lossy_and_four_bits_stay_closer_to_the_tokens_method_than_two(tiny_gqa):
    model, tok = tiny_gqa
    ids, params = random_ids(96, seed=2), dict(heavy_ratio=0.3, recent_ratio=0.2)
    want, _, _, _ = _tokens_then(model, tok, "h2o", params, ids, 80)
    errors = {}
    for nbits in (2, 4):
        got, _, _, _ = _tokens_then(model, tok, "h2o", params, ids, 80, bits="kivi",
                                    bits_params=dict(nbits=nbits, group_size=8, residual_length=8))
        errors[nbits] = (got[:, 80:] - want[:, 80:]).abs().max().item()
    assert 0 < errors[4] < errors[2]


@pytest.mark.parametrize("params,message", [
    (dict(layers="kivi"), "method.layers='kivi' is a quantization method: it belongs on method.bits"),
    (dict(bits="minicache", tokens=None), "method.bits='minicache' is a cross-layer merging method: it belongs on "
                                          "method.layers"),
    (dict(bits="h2o", tokens=None), "method.bits='h2o' is a token-eviction method: it belongs on method.tokens"),
    (dict(bits="full", tokens=None), "method.bits='full' cannot be combined .*kivi, rtn, or null"),
    (dict(bits="kivi"), "method.bits='kivi' with both method.tokens='h2o' and method.layers='minicache' is not "
                        "supported"),
    (dict(bits="kivi", tokens=None, bits_params=dict(nbits=3)), r"^method.bits_params.nbits=3 is not supported "
                                                               r"\(choose one of: 2, 4\)$"),
    (dict(bits="kivi", tokens=None, bits_params=dict(residual_length=-1)),
     "method.bits_params.residual_length=-1 must be a token count >= 0"),
    (dict(bits="rtn", tokens=None, bits_params=dict(group_size=0)), "method.bits_params.group_size=0 must be positive"
                                                                    "|method.bits_params.group_size=0 must be a positive"),
])
def test_bad_bits_combinations_are_one_clear_line(params, message):
    with pytest.raises(MethodConfigError, match=message) as error:
        build_method("combined", **params)
    assert "\n" not in str(error.value)


def test_bits_group_size_is_checked_against_the_models_head_dim(tiny_gqa):
    model, _ = tiny_gqa
    with pytest.raises(MethodConfigError, match=r"method.bits_params.group_size=32 must divide the model's head dim 16"):
        build_method("combined", heads=None, tokens=None, bits="kivi").check_model(model.config)


def test_minicache_kivi_config_is_the_papers_minicache_on_4_bit_kivi(smollm2_shared):
    model, _ = smollm2_shared
    method = method_from_config("method=minicache_kivi")
    components = method.components()
    assert set(components) == {"layers", "bits"}
    assert components["bits"].name == "kivi" and components["bits"].nbits == 4
    assert components["layers"].gamma == 0.05 and components["layers"].start_layer is None
    assert method.changed_params() == {"heads": None, "tokens": None, "bits": "kivi", "bits_params": {"nbits": 4}}
    method.check_model(model.config)
    assert method_from_config("method=combined", "method.tokens=null", "method.bits=rtn").components()["bits"].nbits == 4


def test_a_simulated_component_is_refused_in_one_line():
    from kvbench.errors import MethodConfigError
    from kvbench.methods import build_method

    with pytest.raises(MethodConfigError) as error:
        build_method("combined", tokens="h2o", tokens_params={"protocol": "simulate"})
    assert "combined runs real caches only" in str(error.value) and "\n" not in str(error.value)
