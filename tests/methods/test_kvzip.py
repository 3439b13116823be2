"""method=kvzip: importance from context reconstruction (max attention), budgets over (layer, KV head), real eviction."""

from __future__ import annotations

import pytest
import torch

from kvbench.cache.reconstruction import global_budgets, reconstruction_scores
from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import MethodConfigError, build_method
from tests.conftest import assert_lm_eval_matches_full, assert_protocol_matches_full, random_ids

pytestmark = pytest.mark.usefixtures("no_grad")


def test_scores_are_the_max_over_the_groups_heads_and_the_reconstruction_rows():
    # one KV head, two query heads: head 0 looks at key 1, head 1 at key 2; key 0 is looked at by nobody
    keys = torch.tensor([[[[0.0, 0], [5, 0], [0, 5], [0, 0], [0, 0]]]])
    query = torch.tensor([[[[2.0, 0], [2, 0]], [[0, 1.5], [0, 0]]]])  # [b, H=2, r=2, d]
    got = reconstruction_scores(query, keys, context=3, scale=1.0)
    assert got.shape == (1, 1, 3) and torch.argsort(got[0, 0]).tolist() == [0, 2, 1]
    # against brute force: every row's softmax over its causal keys, max over rows and heads
    expected = torch.zeros(3)
    for head in range(2):
        for row in range(2):
            visible = 3 + row + 1
            p = torch.softmax(query[0, head, row] @ keys[0, 0, :visible].T, dim=-1)[:3]
            expected = torch.maximum(expected, p)
    assert torch.allclose(got[0, 0], expected)


def test_budgets_over_layers_and_heads_go_to_the_globally_top_scores():
    layer0 = torch.tensor([[[0.9, 0.8, 0.1], [0.1, 0.1, 0.1]]])
    layer1 = torch.tensor([[[0.5, 0.4, 0.3], [0.95, 0.2, 0.05]]])
    counts = global_budgets([layer0, layer1], budget=1)  # 2 layers x 2 heads x 1 = 4 tokens
    assert [c.tolist() for c in counts] == [[[2, 0]], [[1, 1]]]


def test_compression_runs_the_reconstruction_removes_it_and_keeps_the_budget_over_all_layers(tiny_gqa):
    model, tokenizer = tiny_gqa
    method = build_method("kvzip", budget_tokens=10, chunk=16)
    scored = method.apply(model, tokenizer)
    assert method.prompts[0] and method.prompts[1]
    protocol = CompressionProtocol(scored, method)
    cache = protocol.prefill(random_ids(40)[0].tolist())
    assert cache.get_seq_length() == 40 and cache.compressed and cache.context_ids is None
    total = sum(int(cache.lengths(i).sum()) for i in range(4))
    assert total == 4 * 2 * 10
    for i in range(4):
        for row in cache.kept_positions(i)[0]:
            assert row[:4] == [0, 1, 2, 3] and row == sorted(row) and max(row) < 40
    assert all(layer.scores is None for layer in cache.layers)
    logits = protocol.forward(cache, random_ids(3, seed=5)[0].tolist())
    assert torch.isfinite(logits).all() and cache.get_seq_length() == 43


def test_layerwise_budgets_keep_each_layers_total(tiny_gqa):
    model, tokenizer = tiny_gqa
    method = build_method("kvzip", budget_tokens=10, chunk=64, layerwise=True)
    cache = CompressionProtocol(method.apply(model, tokenizer), method).prefill(random_ids(40)[0].tolist())
    assert [int(cache.lengths(i).sum()) for i in range(4)] == [20] * 4


def test_budget_covering_all_tokens_matches_full_through_the_protocol_and_lm_eval(tiny_gqa):
    model, tokenizer = tiny_gqa
    method = build_method("kvzip", budget_ratio=1.0)
    import copy

    assert_protocol_matches_full(model, method, method.apply(copy.deepcopy(model), tokenizer))
    assert_lm_eval_matches_full(model, tokenizer, "kvzip", budget_ratio=1.0)


@pytest.mark.parametrize("params, message", [
    (dict(group_reduction="median"), r"method.group_reduction='median' is not supported"),
    (dict(budget_tokens=2), r"method.n_sink=4 must lie in \[0, method.budget_tokens\]"),
    (dict(chunk=0), r"method.chunk=0 must be a token count >= 1"),
])
def test_bad_parameters_are_refused_in_one_line(params, message):
    with pytest.raises(MethodConfigError, match=message):
        build_method("kvzip", **params)
