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

