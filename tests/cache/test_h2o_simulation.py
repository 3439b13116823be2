"""H2O's masking simulation (METHODS.md §3b): plain attention when the budget covers every key, the official
band and heavy-hitter rule on hand-built attention, and the case that separates it from real eviction."""

from __future__ import annotations

import copy

import pytest
import torch

from kvbench.cache.h2o import H2OBudget, H2OLayer
from kvbench.cache.h2o_simulation import simulated_attention, visible
from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import build_method
from tests.cache.test_h2o import _Attention, _causal_probs, _one_hot_keys, _queries_for, _run
from tests.conftest import random_ids

pytestmark = pytest.mark.usefixtures("no_grad")


def _module(groups: int, budget: H2OBudget, agg: str = "sum"):
    module = _Attention(groups)
    module.kvbench_h2o_simulation = (budget, agg)
    return module


@pytest.mark.parametrize("budget", [H2OBudget(heavy_ratio=1.0, recent_ratio=0.1),
                                    H2OBudget(heavy_ratio=0.0, recent_ratio=1.0),
                                    H2OBudget(heavy_tokens=0, recent_tokens=64)])
def test_budget_covering_every_key_reproduces_plain_attention(budget):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, 37, 16, generator=gen) for n in (6, 2, 2))  # GQA: 3 query heads per KV head
    module = _module(3, budget)
    module.scaling = 0.25
    expected, _ = sdpa_attention_forward(module, q, k, v, None, scaling=0.25, dropout=0.0)
    got, _ = simulated_attention(module, q, k, v, None, scaling=0.25)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_visible_keys_are_heavy_hitters_summed_over_all_rows_plus_the_official_band():
    # 6 tokens, 1 head; column sums over all rows: key 0 2.6, key 1 0.2, key 2 1.9 -> heavy {0, 2} with H = 2
    probs = _causal_probs([[1.0], [0.5, 0.5], [0.4, 0.0, 0.6], [0.3, 0.0, 0.6, 0.1],
                           [0.2, 0.1, 0.3, 0.2, 0.2], [0.2, 0.1, 0.4, 0.1, 0.1, 0.1]])
    seen = visible(_queries_for(probs[None], 8), _one_hot_keys(0, 6, 1, 8), None, 1.0, heavy=2, recent=1)
    # row i sees the heavy keys it may causally see, and keys i-1, i (|i - j| <= R, as the official mask)
    assert [torch.nonzero(row).flatten().tolist() for row in seen[0, 0]] == [
        [0], [0, 1], [0, 1, 2], [0, 2, 3], [0, 2, 3, 4], [0, 2, 4, 5]]


def test_simulate_keeps_a_key_only_a_later_query_attends_to_where_real_eviction_drops_it():
    # Prompt = tokens 0-3, continuation = token 4. The prompt's queries ignore key 1; the continuation's
    # query (row 4) attends to it almost only. Budget: 2 heavy + 1 recent.
    probs = _causal_probs([[1.0], [0.99, 0.01], [0.5, 0.0, 0.5], [0.5, 0.0, 0.3, 0.2],
                           [0.02, 0.9, 0.02, 0.02, 0.04]])
    # real eviction: after the 4-token prompt, scores 0: 2.99, 1: 0.01, 2: 0.8 -> keeps 0, 2 (+ recent 3)
    layer = H2OLayer(H2OBudget(heavy_tokens=2, recent_tokens=1))
    _run(layer, probs[None, :4, :4], first=0, n_kv_heads=1)
    assert layer.kept_positions().tolist() == [[[0, 2, 3]]]  # key 1 is gone before row 4 arrives
    # simulation over all 5 rows: key 1 sums to 0.91 > key 2's 0.82 -> heavy {0, 1}; row 4 sees key 1
    seen = visible(_queries_for(probs[None], 8), _one_hot_keys(0, 5, 1, 8), None, 1.0, heavy=2, recent=1)
    assert seen[0, 0, 4].tolist() == [True, True, False, True, True]
    # and the output of row 4 really uses it: its attention renormalises over 0, 1, 3, 4
    module = _module(1, H2OBudget(heavy_tokens=2, recent_tokens=1))
    values = torch.eye(8)[None, None, :5]
    out, _ = simulated_attention(module, _queries_for(probs[None], 8), _one_hot_keys(0, 5, 1, 8), values, None,
                                 scaling=1.0)
    row4 = probs[4, [0, 1, 3, 4]] / probs[4, [0, 1, 3, 4]].sum()
    torch.testing.assert_close(out[0, 4, 0, [0, 1, 3, 4]], row4, atol=1e-5, rtol=1e-5)
    assert out[0, 4, 0, 2] == 0


