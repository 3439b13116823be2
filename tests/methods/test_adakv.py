"""method=adakv: one layer's budget split across its KV heads (flattened top-k + a floor), on the ragged store."""

from __future__ import annotations

import copy

import pytest
import torch

from kvbench.cache import cache_nbytes
from kvbench.cache.head_budgets import apportion, head_budgets, keep_top_per_head
from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import MethodConfigError, build_method
from kvbench.methods.adakv import AdaKVLayer
from tests.conftest import (applied, assert_lm_eval_matches_full, assert_protocol_matches_full, lm_eval_results,
                            random_ids)

pytestmark = pytest.mark.usefixtures("no_grad")

# head 0's attention is spread over four tokens, head 1's sits on one: flattened, the top 6 hold 4 of head 0's
HEAD_SCORES = torch.tensor([[[9.0, 8.0, 7.0, 6.5, 1.0, 1.1], [5.0, 2.0, 1.5, 1.4, 1.3, 1.2]]])


@pytest.mark.parametrize("floor, allocation, budgets, kept", [
    (0, "authors", [4, 2], [[0, 1, 2, 3], [0, 1]]),
    (1, "authors", [4, 2], [[0, 1, 2, 3], [0, 1]]),  # 1 + {8/3, 4/3} by largest remainder: 1 + {3, 1}
    (2, "authors", [3, 3], [[0, 1, 2], [0, 1, 2]]),  # 2 + {4/3, 2/3}: 2 + {1, 1}
    (3, "authors", [3, 3], [[0, 1, 2], [0, 1, 2]]),  # the floor is the budget: uniform
    (1, "kvpress", [4, 2], [[0, 1, 2, 3], [0, 1]]),
    (3, "kvpress", [3, 3], [[0, 1, 2], [0, 1, 2]]),
])
def test_head_budgets_and_kept_positions_from_hand_built_scores(floor, allocation, budgets, kept):
    got = head_budgets(HEAD_SCORES, budget=3, floor=floor, allocation=allocation)
    assert got.tolist() == [budgets]
    mask = keep_top_per_head(HEAD_SCORES, got)
    assert [torch.nonzero(row).flatten().tolist() for row in mask[0]] == kept


def test_every_head_keeps_its_floor_and_a_layer_keeps_exactly_heads_times_budget():
    torch.manual_seed(0)
    scores = torch.rand(3, 8, 50) ** 4
    for allocation in ("authors", "kvpress"):
        for floor in (0, 2, 5, 10):
            budgets = head_budgets(scores, budget=10, floor=floor, allocation=allocation)
            assert budgets.sum(dim=1).tolist() == [80] * 3 and int(budgets.min()) >= floor
            assert int(budgets.max()) <= 50


def test_largest_remainder_apportionment_is_exact_and_proportional():
    assert apportion(torch.tensor([[4, 2]]), 4).tolist() == [[3, 1]]
    # nothing to share (a selected budget of 0 after the window): zeros, not a division by zero
    assert apportion(torch.tensor([[0, 0]]), 0).tolist() == [[0, 0]]
    assert apportion(torch.tensor([[1, 1, 1]]), 4).tolist() == [[2, 1, 1]]  # ties: the lower head first
    assert apportion(torch.tensor([[5, 0, 5]]), 10).tolist() == [[5, 0, 5]]


def test_layer_keeps_each_heads_share_plus_the_window_from_hand_built_scores():
    method = build_method("adakv", budget_tokens=5, window=2, kernel_size=1, floor_ratio=None, floor_tokens=1)
    layer = AdaKVLayer(method)
    keys = torch.randn(1, 2, 8, 4)
    layer.update(keys, keys.clone())
    assert layer.awaiting_scores
    layer.receive_scores(torch.cat([HEAD_SCORES, torch.zeros(1, 2, 2)], dim=-1))  # the window's own columns: 0
    assert layer.kept_positions() == [[[0, 1, 2, 3, 6, 7], [0, 1, 6, 7]]]
    assert layer.lengths().tolist() == [[6, 4]] and int(layer.lengths().sum()) == 2 * 5
    assert torch.equal(layer.store.keys[:6], keys[0, 0, [0, 1, 2, 3, 6, 7]])


def test_budget_covering_all_tokens_matches_full_through_the_protocol_and_lm_eval(tiny_gqa):
    model, tokenizer = tiny_gqa
    assert_protocol_matches_full(model, *applied(model, "adakv", budget_ratio=1.0))
    assert_lm_eval_matches_full(model, tokenizer, "adakv", budget_ratio=1.0)


SNAPKV_SCORING = dict(budget_tokens=12, window=4, kernel_size=5, pooling="avg", group_reduction="sum")


