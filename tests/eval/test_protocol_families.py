"""The protocol on the families whose attention differs from Llama's: Gemma-style alternating sliding/global
layers (Gemma-2 also soft-caps) and Qwen3's per-head q/k norm. A method's no-op setting equals ``full`` through
:class:`~kvbench.eval.protocol.CompressionProtocol`, ``full`` equals the model's own forward and ``generate``,
and a context longer than the window shows the window is really on (the checks could fail)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache

from kvbench.cache import full_cache_nbytes
from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import build_method
from tests.conftest import random_ids
from tests.families import WINDOW, tiny_family_config

pytestmark = pytest.mark.usefixtures("no_grad")
CONTEXT = 3 * WINDOW  # longer than the window, so sliding layers drop tokens


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_full_through_the_protocol_equals_the_alternating_models_own_forward_and_generate(family, family_model):
    model, _ = family_model(family)
    ids = random_ids(CONTEXT + 4)
    protocol = CompressionProtocol(model, build_method("full"))
    context, continuation = ids[0, :CONTEXT].tolist(), ids[0, CONTEXT:].tolist()
    (got, _), = protocol.score_continuations(context, [continuation])
    logprobs = torch.log_softmax(model(input_ids=ids).logits[0, CONTEXT - 1:-1], -1)
    assert got == pytest.approx(float(logprobs.gather(-1, torch.tensor(continuation)[:, None]).sum()), abs=1e-4)
    want = model.generate(ids[:, :CONTEXT], cache=DynamicCache(config=model.config), max_new_tokens=6, do_sample=False)
    assert protocol.generate(context, 6) == want[0, CONTEXT:].tolist()
    # what the cache holds: W - 1 tokens in each sliding layer, every token in each global one
    cache = protocol.prefill(context)
    assert [layer.keys.shape[-2] for layer in cache.layers] == [WINDOW - 1, CONTEXT, WINDOW - 1, CONTEXT]
    assert cache.nbytes() - 2 * 8 == full_cache_nbytes(model.config, CONTEXT, torch.float32)  # + 2 window sizes


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_the_sliding_window_is_on_a_model_without_it_scores_differently(family, family_model):
    model, _ = family_model(family)
    config = tiny_family_config(family)
    config.layer_types = ["full_attention"] * config.num_hidden_layers
    unwindowed = type(model)(config).eval()
    unwindowed.load_state_dict(model.state_dict())
    ids = random_ids(CONTEXT)
    assert not torch.allclose(model(input_ids=ids).logits[0, -1], unwindowed(input_ids=ids).logits[0, -1], atol=1e-4)


@pytest.mark.parametrize("family, name, params", [
    ("gemma2", "meanpool_gqa", dict(kv_heads=2)), ("gemma2", "svd_gqa", dict(kv_heads=2, calibration_sequences=1,
                                                                            calibration_length=32, reuse_calibration=False)),
    ("gemma3", "meanpool_gqa", dict(kv_heads=2)),
    ("qwen3", "meanpool_gqa", dict(kv_heads=2)), ("qwen3", "svd_gqa", dict(kv_heads=2, calibration_sequences=1,
                                                                          calibration_length=32, reuse_calibration=False)),
    ("qwen3", "h2o", dict(heavy_ratio=1.0, recent_ratio=1.0)), ("qwen3", "minicache", dict(start_layer=1, gamma=1.0)),
    ("qwen3", "kivi", dict(group_size=8, residual_length=128)),
])
def test_a_no_op_setting_equals_full_through_the_protocol(family, name, params, family_model):
    model, tokenizer = family_model(family)
    method = build_method(name, **params)
    ours = CompressionProtocol(method.apply(copy.deepcopy(model), tokenizer), method, model.config)
    full = CompressionProtocol(model, build_method("full"))
    context, continuation = random_ids(CONTEXT)[0].tolist(), random_ids(5, seed=1)[0].tolist()
    (got, got_greedy), = ours.score_continuations(context, [continuation])
    (want, want_greedy), = full.score_continuations(context, [continuation])
    assert got == pytest.approx(want, abs=1e-4) and got_greedy == want_greedy
    assert ours.generate(context, 6) == full.generate(context, 6)


def test_qwen3_q_k_norm_matters_so_the_identity_could_fail(family_model):
    model, _ = family_model("qwen3")
    broken = copy.deepcopy(model)
    for layer in broken.model.layers:
        layer.self_attn.k_norm.weight.data.mul_(3.0)
    ids = random_ids(CONTEXT)
    assert not torch.allclose(model(input_ids=ids).logits, broken(input_ids=ids).logits, atol=1e-3)
