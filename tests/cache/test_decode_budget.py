"""Compression while decoding (kvbench/cache/decode_budget.py): the kept set after one decode-time compression,
per method, against hand-built scores; identity with full when the decode budget covers every token; bytes."""

from __future__ import annotations

import pytest
import torch

from kvbench.cache import cache_nbytes
from kvbench.cache.decode_budget import DecodeBudget
from kvbench.cache.eviction import TokenBudget, keep_newest_and_top, pool_by_position
from kvbench.cache.h2o import H2OBudget, H2OLayer
from kvbench.errors import MethodConfigError
from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import build_method
from kvbench.methods.knorm import KnormLayer
from kvbench.methods.snapkv import SnapKVLayer
from kvbench.methods.streaming_llm import StreamingLLMLayer
from kvbench.methods.tova import TOVALayer
from tests.conftest import applied, assert_lm_eval_matches_full, assert_protocol_matches_full, random_ids

pytestmark = pytest.mark.usefixtures("no_grad")

EVERY_2_TO_4 = DecodeBudget(tokens=4, every=2)
NO_PREFILL_EVICTION = TokenBudget(tokens=100)
# Per KV head (2 heads), attention received by the 8 tokens at the due step (positions 0..7).
STEP2 = torch.tensor([[[0.30, 0.01, 0.20, 0.02, 0.25, 0.03, 0.04, 0.15],
                       [0.01, 0.35, 0.02, 0.30, 0.03, 0.10, 0.09, 0.10]]])
# At the first (not due) decode step, over tokens 0..6.
STEP1 = torch.tensor([[[0.05, 0.40, 0.05, 0.05, 0.05, 0.30, 0.10],
                       [0.05, 0.05, 0.05, 0.40, 0.05, 0.35, 0.05]]])


def _keys(first: int, count: int, norms: list[float] | None = None) -> torch.Tensor:
    """Keys ``[1, 2, count, 4]`` of tokens ``first..``: one-hot-ish, scaled to ``norms`` when given."""
    keys = torch.zeros(1, 2, count, 4)
    keys[..., 0] = 1.0
    if norms is not None:
        keys *= torch.tensor(norms)[None, None, :, None]
    return keys


def _decode(layer, scores: list[torch.Tensor | None], norms=None):
    """Prefill 6 tokens, then two decode steps; ``scores[i]`` is delivered after forward i when the layer waits
    for it. Returns the stored count after each forward."""
    norms = norms or [1.0] * 8
    counts = []
    for i, (first, n) in enumerate([(0, 6), (6, 1), (7, 1)]):
        keys = _keys(first, n, norms[first:first + n])
        layer.update(keys, keys.clone())
        if layer.awaiting_scores:
            assert scores[i] is not None, f"forward {i} asked for scores the test did not expect"
            layer.receive_scores(scores[i])
        counts.append(layer.stored_tokens())
    return counts


def _kept(layer) -> list[list[int]]:
    return layer.book.positions[0].tolist()


def test_tova_keeps_what_the_due_steps_query_attends_to_most_and_scores_nothing_in_between():
    layer = TOVALayer(NO_PREFILL_EVICTION, heads="layer", decode=EVERY_2_TO_4)
    assert _decode(layer, [None, None, STEP2]) == [6, 7, 4]  # step 1 is not due: no scores asked, nothing evicted
    # layer mean of STEP2: .155 .18 .11 .16 .14 .065 .065 .125 -> tokens 0, 1, 3, 4
    assert _kept(layer) == [[0, 1, 3, 4], [0, 1, 3, 4]]


def test_snapkv_keeps_its_newest_window_and_the_top_attention_summed_since_the_last_compression():
    layer = SnapKVLayer(NO_PREFILL_EVICTION, window=2, kernel_size=1, decode=EVERY_2_TO_4)
    assert _decode(layer, [None, STEP1, STEP2]) == [6, 7, 4]
    # window = tokens 6, 7; sums over 0..5: head 0 .35 .41 .25 .07 .30 .33 -> 1, 0; head 1 .06 .40 .07 .70 .08 .45
    # -> 3, 5
    assert _kept(layer) == [[0, 1, 6, 7], [3, 5, 6, 7]]
    assert float(layer.book.scores.abs().sum()) == 0.0  # nothing carried over to the next compression