def test_equal_head_budgets_give_snapkvs_logits_bit_for_bit_at_batch_two_and_through_lm_eval(tiny_gqa):
    """floor = the budget: every KV head keeps the same count, the ragged store is the uniform layout, and AdaKV
    is SnapKV: the same kept sets, the same logits bit for bit (protocol, batch of 2, lm-eval)."""
    model, tokenizer = tiny_gqa
    ours, theirs = applied(model, "adakv", floor_ratio=1.0, **SNAPKV_SCORING), applied(
        model, "snapkv", **{k: v for k, v in SNAPKV_SCORING.items() if k != "group_reduction"})
    contexts = [random_ids(30, seed=s)[0].tolist() for s in (4, 5)]
    got = CompressionProtocol(ours[1], ours[0]).generate_batch(contexts, 4, return_logits=True)
    want = CompressionProtocol(theirs[1], theirs[0]).generate_batch(contexts, 4, return_logits=True)
    assert got[0] == want[0] and torch.equal(got[1], want[1])
    cache = CompressionProtocol(ours[1], ours[0]).prefill(contexts[0])
    reference = CompressionProtocol(theirs[1], theirs[0]).prefill(contexts[0])
    assert cache.kept_positions(1) == reference.kept_positions(1).tolist()
    a = lm_eval_results(ours[1], tokenizer, ours[0], limit=1)
    b = lm_eval_results(theirs[1], tokenizer, theirs[0], limit=1)
    assert a["results"] == b["results"]


def test_heads_keep_different_counts_and_a_batch_equals_batch_one_runs(tiny_gqa):
    model, _ = tiny_gqa
    method, scored = applied(model, "adakv", budget_tokens=12, window=4, floor_ratio=0.0)
    protocol = CompressionProtocol(scored, method)
    contexts = [random_ids(40, seed=s)[0].tolist() for s in (6, 7)]
    cache = protocol.prefill(contexts[0])
    lengths = torch.stack([cache.lengths(i)[0] for i in range(4)])
    assert lengths.sum(dim=1).tolist() == [2 * 12] * 4 and len(set(lengths.flatten().tolist())) > 1
    batch, logits = protocol.generate_batch(contexts, 5, return_logits=True)
    for row, context in enumerate(contexts):
        single, single_logits = protocol.generate_batch([context], 5, return_logits=True)
        assert batch[row] == single[0]
        assert torch.allclose(logits[row], single_logits[0], atol=1e-5)


def test_ragged_and_masked_layouts_give_the_same_logits_and_only_ragged_frees_memory(tiny_gqa):
    model, _ = tiny_gqa
    full = CompressionProtocol(model, build_method("full"))
    context, continuation = random_ids(60, seed=8)[0].tolist(), random_ids(6, seed=9)[0].tolist()
    out, caches = {}, {}
    for layout in ("ragged", "masked"):
        method, scored = applied(model, "adakv", budget_tokens=12, window=4, layout=layout)
        protocol = CompressionProtocol(scored, method)
        caches[layout] = protocol.prefill(context)
        out[layout] = protocol.forward(copy.deepcopy(caches[layout]), continuation)
    assert torch.allclose(out["ragged"], out["masked"], atol=1e-5)
    full_bytes = cache_nbytes(full.prefill(context))
    for i in range(4):
        assert torch.equal(caches["ragged"].lengths(i), caches["masked"].layers[i].lengths())
    mask_bytes = sum(layer.kept.nbytes for layer in caches["masked"].layers)
    assert cache_nbytes(caches["masked"]) == full_bytes + mask_bytes  # kvpress's layout: every key still stored
    kv_bytes = sum(layer.store.keys.nbytes + layer.store.values.nbytes for layer in caches["ragged"].layers)
    assert kv_bytes * 60 == full_bytes * 12  # budget/prompt of full's keys and values, exactly


def test_stored_bytes_are_within_one_percent_of_uniform_snapkvs_at_the_same_budget(tiny_mha):
    model, _ = tiny_mha
    context = random_ids(100)[0].tolist()
    measured = {}
    for name, extra in (("adakv", dict(group_reduction="sum")), ("snapkv", {})):
        method, scored = applied(model, name, budget_tokens=40, **extra)
        measured[name] = cache_nbytes(CompressionProtocol(scored, method).prefill(context))
    cfg = model.config
    lengths = cfg.num_hidden_layers * cfg.num_key_value_heads * 4  # the per-head lengths, int32
    assert measured["adakv"] == measured["snapkv"] + lengths
    assert abs(measured["adakv"] - measured["snapkv"]) <= 0.01 * measured["snapkv"]


@pytest.mark.parametrize("params, message", [
    (dict(budget_tokens=64, floor_ratio=None, floor_tokens=40),
     r"method.floor_tokens=40 is above the per-head budget: each KV head selects budget_tokens - window = 32"),
    (dict(group_reduction="median"), r"method.group_reduction='median' is not supported \(choose one of: sum, mean, max\)"),
    (dict(floor_ratio=1.5), r"method.floor_ratio=1.5 must lie in \[0, 1\]"),
    (dict(floor_tokens=3), r"set exactly one"),
    (dict(layout="padded"), r"method.layout='padded' is not supported"),
    (dict(allocation="greedy"), r"method.allocation='greedy' is not supported"),
])
def test_bad_parameters_are_refused_in_one_line(params, message):
    with pytest.raises(MethodConfigError, match=message) as error:
        build_method("adakv", **params)
    assert "\n" not in str(error.value)
