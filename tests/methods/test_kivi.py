"""``method=kivi`` on real (tiny random / bundled) models: a residual covering the sequence is ``full`` (logits,
greedy tokens, the protocol, lm-eval), decoding quantizes each group as it completes, bytes follow the
closed-form formula, bad input is one clear line."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from kvbench.cache.kivi import QuantizedKVCache
from kvbench.cache.quantization import quantized_nbytes
from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import MethodConfigError, build_method
from tests.conftest import method_from_config, random_ids

pytestmark = pytest.mark.usefixtures("no_grad")

TINY = dict(group_size=8)  # the tiny models' head dim is 16


def _full_logits(model, tokens):
    return model(input_ids=tokens, cache=DynamicCache(config=model.config)).logits


def _protocol_logits(model, method, context, continuation):
    cache = method.new_cache(model)
    model(input_ids=context, cache=cache)
    method.compress(cache)
    return model(input_ids=continuation, cache=cache).logits, cache


@pytest.mark.parametrize("kind", ["llama-gqa", "llama-mha"])
@pytest.mark.parametrize("nbits", [2, 4])
def test_residual_covering_the_sequence_reproduces_full_logits_and_greedy_tokens(kind, nbits):
    from kvbench.models import tiny_llama

    model, _ = tiny_llama(kind, seed=0)
    method = build_method("kivi", nbits=nbits, residual_length=64, **TINY)  # 40 + 16 generated tokens ≤ 64
    tokens = random_ids(40)
    got, cache = _protocol_logits(model, method, tokens[:, :30], tokens[:, 30:])
    assert isinstance(cache, QuantizedKVCache) and cache.layers[0].key_stream.quantized_tokens == 0
    assert torch.equal(got, _protocol_logits(model, build_method("full"), tokens[:, :30], tokens[:, 30:])[0])
    torch.testing.assert_close(got, _full_logits(model, tokens)[:, 30:], rtol=1e-5, atol=1e-5)  # one forward
    want = model.generate(tokens, cache=DynamicCache(config=model.config), max_new_tokens=16, do_sample=False)
    assert torch.equal(model.generate(tokens, cache=method.new_cache(model), max_new_tokens=16, do_sample=False), want)


def test_residual_covering_the_sequence_matches_full_under_the_kvbench_protocol(tiny_gqa):
    model, _ = tiny_gqa
    context, conts, text = list(range(10, 60)), [[1, 2, 3], [4, 5], [6, 7, 8, 9]], list(range(70, 110))
    results = {}
    for label, method in (("full", build_method("full")), ("kivi", build_method("kivi", residual_length=128, **TINY))):
        protocol = CompressionProtocol(model, method)
        results[label] = (protocol.score_continuations(context, conts), protocol.stream_logprob(context, text, 8),
                          protocol.generate(context, 12))
    assert results["kivi"] == results["full"]


def test_residual_covering_the_sequence_matches_full_through_lm_eval():
    """``lm_eval --model kvbench --model_args model=tiny_llama,method=kivi,method.residual_length=…``, in process."""
    from lm_eval import simple_evaluate

    from kvbench.lm_eval_model import KvbenchCLIModel
    from kvbench.suites.lm_eval import task_manager

    tasks = ["kvbench_recall_mc", "kvbench_prose_ppl"]
    out = {}
    for method, args in (("full", {}), ("kivi", {"method.residual_length": 4096, "method.group_size": 8})):
        lm = KvbenchCLIModel(model="tiny_llama", method=method, **args)
        out[method] = simple_evaluate(model=lm, tasks=tasks, limit=2, task_manager=task_manager(tasks),
                                      bootstrap_iters=0, random_seed=0)["results"]
        if method == "kivi":
            assert lm.method.residual_length == 4096 and lm.protocol.stats.stored_bytes == lm.protocol.stats.full_bytes
    for task in tasks:
        for metric, value in out["full"][task].items():
            if isinstance(value, float):
                assert out["kivi"][task][metric] == value, (task, metric)


def test_decoding_quantizes_each_group_as_it_completes_with_generate_and_the_protocol(tiny_gqa):
    model, _ = tiny_gqa
    method = build_method("kivi", residual_length=16, **TINY)
    prompt = random_ids(40, seed=1)
    # explicit greedy decoding, checking the rule after every forward: keys [0, ⌊T/R⌋·R), values [0, T − R)
    cache, by_hand = method.new_cache(model), []
    logits = model(input_ids=prompt, cache=cache).logits
    T = 40
    for _ in range(20):
        layer = cache.layers[2]
        assert (layer.key_stream.quantized_tokens, layer.value_stream.quantized_tokens) == (T // 16 * 16, T - 16)
        by_hand.append(int(logits[0, -1].argmax()))
        logits = model(input_ids=torch.tensor([[by_hand[-1]]]), cache=cache).logits
        T += 1
    generated = model.generate(prompt, cache=(gen_cache := method.new_cache(model)), max_new_tokens=20, do_sample=False)
    assert generated[0, 40:].tolist() == by_hand
    assert gen_cache.layers[0].key_stream.quantized_tokens == 48 and gen_cache.get_seq_length() == 59
    # the protocol (prefill the context minus its last token, compress, decode) on the same rule
    protocol = CompressionProtocol(model, method)
    assert len(protocol.generate(prompt[0].tolist(), 20)) == 20
    assert protocol.stats.stored_bytes < protocol.stats.full_bytes


def test_quantization_is_lossy_and_four_bits_stay_closer_to_full_than_two(tiny_gqa):
    model, _ = tiny_gqa
    tokens = random_ids(96, seed=2)
    full = _full_logits(model, tokens)[:, 80:]
    errors = {}
    for nbits in (2, 4):
        got, _ = _protocol_logits(model, build_method("kivi", nbits=nbits, residual_length=16, **TINY),
                                  tokens[:, :80], tokens[:, 80:])
        errors[nbits] = (got - full).abs().max().item()
    assert 0 < errors[4] < errors[2]


@pytest.mark.parametrize("name,nbits", [("kivi", 2), ("kivi", 4), ("rtn", 2), ("rtn", 4)])
def test_bundled_model_bytes_equal_codes_plus_scales_plus_zero_points_plus_residual(smollm2_shared, name, nbits):
    model, _ = smollm2_shared  # 30 layers, 3 KV heads, head dim 64, float32: scales and zero points in float32
    N = 300
    protocol = CompressionProtocol(model, build_method(name, nbits=nbits))
    protocol.prefill(random_ids(N, seed=3, vocab=model.config.vocab_size)[0].tolist())
    R = 128 if name == "kivi" else 0
    key_q, value_q = (N // R * R, N - R) if R else (N, N)
    per_layer = sum(quantized_nbytes(nq, 3, 64, nbits, 32, elem=4) + 3 * 64 * (N - nq) * 4 for nq in (key_q, value_q))
    assert protocol.stats.stored_bytes == pytest.approx(30 * per_layer, rel=0.01)
    if name == "rtn":  # no residual: b/32 + 2/32 of float32 per value
        assert protocol.stats.ratio == pytest.approx(32 / (nbits + 2))


@pytest.mark.parametrize("params,message", [
    (dict(nbits=3), r"^method.nbits=3 is not supported \(choose one of: 2, 4\)$"),
    (dict(nbits=8), r"method.nbits=8 is not supported \(choose one of: 2, 4\)"),
    (dict(group_size=0), r"method.group_size=0 must be a positive number of values per scale and zero point"),
    (dict(group_size=-32), r"method.group_size=-32 must be a positive number"),
    (dict(residual_length=-1), r"method.residual_length=-1 must be a token count >= 0"),
    (dict(residual_length=100), r"method.residual_length=100 must be a multiple of method.group_size=32 .*96 or 128"),
    (dict(window=4), r"method=kivi has no parameter window"),
])
def test_bad_parameters_raise_one_clear_line(params, message):
    with pytest.raises(MethodConfigError, match=message) as error:
        build_method("kivi", **params)
    assert "\n" not in str(error.value)


def test_group_size_must_divide_the_models_head_dim(tiny_gqa):
    model, _ = tiny_gqa
    with pytest.raises(MethodConfigError, match=r"method.group_size=32 must divide the model's head dim 16 .*8 or 16"):
        build_method("kivi").check_model(model.config)
    with pytest.raises(MethodConfigError, match=r"method.group_size=32 must divide the model's head dim 16"):
        build_method("kivi").new_cache(model)
    build_method("kivi", group_size=16).check_model(model.config)


def test_hydra_configs_compose_to_the_papers_defaults():
    kivi = method_from_config("method=kivi")
    assert (kivi.nbits, kivi.group_size, kivi.residual_length) == (2, 32, 128)
    assert method_from_config("method=kivi_4bit").nbits == 4
    assert method_from_config("method=kivi", "method.residual_length=256").changed_params() == {"residual_length": 256}
    with pytest.raises(Exception, match="residual_length"):
        method_from_config("method=kivi", "method.residual_length=lots")


def test_a_reserved_cache_decodes_the_same_logits_as_an_unreserved_one_without_reallocating(tiny_gqa):
    model, _ = tiny_gqa
    method = build_method("kivi", residual_length=16, **TINY)
    protocol = CompressionProtocol(model, method, model.config)
    prompts = [random_ids(40, seed=s)[0].tolist() for s in range(2)]
    reserved, exact = protocol.prefill_batch(prompts, then=24), protocol.prefill_batch(prompts)
    streams = [s for layer in reserved.layers for s in (layer.key_stream, layer.value_stream)]
    buffers = [a.data_ptr() for s in streams for store in s.stores() for a in store.arrays if a is not None]
    for step in range(24):  # the keys' residual reaches R = 16 and flushes, the values quantize one per step
        token = random_ids(2, seed=100 + step).view(2, 1)
        got, want = protocol.forward_batch(reserved, token), protocol.forward_batch(exact, token)
        assert torch.equal(got, want), f"decode step {step}"
    assert [a.data_ptr() for s in streams for store in s.stores() for a in store.arrays if a is not None] == buffers
    assert reserved.layers[0].key_stream.quantized_tokens == 64 and reserved.nbytes() > exact.nbytes()
