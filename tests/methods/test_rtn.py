"""``method=rtn``: per-token keys and values, no residual window: every token is quantized right after the forward
that produced it; bad input is one clear line."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from kvbench.methods import MethodConfigError, build_method
from tests.conftest import method_from_config, random_ids

pytestmark = pytest.mark.usefixtures("no_grad")


def test_every_token_is_quantized_per_token_after_the_forward_that_produced_it(tiny_gqa):
    model, _ = tiny_gqa
    method = build_method("rtn", nbits=2, group_size=8)
    tokens = random_ids(40)
    cache = method.new_cache(model)
    prefill = model(input_ids=tokens[:, :30], cache=cache).logits
    reference = DynamicCache(config=model.config)
    torch.testing.assert_close(prefill, model(input_ids=tokens[:, :30], cache=reference).logits, rtol=0, atol=0)
    layer = cache.layers[1]
    assert layer.key_stream.quantized_tokens == layer.value_stream.quantized_tokens == 30
    assert layer.key_stream.residual is None and layer.value_stream.residual is None
    assert layer.key_stream.scale.shape == (1, 2, 30, 2)  # per token: 16 channels in 2 groups of 8
    later = model(input_ids=tokens[:, 30:], cache=cache).logits
    assert not torch.allclose(later, model(input_ids=tokens[:, 30:], cache=reference).logits, atol=1e-4)
    assert layer.key_stream.quantized_tokens == 40


def test_two_bit_rtn_loses_more_than_two_bit_kivi_on_the_same_tokens(smollm2_shared):
    """Per-token keys are RTN's weakness (KIVI Sec. 3): at 2 bits it is further from ``full`` than KIVI-2."""
    model, _ = smollm2_shared
    tokens = random_ids(140, seed=4, vocab=model.config.vocab_size)
    full = model(input_ids=tokens, cache=DynamicCache(config=model.config)).logits[:, 120:].log_softmax(-1)
    gaps = {}
    for name, params in (("rtn", dict(nbits=2)), ("kivi", dict(nbits=2, residual_length=0))):
        method = build_method(name, **params)
        cache = method.new_cache(model)
        model(input_ids=tokens[:, :120], cache=cache)
        got = model(input_ids=tokens[:, 120:], cache=cache).logits.log_softmax(-1)
        gaps[name] = torch.nn.functional.kl_div(got, full, log_target=True, reduction="batchmean").item()
    assert gaps["rtn"] > 2 * gaps["kivi"] > 0


@pytest.mark.parametrize("params,message", [
    (dict(nbits=1), r"^method.nbits=1 is not supported \(choose one of: 2, 4\)$"),
    (dict(group_size=0), r"method.group_size=0 must be a positive number"),
    (dict(residual_length=128), r"method=rtn has no parameter residual_length \(valid: group_size, nbits\)"),
])
def test_bad_parameters_raise_one_clear_line(params, message):
    with pytest.raises(MethodConfigError, match=message):
        build_method("rtn", **params)


def test_group_size_must_divide_the_head_dim_and_hydra_configs_compose(tiny_gqa):
    model, _ = tiny_gqa
    with pytest.raises(MethodConfigError, match=r"method.group_size=32 must divide the model's head dim 16"):
        build_method("rtn").check_model(model.config)
    assert (method_from_config("method=rtn").nbits, method_from_config("method=rtn_2bit").nbits) == (4, 2)
