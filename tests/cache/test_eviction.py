"""What the eviction baselines share: exact budgets, pooling, top-k in logical order, the scores hand-off."""

from __future__ import annotations

import pytest
import torch

from kvbench.cache.eviction import TokenBudget, pool1d, top_k_sorted
from kvbench.errors import MethodConfigError
from kvbench.methods.snapkv import SnapKVLayer


@pytest.mark.parametrize("ratio, n, expected", [(0.2, 1500, 300), (0.29, 100, 29), (0.57, 100, 57), (0.7, 10, 7),
                                                (0.35, 100, 35), (0.1, 1024, 102)])
def test_ratio_budgets_floor_exactly_where_float_products_fall_just_short(ratio, n, expected):
    assert TokenBudget(ratio=ratio).resolve(n) == expected


def test_budgets_resolve_to_a_count_or_at_least_one_token():
    assert TokenBudget(tokens=64).resolve(10) == 64
    assert TokenBudget(ratio=0.01).resolve(50) == 1
    assert TokenBudget.of(None, None) == TokenBudget(ratio=0.2)
    assert str(TokenBudget(ratio=0.5)) == "budget_ratio=0.5" and str(TokenBudget(tokens=8)) == "budget_tokens=8"


@pytest.mark.parametrize("ratio, tokens, message", [
    (0.0, None, r"method.budget_ratio=0.0 must lie in \(0, 1\]"),
    (1.01, None, r"method.budget_ratio=1.01 must lie in \(0, 1\]"),
    (None, 0, r"method.budget_tokens=0 must be a token count >= 1"),
    (0.5, 10, r"method.budget_ratio=0.5 and method.budget_tokens=10 both set"),
    (None, None, r"no budget"),
])
def test_bad_budgets_are_one_line(ratio, tokens, message):
    with pytest.raises(MethodConfigError, match=message):
        TokenBudget(ratio, tokens)


def test_average_pooling_counts_the_zero_padding_and_max_pooling_ignores_it():
    scores = torch.tensor([[[0.0, 5.0, 0.0, 0.0, 10.0]]])
    assert torch.allclose(pool1d(scores, 3, "avg"), torch.tensor([[[5 / 3, 5 / 3, 5 / 3, 10 / 3, 10 / 3]]]))
    assert torch.equal(pool1d(scores, 3, "max"), torch.tensor([[[5.0, 5.0, 5.0, 10.0, 10.0]]]))
    assert torch.equal(pool1d(-scores, 3, "max"), torch.tensor([[[0.0, 0.0, 0.0, 0.0, 0.0]]]))  # padding is -inf
    assert torch.equal(pool1d(scores, 1, "avg"), scores)


def test_top_k_is_returned_in_logical_order():
    assert top_k_sorted(torch.tensor([[3.0, 9.0, 1.0, 7.0, 8.0]]), 3).tolist() == [[1, 3, 4]]


def test_a_scored_layer_whose_scores_never_arrive_fails_clearly():
    from kvbench.cache.eviction import BudgetCache

    cache = BudgetCache(layers=[SnapKVLayer(TokenBudget(tokens=4), window=2)])
    keys = torch.randn(1, 1, 10, 4)
    cache.layers[0].update(keys, keys)  # a plain attention never delivers the requested scores
    with pytest.raises(RuntimeError, match="method=snapkv: the previous forward delivered no attention scores"):
        cache.compress()
    with pytest.raises(RuntimeError, match="scored_sdpa"):
        cache.layers[0].update(keys[:, :, :1], keys[:, :, :1])
