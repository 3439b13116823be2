"""Batch > 1 is exact: a batch of B equal-length prompts gives what B separate batch-1 runs give, for every
method config (greedy tokens identical, logits within float tolerance, bytes additive); a padded batch is refused.

Every YAML in ``conf/method/`` is covered, so a method added later is tested here without editing this
file (only the tiny-model overrides below name methods: the tiny models' head dim is 16, so KIVI's groups shrink).
"""

from __future__ import annotations

import copy

import pytest
import torch

from kvbench.config import CONF_DIR
from kvbench.eval.protocol import CompressionProtocol, PaddingError, SinglePassError
from kvbench.methods import build_method
from tests.conftest import method_from_config, random_ids

pytestmark = pytest.mark.usefixtures("no_grad")

#: Overrides that fit the tiny models (head dim 16) and make every compression act within 64 + 20 tokens.
TINY = {
    "kivi": ["method.group_size=8", "method.residual_length=16"],
    "kivi_4bit": ["method.group_size=8", "method.residual_length=16"],
    "rtn": ["method.group_size=8"],
    "rtn_2bit": ["method.group_size=8"],
    "svd_gqa": ["method.calibration_sequences=2", "method.calibration_length=64", "method.reuse_calibration=false"],
    "combined": ["+method.heads_params.calibration_sequences=2", "+method.heads_params.calibration_length=64",
                 "+method.heads_params.reuse_calibration=false"],
    "minicache_kivi": ["method.bits_params.group_size=8", "method.bits_params.residual_length=16"],
}
# a config with LoRA recovery trains an adapter first (minutes on 2 cores): it runs in the slow tier
CONFIGS = [pytest.param(name, marks=pytest.mark.slow) if "lora" in name else name
           for name in sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))]
BATCH, CONTEXT, NEW = 3, 64, 20


def _applied(name, model, tokenizer):
    method = method_from_config(f"method={name}", *TINY.get(name, []))
    method.check_model(model.config)
    return method, method.apply(copy.deepcopy(model), tokenizer)


@pytest.mark.parametrize("name", CONFIGS)
def test_a_batch_equals_separate_batch_1_runs(name, tiny_gqa):
    model, tokenizer = tiny_gqa
    method, applied = _applied(name, model, tokenizer)
    if method.single_pass:  # H2O's masking simulation caches nothing: a batch is one clear error, not a number
        contexts = [random_ids(CONTEXT, seed=10 + i)[0].tolist() for i in range(BATCH)]
        with pytest.raises(SinglePassError, match=r"protocol=simulate .* no cache to fill in batches"):
            CompressionProtocol(applied, method, model.config).generate_batch(contexts, NEW)
        return
    contexts = [random_ids(CONTEXT, seed=10 + i)[0].tolist() for i in range(BATCH)]
    batched = CompressionProtocol(applied, method, model.config)
    tokens, logits = batched.generate_batch(contexts, NEW, return_logits=True)
    assert logits.shape == (BATCH, NEW, model.config.vocab_size)
    single_bytes = 0
    for i, context in enumerate(contexts):
        alone = CompressionProtocol(applied, method, model.config)
        own_tokens, own_logits = alone.generate_batch([context], NEW, return_logits=True)
        assert tokens[i] == own_tokens[0], f"row {i}"
        if i == 0:  # generate_batch of one row is the batch-1 API's generate
            assert own_tokens[0] == alone.generate(context, NEW)
        torch.testing.assert_close(logits[i], own_logits[0], rtol=1e-4, atol=1e-4)
        single_bytes += alone.stats.stored_bytes // (2 if i == 0 else 1)  # row 0 prefilled twice
    assert batched.stats.stored_bytes == single_bytes  # the cache of B prompts holds exactly what B caches hold
    assert batched.stats.prefill_tokens == BATCH * (CONTEXT - 1) and batched.stats.decode_tokens == BATCH * NEW


def test_the_check_can_fail_rows_decoded_from_different_contexts_differ(tiny_gqa):
    model, _ = tiny_gqa
    protocol = CompressionProtocol(model, build_method("full"))
    contexts = [random_ids(CONTEXT, seed=10 + i)[0].tolist() for i in range(2)]
    tokens, logits = protocol.generate_batch(contexts, 4, return_logits=True)
    assert not torch.allclose(logits[0], logits[1], atol=1e-4)


def test_each_row_stops_at_its_own_eos_as_batch_1_does(tiny_gqa):
    model, _ = tiny_gqa
    protocol = CompressionProtocol(model, build_method("full"))
    contexts = [random_ids(CONTEXT, seed=10 + i)[0].tolist() for i in range(BATCH)]
    free = protocol.generate_batch(contexts, 8)
    eos = free[0][2]  # row 0 generates this token third: make it an EOS
    got = protocol.generate_batch(contexts, 8, eos_token_ids=[eos])
    assert got == [protocol.generate(c, 8, eos_token_ids=[eos]) for c in contexts]
    assert len(got[0]) <= 3


def test_a_batch_that_would_need_padding_is_one_clear_error(tiny_gqa):
    model, _ = tiny_gqa
    protocol = CompressionProtocol(model, build_method("h2o"))
    with pytest.raises(PaddingError) as error:
        protocol.generate_batch([list(range(30)), list(range(31))], 2)
    message = str(error.value)
    assert "30, 31 tokens would need padding" in message and "\n" not in message
    with pytest.raises(PaddingError):
        protocol.prefill_batch([[1, 2, 3], [4, 5]])


def test_forced_rows_predict_the_given_tokens_as_teacher_forcing_does_beside_free_rows(tiny_gqa):
    from kvbench.eval.fidelity import teacher_forced_logprobs

    model, tokenizer = tiny_gqa
    method = build_method("h2o", heavy_ratio=1.0, recent_ratio=1.0, decode_budget_tokens=40, compress_every=1)
    applied = method.apply(copy.deepcopy(model), tokenizer)
    contexts = [random_ids(CONTEXT, seed=30 + i)[0].tolist() for i in range(2)]
    forced = random_ids(NEW, seed=40)[0].tolist()
    protocol = CompressionProtocol(applied, method, model.config)
    tokens, logits = protocol.generate_batch(contexts, NEW, return_logits=True, forced=[None, forced])
    free = CompressionProtocol(applied, method, model.config).generate_batch(contexts[:1], NEW)
    want = teacher_forced_logprobs(CompressionProtocol(applied, method, model.config), contexts[1:], [forced])
    assert tokens[0] == free[0] and tokens[1] == forced
    torch.testing.assert_close(torch.log_softmax(logits[1:], dim=-1), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="one entry per context"):
        protocol.generate_batch(contexts, 4, forced=[None, forced])  # longer than max_new_tokens
