"""method=duo_attention: streaming heads (sink + recent, always) and retrieval heads (everything), from a calibration."""

from __future__ import annotations

import pytest
import torch

from kvbench.cache import cache_nbytes
from kvbench.cache.streaming_heads import reach_scores, streaming_heads
from kvbench.config import cache_root
from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import MethodConfigError, build_method
from kvbench.methods.duo_attention import DuoLayer
from tests.conftest import random_ids

pytestmark = pytest.mark.usefixtures("no_grad")
FAST = dict(calibration_sequences=1, calibration_length=32, positions=64)


def test_a_head_whose_average_query_favours_recent_keys_scores_lower_than_one_that_reaches_back():
    # no RoPE: the query meets the same key at every position, so attention is uniform (reach = mean cumsum = 0.5+)
    flat = reach_scores(torch.ones(1, 4), torch.ones(1, 4), None, 1.0, 1.0, positions=10)
    assert flat.item() == pytest.approx(sum((i + 1) / 10 for i in range(10)) / 10)
    # with RoPE at low frequency, the average query aligns best with keys near its own position: recent, low reach
    inv_freq = torch.tensor([0.05, 0.05])
    near = reach_scores(torch.tensor([[4.0, 0, 0, 0]]), torch.tensor([[4.0, 0, 0, 0]]), inv_freq, 1.0, 1.0, positions=40)
    assert near.item() < flat.item()


def test_the_lowest_scoring_heads_of_the_whole_model_stream():
    scores = torch.tensor([[0.9, 0.2], [0.5, 0.1], [0.3, 0.8]])
    assert streaming_heads(scores, 3).tolist() == [[False, True], [False, True], [True, False]]


def test_streaming_heads_keep_sink_and_recent_tokens_while_decoding_and_retrieval_heads_keep_all():
    layer = DuoLayer([True, False], sink=2, recent=3)
    layer.update(torch.randn(1, 2, 9, 4), torch.randn(1, 2, 9, 4))
    assert layer.kept_positions() == [[[0, 1, 6, 7, 8], list(range(9))]]
    for _ in range(2):
        layer.update(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4))
    assert layer.kept_positions() == [[[0, 1, 8, 9, 10], list(range(11))]]


def test_pattern_is_found_on_the_corpus_cached_on_disk_and_bytes_are_the_nominal_budget(tiny_gqa):
    model, tokenizer = tiny_gqa
    method = build_method("duo_attention", sparsity=0.5, sink_tokens=2, recent_tokens=6, **FAST)
    scored = method.apply(model, tokenizer)
    assert sum(map(sum, method.streaming)) == 4  # half of 4 layers x 2 KV heads
    assert len(list((cache_root() / "duo_attention").glob("pattern-*.json"))) == 1
    again = build_method("duo_attention", sparsity=0.5, sink_tokens=2, recent_tokens=6, **FAST)
    again.apply(model, tokenizer)
    assert again.streaming == method.streaming  # read back from disk
    protocol = CompressionProtocol(scored, method)
    cache = protocol.prefill(random_ids(40)[0].tolist())
    for _ in range(3):
        protocol.forward(cache, [5])
    lengths = torch.stack([cache.lengths(i)[0] for i in range(4)])
    expected = torch.tensor([[8 if s else 43 for s in row] for row in method.streaming])
    assert torch.equal(lengths.long(), expected)
    full = CompressionProtocol(model, build_method("full")).prefill(random_ids(43)[0].tolist())
    per_token = cache_nbytes(full) // (4 * 2 * 43)  # keys + values of one token in one KV head
    tokens = int(expected.sum())
    nominal = tokens * (per_token + 4)  # keys, values and the int32 position of every kept token
    measured = cache_nbytes(cache)
    assert measured == nominal + 4 * 2 * 4  # + the per-head lengths (int32)
    assert abs(measured - nominal) <= 0.01 * nominal


def test_no_streaming_heads_is_full(tiny_gqa):
    from tests.conftest import assert_protocol_matches_full

    model, tokenizer = tiny_gqa
    method = build_method("duo_attention", sparsity=0.0, **FAST)
    assert_protocol_matches_full(model, method, method.apply(model, tokenizer))


@pytest.mark.parametrize("params, message", [
    (dict(calibration=""), r"method.calibration is empty: duo_attention finds its streaming heads by a calibration"),
    (dict(calibration="/no/such/corpus.txt"), r"method.calibration: corpus file '/no/such/corpus.txt' does not exist"),
    (dict(sparsity=1.5), r"method.sparsity=1.5 must lie in \[0, 1\]"),
])
def test_bad_parameters_are_refused_in_one_line(params, message):
    with pytest.raises(MethodConfigError, match=message):
        build_method("duo_attention", **params)


def test_a_decode_step_of_a_streaming_head_attends_to_its_sink_and_recent_tokens_only():
    from kvbench.cache.ragged_attention import take

    layer = DuoLayer([True, False], sink=1, recent=2)
    keys = torch.randn(1, 2, 6, 4)
    first, _ = layer.update(keys, keys.clone())
    assert first.shape[-2] == 6  # the prefill attends over every token
    new = torch.randn(1, 2, 1, 4)
    returned, _ = layer.update(new, new.clone())
    store = take(returned)
    assert store.lengths.tolist() == [[3, 7]]  # sink + the last 2 (the new token included) vs everything
    assert torch.equal(store.keys[:3], torch.cat([keys[0, 0, [0, 5]], new[0, 0]]))
