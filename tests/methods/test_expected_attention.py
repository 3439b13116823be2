"""method=expected_attention: expected future attention from query statistics (RoPE rotated forward), real eviction."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from kvbench.cache.expected_attention import (angles, expected_scores, future_statistics, query_statistics, rotate,
                                              unrotated_queries)
from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import MethodConfigError, build_method
from tests.conftest import applied, assert_lm_eval_matches_full, assert_protocol_matches_full, random_ids

pytestmark = pytest.mark.usefixtures("no_grad")
INV_FREQ = torch.tensor([1.0, 0.1])  # head dim 4: pairs (0, 2) and (1, 3)


def test_unrotating_inverts_transformers_rope_and_the_mean_rotation_is_the_mean_of_rotations():
    torch.manual_seed(0)
    q = torch.randn(1, 2, 5, 4)
    cos, sin = angles(INV_FREQ, torch.arange(3, 8), 1.0)
    rotated, _ = apply_rotary_pos_emb(q, q, cos[None], sin[None])
    assert torch.allclose(unrotated_queries(rotated, INV_FREQ, 1.0, first=3), q, atol=1e-5)
    mean, cov = torch.randn(1, 1, 4), torch.eye(4)[None, None] * 0.5
    got_mean, got_cov = future_statistics(mean, cov, INV_FREQ, 1.0, start=10, n_future=6)
    cos, sin = angles(INV_FREQ, torch.arange(10, 16), 1.0)
    explicit = torch.stack([rotate(mean, cos[j], sin[j]) for j in range(6)]).mean(dim=0)
    assert torch.allclose(got_mean, explicit, atol=1e-6)
    assert torch.allclose(got_cov, got_cov.transpose(-1, -2), atol=1e-6) and got_cov.shape == (1, 1, 4, 4)


def test_query_statistics_skip_the_sinks_and_are_biased():
    queries = torch.tensor([[[[100.0, 0], [1, 2], [3, 2]]]])
    mean, cov = query_statistics(queries, n_sink=1)
    assert mean.tolist() == [[[2.0, 2.0]]] and cov.tolist() == [[[[1.0, 0.0], [0.0, 0.0]]]]


def test_scores_rank_keys_by_expected_logit_and_variance_and_kept_sets_from_hand_built_tensors():
    # expected query along dim 0; keys 1 and 2 align with it, key 3 only matters through the covariance (dim 1)
    mean = torch.tensor([[[2.0, 0.0], [2.0, 0.0]]])  # two query heads, one KV head
    keys = torch.tensor([[[[0.0, 0], [1.0, 0], [2.0, 0], [0.0, 3], [-1.0, 0]]]])
    values = torch.ones(1, 1, 5, 2)
    plain = expected_scores(mean, None, keys, values, scale=1.0, use_vnorm=False)
    assert torch.argsort(plain[0, 0], descending=True).tolist()[:2] == [2, 1]
    cov = torch.tensor([[[1.0, 0], [0, 4.0]]]).expand(1, 2, 2, 2)
    with_cov = expected_scores(mean, cov, keys, values, scale=1.0, use_vnorm=False)
    assert int(with_cov[0, 0].argmax()) == 3  # 3²·4/2 = 18 beats 2·2 + 2²/2 = 6
    assert torch.allclose(plain.sum(-1), torch.ones(1, 1))  # a softmax over the keys


def test_layer_keeps_the_sinks_and_each_heads_top_expected_keys():
    method = build_method("expected_attention", budget_tokens=3, n_sink=1, use_vnorm=False, use_covariance=False)
    from kvbench.methods.expected_attention import ExpectedAttentionLayer

    layer = ExpectedAttentionLayer(method, None, 1.0)  # no rotary: R̄ is the identity
    # KV head 0's keys favour dim 0, head 1's dim 1; every query (after the sink) is (1, 1) * 2
    keys = torch.tensor([[[[5.0, 5], [1, 0], [0, 1], [3, 0], [2, 0]], [[5.0, 5], [0, 3], [1, 0], [0, 2], [0, 1]]]])
    layer.update(keys, keys.clone())
    query = torch.full((1, 2, 5, 2), 2.0)
    layer.receive_queries(query, type("M", (), {"scaling": 1.0})())
    assert layer.kept_positions() == [[[0, 3, 4], [0, 1, 3]]]


def test_budget_covering_all_tokens_matches_full_through_the_protocol_and_lm_eval(tiny_gqa):
    model, tokenizer = tiny_gqa
    assert_protocol_matches_full(model, *applied(model, "expected_attention", budget_ratio=1.0))
    assert_lm_eval_matches_full(model, tokenizer, "expected_attention", budget_ratio=1.0)


@pytest.mark.parametrize("allocation", ["uniform", "authors"])
def test_real_eviction_keeps_the_budget_and_the_sinks_in_every_head(tiny_gqa, allocation):
    model, _ = tiny_gqa
    method, scored = applied(model, "expected_attention", budget_tokens=10, allocation=allocation)
    cache = CompressionProtocol(scored, method).prefill(random_ids(40)[0].tolist())
    for i in range(4):
        assert int(cache.lengths(i).sum()) == 2 * 10
        assert all(row[:4] == [0, 1, 2, 3] for row in cache.kept_positions(i)[0])
    if allocation == "uniform":
        assert cache.lengths(0).tolist() == [[10, 10]]


@pytest.mark.parametrize("params, message", [
    (dict(group_reduction="median"), r"method.group_reduction='median' is not supported"),
    (dict(budget_tokens=2), r"method.n_sink=4 is larger than method.budget_tokens=2"),
    (dict(allocation="greedy"), r"method.allocation='greedy' is not supported \(choose one of: uniform, authors, kvpress\)"),
    (dict(n_future=0), r"method.n_future=0 must be"),
])
def test_bad_parameters_are_refused_in_one_line(params, message):
    with pytest.raises(MethodConfigError, match=message):
        build_method("expected_attention", **params)