@pytest.mark.parametrize("params", [dict(heavy_ratio=1.0), dict(heavy_ratio=0.0, recent_ratio=1.0)])
def test_budget_covering_all_tokens_reproduces_full_through_the_protocol(tiny_gqa, params):
    model, _ = tiny_gqa
    method = build_method("h2o", protocol="simulate", **params)
    simulated = method.apply(copy.deepcopy(model))
    context = random_ids(40)[0].tolist()
    continuations = [random_ids(5, seed=s)[0].tolist() for s in (1, 2)]
    full, ours = CompressionProtocol(model, build_method("full")), CompressionProtocol(simulated, method)
    expected, got = full.score_continuations(context, continuations), ours.score_continuations(context, continuations)
    assert [g[1] for g in got] == [e[1] for e in expected]
    assert [g[0] for g in got] == pytest.approx([e[0] for e in expected], abs=1e-4)
    assert ours.stream_logprob(context, continuations[0], chunk=4) == pytest.approx(
        full.stream_logprob(context, continuations[0], chunk=4), abs=1e-4)
    assert ours.generate(context, 6) == full.generate(context, 6)
    torch.testing.assert_close(simulated(random_ids(30)).logits, model(random_ids(30)).logits, atol=1e-4, rtol=1e-4)


def test_simulation_scores_each_request_in_one_forward_and_stores_every_token(tiny_gqa):
    model, _ = tiny_gqa
    method = build_method("h2o", protocol="simulate")  # 10% + 10%: really masked
    simulated = method.apply(copy.deepcopy(model))
    protocol = CompressionProtocol(simulated, method)
    context = random_ids(50)[0].tolist()
    continuation = random_ids(6, seed=1)[0].tolist()
    (logprob, _), = protocol.score_continuations(context, [continuation])
    # the same number as one masked forward of the whole sequence read at the continuation's positions
    logits = simulated(torch.tensor([context + continuation[:-1]])).logits[0, len(context) - 1:]
    expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(continuation)[:, None]).sum()
    assert logprob == pytest.approx(float(expected), abs=1e-5)
    assert protocol.stats.n_prefills == 1 and protocol.stats.prefill_tokens == 55
    assert protocol.stats.ratio == 1.0  # a simulation evicts nothing
    real = CompressionProtocol(build_method("h2o").apply(copy.deepcopy(model)), build_method("h2o"))
    assert real.score_continuations(context, [continuation])[0][0] != pytest.approx(logprob, abs=1e-3)


def test_a_padded_batch_reaches_the_model_mask_and_matches_each_sequence_alone(tiny_gqa):
    # left padding makes transformers hand the attention a mask (None without padding): the masked branch
    model, _ = tiny_gqa
    method = build_method("h2o", protocol="simulate", heavy_ratio=1.0)  # covers every key: plain attention
    simulated = method.apply(copy.deepcopy(model))
    short, long = random_ids(12, seed=3), random_ids(16, seed=4)
    ids = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    batched = simulated(ids, attention_mask=mask).logits
    torch.testing.assert_close(batched[0, 4:], model(short).logits[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batched[1], model(long).logits[0], atol=1e-4, rtol=1e-4)