def test_h2o_keeps_the_newest_tokens_and_the_heaviest_accumulated_scores_split_as_its_prefill_budget():
    layer = H2OLayer(H2OBudget(heavy_tokens=100, recent_tokens=100), decode=EVERY_2_TO_4)  # 1:1 -> 2 recent, 2 heavy
    prefill = torch.tensor([[[0.1, 0.0, 0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.6, 0.0, 0.0, 0.0]]])
    assert _decode(layer, [prefill, STEP1, STEP2]) == [6, 7, 4]
    # accumulated over 0..5: head 0 .45 .41 .25 .57 .30 .33 -> 3, 0; head 1 .06 .40 .67 .70 .08 .45 -> 3, 2
    assert _kept(layer) == [[0, 3, 6, 7], [2, 3, 6, 7]]


def test_knorm_rescores_every_stored_key_and_keeps_the_lowest_norms_the_new_token_included():
    layer = KnormLayer(NO_PREFILL_EVICTION, decode=EVERY_2_TO_4)
    norms = [5.0, 1.0, 6.0, 2.0, 7.0, 8.0, 9.0, 0.5]
    assert _decode(layer, [None, None, None], norms=norms) == [6, 7, 4]
    assert _kept(layer) == [[0, 1, 3, 7], [0, 1, 3, 7]]  # norms 5, 1, 2, 0.5


def test_streaming_llm_keeps_its_sinks_and_the_newest_tokens_by_logical_position():
    layer = StreamingLLMLayer(NO_PREFILL_EVICTION, sink_tokens=1, decode=EVERY_2_TO_4)
    assert _decode(layer, [None, None, None]) == [6, 7, 4]
    assert _kept(layer) == [[0, 5, 6, 7], [0, 5, 6, 7]]


def test_selection_reads_logical_positions_not_slot_order():
    positions = torch.tensor([[[7, 2, 5, 0, 6, 1]]])  # slots out of token order
    scores = torch.tensor([[[0.0, 0.9, 0.0, 0.1, 0.0, 0.5]]])
    kept = keep_newest_and_top(positions, scores, 2, 4)  # newest: 7, 6 (slots 0, 4); top others: 2, 1 (slots 1, 5)
    assert kept.tolist() == [[[0, 1, 4, 5]]]
    pooled = pool_by_position(torch.tensor([[[1.0, 0.0, 0.0]]]), torch.tensor([[[2, 0, 1]]]), 3, "max")
    assert pooled.tolist() == [[[1.0, 0.0, 1.0]]]  # slot 0 is token 2: its neighbour is token 1 (slot 2)


PREFILL_OFF = [("h2o", {"heavy_ratio": 1.0, "recent_ratio": 0.1}), ("tova", {"budget_ratio": 1.0}),
               ("snapkv", {"budget_ratio": 1.0, "window": 4}), ("knorm", {"budget_ratio": 1.0}),
               ("streaming_llm", {"budget_ratio": 1.0})]


@pytest.mark.parametrize("name, params", PREFILL_OFF)
def test_a_decode_budget_covering_every_token_equals_full_through_the_protocol(tiny_gqa, name, params):
    model, _ = tiny_gqa
    assert_protocol_matches_full(model, *applied(model, name, decode_budget_tokens=100, compress_every=1, **params))
    assert_protocol_matches_full(model, *applied(model, name, decode_budget_ratio=1.0, compress_every=2, **params))


# lm-eval costs ~40 s a method on two cores: h2o in the fast tier, the others in the slow one
@pytest.mark.parametrize("name, params", [pytest.param(*p, marks=() if p[0] == "h2o" else pytest.mark.slow)
                                          for p in PREFILL_OFF])
