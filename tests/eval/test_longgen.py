"""kvbench/eval/longgen.py: position bins of a trace, where an output departs from full's, and the checkable
progression."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from kvbench.eval.longgen import bins, binned, correct_terms, first_disagreement, progression_prompt


def test_binned_means_cover_each_bin_the_trace_reaches():
    values = torch.cat([torch.zeros(256), torch.ones(768), torch.full((10,), 3.0)])
    assert binned(values) == {"0_256": 0.0, "256_1k": 1.0, "1k_plus": 3.0}
    assert binned(torch.ones(5)) == {"0_256": 1.0, "256_1k": None, "1k_plus": None}


def test_moved_bin_edges_name_and_cut_the_bins_where_they_say():
    assert [b[0] for b in bins((32, 64, 2048))] == ["0_32", "32_64", "64_2k", "2k_plus"]
    assert binned(torch.arange(100.0), (32, 64)) == {"0_32": 15.5, "32_64": 47.5, "64_plus": 81.5}


def test_a_progression_is_checked_term_by_term_up_to_the_first_error():
    text, start, step, shown = progression_prompt(random.Random(0))
    assert text.endswith(f"{start + (shown - 1) * step},")
    right = ", ".join(str(start + (shown + i) * step) for i in range(5))
    assert correct_terms(f" {right}, 1, {start + (shown + 6) * step}", start, step, shown) == 5
    assert correct_terms(" nothing", start, step, shown) == 0


def test_first_disagreement_is_the_first_differing_token_or_the_end_of_the_shorter_output():
    assert first_disagreement([5, 6, 7, 8], [5, 6, 9, 8]) == (2, True)
    assert first_disagreement([1, 2, 3], [9, 2, 3]) == (0, True)
    assert first_disagreement([5, 6], [5, 6, 7]) == (2, True)  # stopped early: departs where it stopped
    assert first_disagreement([5, 6, 7], [5, 6, 7]) == (3, False)  # never departs: censored at the length


def test_fulls_generation_is_made_once_per_key_and_reused_unchanged(tiny_gqa, monkeypatch):
    from kvbench.eval import longgen
    from kvbench.eval.protocol import CompressionProtocol
    from kvbench.methods import build_method

    monkeypatch.setattr(longgen, "_FULL_TRACES", {})
    reference = CompressionProtocol(tiny_gqa[0], build_method("full"))
    calls = []
    real = reference.generate_batch
    monkeypatch.setattr(reference, "generate_batch", lambda *a, **k: calls.append(a) or real(*a, **k))
    prompt = list(range(5, 17))
    first = longgen.full_trace(lambda: reference, prompt, 10, key="tiny")
    again = longgen.full_trace(lambda: pytest.fail("loaded the reference again"), prompt, 10, key="tiny")
    unkept = longgen.full_trace(lambda: reference, prompt, 10)
    assert len(calls) == 2  # the keyed repeat was not generated again; the unkeyed one was
    assert again[0] == first[0] == unkept[0] and torch.equal(again[1], unkept[1])
    longgen.full_trace(lambda: reference, prompt, 11, key="tiny")  # another length is another generation
    assert len(calls) == 3


@pytest.mark.parametrize("method", ["full", "h2o_decode"])
def test_a_batched_trace_gives_each_prompt_what_tracing_it_alone_gives(tiny_gqa, monkeypatch, method):
    from kvbench.eval import longgen
    from kvbench.eval.protocol import CompressionProtocol
    from kvbench.methods import build_method

    model, tokenizer = tiny_gqa
    reference = CompressionProtocol(model, build_method("full"))
    built = build_method("full") if method == "full" else build_method(
        "h2o", heavy_ratio=1.0, recent_ratio=1.0, decode_budget_tokens=12, compress_every=1)
    model = built.apply(copy.deepcopy(model), tokenizer)
    prompts = [list(range(5 + i, 21 + i)) for i in range(3)]
    monkeypatch.setattr(longgen, "_FULL_TRACES", {})
    alone = [longgen.trace(lambda: reference, CompressionProtocol(model, built), p, 24) for p in prompts]
    monkeypatch.setattr(longgen, "_FULL_TRACES", {})
    protocol = CompressionProtocol(model, built)
    batched = longgen.trace_batch(lambda: reference, protocol, prompts, 24)
    for one, many in zip(alone, batched):
        assert many.output == one.output and many.full_output == one.full_output
        assert many.first_disagreement == one.first_disagreement and many.decode_rows == 6
        assert many.kl == pytest.approx(one.kl, rel=1e-3, abs=1e-9) and many.top1_agreement == one.top1_agreement
    if method != "full":  # the compressed cache departs within 24 tokens: the comparison is not vacuous
        assert all(t.kl > 1e-4 for t in batched)
    assert protocol.stats.generations == 6  # one batch: the generations and teacher-forced passes as its rows
