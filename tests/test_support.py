"""The support matrix (:mod:`kvbench.support`) is true: every method × every family, on the family's tiny random
model (``tests/families.py``), one process, shared builds.

A cell that works (or works with a stated difference) passes four checks through the protocol:
1. the method's no-op setting equals ``full`` (log-likelihoods within 1e-4, greedy tokens equal);
2. a batch of 2 equals 2 batch-1 runs (tokens equal, logits within 1e-4);
3. ``nbytes()`` is the bytes of every tensor the cache holds;
4. at a real setting the stored bytes shrink by the method's ratio: the ratio the same setting reaches on the
   reference tiny Llama of the same head layout (every tiny model has 4 layers of head dim 16), and more than 1.
A refused cell is refused before the model runs, in one line that names the cell's reason.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from kvbench.cache import cache_nbytes
from kvbench.errors import KvbenchError
from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import METHODS, build_method
from kvbench.models import tiny_llama
from kvbench.support import DIFFERS, FAMILIES, REFUSED, WORKS, cell, check_supported, family_of, matrix, methods
from tests.conftest import random_ids
from tests.contracts import held_tensors
from tests.families import family_names, tiny_family, tiny_family_config

pytestmark = pytest.mark.usefixtures("no_grad", "one_thread")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: 64-wide matrices gain nothing from more, and on a shared machine a second thread waiting
    for a busy core makes each tiny matmul ~20x slower (the matrix takes minutes instead of seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

SVD = dict(calibration_sequences=1, calibration_length=32, reuse_calibration=False)
DUO = dict(sink_tokens=2, recent_tokens=8, calibration_sequences=1, calibration_length=32, positions=64,
           reuse_calibration=False)
EVERYTHING = dict(budget_tokens=1000)  # a token budget covering every token of the checks
#: Per method: the no-op setting (a function of the model's KV heads), None where the method has none.
NO_OP = {
    "full": lambda kv: {},
    "meanpool_gqa": lambda kv: dict(kv_heads=kv),
    "svd_gqa": lambda kv: dict(kv_heads=kv, **SVD),
    "h2o": lambda kv: dict(heavy_ratio=1.0, recent_ratio=1.0),
    "minicache": lambda kv: dict(start_layer=1, gamma=1.0),
    "streaming_llm": lambda kv: EVERYTHING,
    "snapkv": lambda kv: dict(EVERYTHING, window=4),
    "pyramidkv": lambda kv: dict(EVERYTHING, window=4),
    "tova": lambda kv: EVERYTHING,
    "knorm": lambda kv: EVERYTHING,
    "adakv": lambda kv: dict(EVERYTHING, window=4),
    "expected_attention": lambda kv: EVERYTHING,
    "kvzip": lambda kv: EVERYTHING,
    "duo_attention": lambda kv: dict(DUO, sparsity=0.0),
    "kivi": lambda kv: dict(group_size=8, residual_length=128),
    "rtn": None,  # no lossless setting: 4-bit codes, checked to stay within RTN_TOLERANCE of full
    "combined": lambda kv: dict(heads_params=dict(kv_heads=kv, **SVD), layers_params=dict(start_layer=1, gamma=1.0),
                                tokens_params=dict(heavy_ratio=1.0, recent_ratio=1.0)),
}
RTN_TOLERANCE = 0.05
#: Per method: a real setting, one that stores fewer bytes than full.
REAL = {
    "full": {},
    "meanpool_gqa": dict(kv_heads=1),
    "svd_gqa": dict(kv_heads=1, **SVD),
    "h2o": dict(heavy_ratio=0.2, recent_ratio=0.2),
    "minicache": dict(start_layer=1),
    "streaming_llm": dict(budget_tokens=12, sink_tokens=2),
    "snapkv": dict(budget_tokens=12, window=4),
    "pyramidkv": dict(budget_tokens=12, window=4),
    "tova": dict(budget_tokens=12),
    "knorm": dict(budget_tokens=12),
    "adakv": dict(budget_tokens=12, window=4),
    "expected_attention": dict(budget_tokens=12),
    "kvzip": dict(budget_tokens=12, chunk=16),
    "duo_attention": dict(DUO, sparsity=0.5),
    "kivi": dict(group_size=8, residual_length=8),
    "rtn": dict(group_size=8),
    "combined": dict(heads_params=dict(kv_heads=1, **SVD), layers_params=dict(start_layer=1),
                     tokens_params=dict(heavy_ratio=0.3, recent_ratio=0.3)),
}
CONTEXT, CONTINUATION, NEW = 32, 4, 4
CELLS = [(family, method) for family in family_names() for method in methods()]


def test_the_matrix_covers_every_registered_method_and_every_tiny_family_and_nothing_else():
    assert set(NO_OP) == set(REAL) == set(METHODS), "NO_OP and REAL must list every registered method"
    assert set(family_names()) == set(FAMILIES)
    assert {c.status for row in matrix().values() for c in row.values()} <= {WORKS, DIFFERS, REFUSED}
    assert all(c.reason for row in matrix().values() for c in row.values() if c.status != WORKS)


@pytest.mark.parametrize("family", family_names())
def test_each_tiny_model_is_found_as_its_own_family(family):
    assert family_of(tiny_family_config(family)) == family


def _kv_heads(model) -> int:
    text = model.config
    return getattr(text, "num_key_value_heads", None) or text.num_attention_heads


def _apply(method, model, tokenizer):
    method.check_model(model.config)
    return method.apply(copy.deepcopy(model), tokenizer)


def _ids(seed: int, n: int = CONTEXT) -> list[int]:
    return random_ids(n, seed=seed)[0].tolist()


@functools.cache
def _full_outputs(family: str):
    """``full``'s log-likelihood and greedy tokens on the family's model (shared by every method's check)."""
    model, _ = tiny_family(family)
    protocol = CompressionProtocol(model, build_method("full"))
    return (protocol.score_continuations(_ids(0), [_ids(1, CONTINUATION)])[0],
            protocol.generate(_ids(0), NEW))


@functools.cache
def _reference_ratio(method: str, n_kv: int) -> float:
    """The ratio ``REAL[method]`` reaches on the tiny Llama with ``n_kv`` KV heads (2: GQA, 4: MHA)."""
    model, tokenizer = tiny_llama("llama-gqa" if n_kv == 2 else "llama-mha", seed=0)
    return _ratio(build_method(method, **REAL[method]), model, tokenizer)


def _ratio(method, model, tokenizer) -> float:
    protocol = CompressionProtocol(_apply(method, model, tokenizer), method, model.config)
    protocol.prefill(_ids(0))
    return protocol.stats.full_bytes / protocol.stats.stored_bytes


def assert_refused_with_its_reason(family: str, name: str) -> None:
    model, _ = tiny_family(family)
    method = build_method(name, **REAL[name])
    with pytest.raises(KvbenchError) as error:  # what validation does, before any weight is loaded
        check_supported(method, family_of(model.config))
        method.check_model(model.config)
    message = str(error.value)
    assert "\n" not in message and cell(family, name).reason in message, message


def assert_no_op_equals_full(family: str, name: str) -> None:
    model, tokenizer = tiny_family(family)
    (want_logprob, want_greedy), want_tokens = _full_outputs(family)
    settings = NO_OP[name]
    method = build_method(name, **(settings(_kv_heads(model)) if settings else REAL[name]))
    protocol = CompressionProtocol(_apply(method, model, tokenizer), method, model.config)
    logprob, greedy = protocol.score_continuations(_ids(0), [_ids(1, CONTINUATION)])[0]
    assert logprob == pytest.approx(want_logprob, abs=1e-4 if settings else RTN_TOLERANCE)
    if settings:
        assert greedy == want_greedy and protocol.generate(_ids(0), NEW) == want_tokens


def assert_batch_equals_batch_1(method, applied, model) -> None:
    contexts = [_ids(10), _ids(11)]
    tokens, logits = CompressionProtocol(applied, method, model.config).generate_batch(contexts, NEW, return_logits=True)
    for i, context in enumerate(contexts):
        own_tokens, own_logits = CompressionProtocol(applied, method, model.config).generate_batch(
            [context], NEW, return_logits=True)
        assert tokens[i] == own_tokens[0]
        torch.testing.assert_close(logits[i], own_logits[0], rtol=1e-4, atol=1e-4)


def assert_bytes_counted_and_shrunk(method, applied, model) -> None:
    protocol = CompressionProtocol(applied, method, model.config)
    cache = protocol.prefill(_ids(0))
    ratio = protocol.stats.full_bytes / protocol.stats.stored_bytes
    # within 0.5%: a transformers sliding-window layer also holds its window size, an 8-byte tensor
    assert ratio == pytest.approx(_reference_ratio(method.name, _kv_heads(model)), rel=5e-3)
    assert ratio > 1.0 or method.name == "full"
    protocol.forward(cache, _ids(2, 3))  # decode-time policies act too
    held = held_tensors(cache)
    assert cache_nbytes(cache) == sum(t.element_size() * t.nelement() for t in held.values())


@pytest.mark.parametrize("family, method", CELLS)
def test_every_cell_is_what_the_matrix_says(family, method):
    if cell(family, method).status == REFUSED:
        assert_refused_with_its_reason(family, method)
        return
    assert_no_op_equals_full(family, method)
    model, tokenizer = tiny_family(family)
    real = build_method(method, **REAL[method])
    applied = _apply(real, model, tokenizer)
    assert_batch_equals_batch_1(real, applied, model)
    assert_bytes_counted_and_shrunk(real, applied, model)


def test_a_model_config_that_turns_a_window_on_gets_the_sliding_window_refusals():
    from kvbench.support import check_model_supported

    config = tiny_family_config("phi3")  # Phi-3-mini-4k slides a 2047-token window over 4096 positions
    check_model_supported(build_method("knorm"), config)
    config.sliding_window, config.max_position_embeddings = 2047, 4096
    with pytest.raises(KvbenchError, match="method=knorm cannot run on Phi-3 / Phi-4-mini models: knorm evicts"):
        check_model_supported(build_method("knorm"), config)
    config.sliding_window = 262144  # Phi-4-mini: a window longer than the context slides nothing
    check_model_supported(build_method("knorm"), config)


@pytest.mark.parametrize("name", [m for m in methods() if cell("bloom", m).status == DIFFERS])
def test_bloom_eviction_scores_as_a_cache_of_only_the_kept_tokens_with_alibi_re_indexed(name):
    """The stated difference, shown: after eviction BLOOM scores exactly as a plain cache holding only the kept
    tokens, whose ALiBi distances run over the kept tokens (0..k-1), not their original positions."""
    from tests.conftest import reduced_cache

    model, tokenizer = tiny_family("bloom")
    method = build_method(name, **REAL[name])
    protocol = CompressionProtocol(_apply(method, model, tokenizer), method, model.config)
    cache = protocol.prefill(_ids(0))
    assert cache.stored_tokens(0) < CONTEXT
    reduced = reduced_cache(cache)
    new = _ids(3, 2)
    got = protocol.forward(cache, new)
    torch.testing.assert_close(got, model(input_ids=torch.tensor([new]), cache=reduced).logits[0], rtol=1e-4, atol=1e-4)