def test_a_decode_budget_covering_every_token_equals_full_through_lm_eval(tiny_gqa, name, params):
    model, tokenizer = tiny_gqa
    assert_lm_eval_matches_full(model, tokenizer, name, decode_budget_tokens=4096, compress_every=3, **params)


def _peak_bytes_match_the_formula(model, name: str, every: int, new_tokens: int, budget: int) -> None:
    params = {"heavy_tokens": 16, "recent_tokens": 16} if name == "h2o" else {"budget_tokens": 32}
    if name == "snapkv":
        params["window"] = 8
    method, scored = applied(model, name, decode_budget_tokens=budget, compress_every=every, **params)
    protocol = CompressionProtocol(scored, method)
    generated = protocol.generate(random_ids(64, seed=3)[0].tolist(), new_tokens)
    assert len(generated) == new_tokens
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    per_token = cfg.num_hidden_layers * cfg.num_key_value_heads * (
        2 * head_dim * next(model.parameters()).element_size()  # keys + values
        + 4 + (4 if name in ("h2o", "snapkv") else 0))  # int32 position, float32 score: the stated overheads
    peak_tokens = budget + every - 1  # the target, plus the tokens appended between compressions
    assert protocol.stats.peak_decode_stored_bytes == per_token * peak_tokens
    assert protocol.stats.final_decode_stored_bytes <= per_token * peak_tokens
    assert protocol.stats.generations == 1


@pytest.mark.parametrize("name, every", [("streaming_llm", 1), ("h2o", 8), ("snapkv", 1)])
def test_peak_bytes_during_a_generation_are_the_formula_for_the_decode_budget(tiny_mha, name, every):
    _peak_bytes_match_the_formula(tiny_mha[0], name, every, new_tokens=96, budget=48)


@pytest.mark.slow
@pytest.mark.parametrize("name, every", [("streaming_llm", 1), ("h2o", 8), ("snapkv", 1)])
def test_peak_bytes_of_a_1024_token_generation_with_256_kept_are_the_formula(tiny_mha, name, every):
    _peak_bytes_match_the_formula(tiny_mha[0], name, every, new_tokens=1024, budget=256)


def test_between_compressions_the_cache_grows_by_one_token_per_step(tiny_gqa):
    model, _ = tiny_gqa
    method, scored = applied(model, "tova", budget_ratio=1.0, decode_budget_tokens=20, compress_every=4)
    protocol = CompressionProtocol(scored, method)
    cache = protocol.prefill(random_ids(30)[0].tolist())
    sizes = []
    for token in random_ids(9, seed=2)[0].tolist():
        protocol.forward(cache, [token], last_logits_only=True)
        sizes.append(cache.stored_tokens())
    assert sizes == [31, 32, 33, 20, 21, 22, 23, 20, 21]  # due at steps 4 and 8


@pytest.mark.parametrize("name, params, message", [
    ("h2o", {"compress_every": 0}, "compress_every=0 must be an integer >= 1"),
    ("snapkv", {"decode_budget_tokens": 8, "decode_budget_ratio": 0.5}, "both set"),
    ("tova", {"decode_budget_tokens": 0}, "decode_budget_tokens=0 must be a token count >= 1"),
    ("knorm", {"decode_budget_ratio": 1.5}, "must lie in (0, 1]"),
    ("pyramidkv", {"decode_budget_tokens": 64}, "method=pyramidkv cannot compress while decoding"),
    ("kivi", {"decode_budget_tokens": 64}, "method=kivi has no token axis"),
    ("h2o", {"decode_budget_tokens": 64, "protocol": "simulate"}, "protocol=simulate"),
    ("streaming_llm", {"decode_budget_tokens": 4}, "leaves no recent window"),
])
def test_bad_decode_budgets_are_refused_in_one_line_when_the_method_is_built(name, params, message):
    with pytest.raises(MethodConfigError) as err:
        build_method(name, **params)
    assert message in str(err.value) and "\n" not in str(err.value)
