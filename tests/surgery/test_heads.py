"""Head layout, grouping checks and weight edits of kvbench.surgery.heads."""

import copy

import pytest
import torch

from kvbench.methods import MethodConfigError
from kvbench.models import tiny_llama_config
from kvbench.surgery.heads import (HeadLayout, attention_layers, check_kv_heads, expand_kv_heads,
                                   meanpool_kv_heads, project_kv_rows)


def test_query_heads_map_to_contiguous_groups_consistent_with_original_sharing():
    lay = HeadLayout(n_query=8, n_kv=4, head_dim=2, groups=2)
    # query heads 0,1 used KV head 0; 2,3 head 1 (group 0, positions 0 and 1); 4..7 heads 2,3 (group 1)
    assert [lay.query_slot(j) for j in range(8)] == [(0, 0), (0, 0), (0, 1), (0, 1), (1, 0), (1, 0), (1, 1), (1, 1)]
    # and the group a query head reads is the one GQA with g heads assigns it: j // (H/g)
    assert all(lay.query_slot(j)[0] == j // (8 // 2) for j in range(8))


@pytest.mark.parametrize("kind, kv_heads, message", [
    ("llama-mha", 3, "method.kv_heads=3 must divide the model's 4 KV heads (choose 1, 2 or 4)"),
    ("llama-gqa", 4, "method.kv_heads=4 is larger than the model's 2 KV heads (choose 1 or 2)")])
def test_kv_heads_not_dividing_or_too_large_is_rejected_from_the_config(kind, kv_heads, message):
    with pytest.raises(MethodConfigError) as err:
        check_kv_heads(kv_heads, tiny_llama_config(kind))
    assert str(err.value) == message


def test_expanding_kv_heads_gives_an_exactly_equivalent_mha_model(tiny_gqa):
    model, _ = tiny_gqa
    ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(0))
    expanded = expand_kv_heads(copy.deepcopy(model))
    assert expanded.config.num_key_value_heads == 4
    assert attention_layers(expanded)[0].k_proj.out_features == 4 * 16
    torch.testing.assert_close(expanded(ids).logits, model(ids).logits, atol=0, rtol=0)


def test_meanpool_group_projection_is_mean_of_its_heads_rows_and_biases(tiny_mha):
    model, _ = tiny_mha
    lay = HeadLayout(n_query=4, n_kv=4, head_dim=16, groups=2)
    linear = torch.nn.Linear(64, 64, bias=True)
    pooled = project_kv_rows(linear, lay, None)
    w = linear.weight.view(4, 16, 64)
    torch.testing.assert_close(pooled.weight.view(2, 16, 64), torch.stack([w[:2].mean(0), w[2:].mean(0)]))
    torch.testing.assert_close(pooled.bias.view(2, 16), linear.bias.view(2, 2, 16).mean(1))
    meanpool_kv_heads(model, 1)
    assert model.config.num_key_value_heads == 1
    assert all(a.num_key_value_groups == 4 and a.k_proj.out_features == 16 for a in attention_layers(model))


def test_projection_basis_is_applied_per_group(tiny_mha):
    lay = HeadLayout(n_query=4, n_kv=4, head_dim=16, groups=2)
    linear = torch.nn.Linear(64, 64, bias=False)
    basis = torch.randn(2, 16, 32, dtype=torch.float64)
    projected = project_kv_rows(linear, lay, basis)
    x = torch.randn(3, 64)
    full = linear(x).view(3, 2, 32).double()
    expected = torch.einsum("ngc,gec->nge", full, basis).reshape(3, 32).float()
    torch.testing.assert_close(projected(x), expected, atol=1e-5, rtol=1e-5)


def test_unsupported_attention_is_a_clear_error():
    with pytest.raises(MethodConfigError, match="q_proj/k_proj/v_proj/o_proj"):
        attention_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))
