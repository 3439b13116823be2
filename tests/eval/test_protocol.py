"""The protocol is chosen once, from the method: a single-pass method (H2O's masking simulation) is measured by
``SinglePassProtocol``, every other method by ``CompressionProtocol``, whoever builds it."""

from __future__ import annotations

import copy

import pytest

from kvbench.eval.protocol import CompressionProtocol, SinglePassProtocol
from kvbench.methods import build_method


def test_compression_protocol_builds_the_single_pass_protocol_for_a_single_pass_method_only(tiny_gqa):
    model, _ = tiny_gqa
    simulate = build_method("h2o", protocol="simulate")
    simulated = CompressionProtocol(simulate.apply(copy.deepcopy(model)), simulate, model.config)
    assert type(simulated) is SinglePassProtocol and simulated.method is simulate
    for name in ("full", "h2o"):
        assert type(CompressionProtocol(model, build_method(name))) is CompressionProtocol
    with pytest.raises(TypeError, match="single-pass methods only; method='h2o' compresses its cache"):
        SinglePassProtocol(model, build_method("h2o"))



def test_only_a_plain_cache_is_rewound_by_a_crop(tiny_gqa):
    model, _ = tiny_gqa
    from kvbench.eval import protocol as protocol_module

    assert protocol_module.rewinds_exactly(build_method("full").new_cache(model))
    h2o = build_method("h2o")
    assert not protocol_module.rewinds_exactly(h2o.new_cache(h2o.apply(copy.deepcopy(model))))


def test_scoring_on_a_rewound_cache_equals_scoring_on_copies_and_measures_the_same_bytes(tiny_gqa, monkeypatch):
    model, _ = tiny_gqa
    from kvbench.eval import protocol as protocol_module

    context = list(range(3, 40))
    continuations = [[50, 51], [60], [70, 71], [80, 81, 82], [90]]
    rewound = CompressionProtocol(model, build_method("full"))
    got = rewound.score_continuations(context, continuations)
    monkeypatch.setattr(protocol_module, "rewinds_exactly", lambda cache: False)
    copied = CompressionProtocol(model, build_method("full"))
    want = copied.score_continuations(context, continuations)
    for (score, greedy), (expected, expected_greedy) in zip(got, want):
        assert score == pytest.approx(expected, abs=1e-5) and greedy == expected_greedy
    for field in ("stored_bytes", "full_bytes", "peak_stored_bytes", "peak_full_bytes", "scored_tokens", "n_prefills"):
        assert getattr(rewound.stats, field) == getattr(copied.stats, field), field
    assert rewound.stats.peak_stored_bytes > rewound.stats.stored_bytes > 0  # the peak: context + longest continuation
