"""The roofline floor of a decode step: the formula on known numbers, the model's bytes and FLOPs, and the
machine's bandwidth and matmul rate measured once per process."""

from __future__ import annotations

import pytest
import torch

from kvbench.eval import roofline


def test_the_floor_is_bytes_over_bandwidth_when_memory_bound():
    # 1 GB at 10 GB/s = 100 ms; 1 GFLOP at 100 GFLOP/s = 10 ms
    floor = roofline.floor_ms(1e9, 1e9, bandwidth_bytes_s=10e9, matmul_flop_s=100e9)
    assert floor == {"floor_ms_per_step": pytest.approx(100.0), "floor_bound": "memory"}


def test_the_floor_is_flops_over_rate_when_compute_bound():
    # 1 GB at 100 GB/s = 10 ms; 5 GFLOP at 100 GFLOP/s = 50 ms
    floor = roofline.floor_ms(1e9, 5e9, bandwidth_bytes_s=100e9, matmul_flop_s=100e9)
    assert floor == {"floor_ms_per_step": pytest.approx(50.0), "floor_bound": "compute"}


def test_a_step_reads_weights_and_cache_once_and_multiplies_every_weight_per_token():
    cost = roofline.step_cost(batch=8, weight_bytes=1000, matmul_params=100, cache_bytes=500, cached_tokens=10,
                              attention=3)
    assert cost["step_bytes"] == 1500
    assert cost["step_flops"] == 2 * 8 * 100 + 4 * 8 * 3 * 10  # linear layers + QK^T and AV over 10 tokens


def test_the_weight_profile_counts_a_tied_lm_head_once_and_skips_an_untied_embedding_table(tiny_gqa):
    model, _ = tiny_gqa
    profile = roofline.weight_profile(model)
    linear = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert profile["matmul_params"] == sum(w.nelement() for w in linear)
    embedding = model.get_input_embeddings().weight
    tied = any(w is embedding for w in linear)
    everything = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    total = sum(t.nelement() * t.element_size() for t in everything.values())
    expected = total if tied else total - embedding.nelement() * embedding.element_size()
    assert profile["weight_bytes"] == expected
    config = model.config
    assert roofline.attention_size(model) == config.num_hidden_layers * config.num_attention_heads * (
        config.hidden_size // config.num_attention_heads)


def test_the_machine_is_measured_once_per_process_and_reused(monkeypatch):
    calls = []
    real = roofline.measure_bandwidth

    def counted(device, buffer_bytes=None, repeats=5):
        calls.append(device)
        return real(device, buffer_bytes=8 << 20, repeats=2)

    monkeypatch.setattr(roofline, "measure_bandwidth", counted)
    monkeypatch.setattr(roofline, "_MEASURED", {})
    first = roofline.measure_machine(torch.device("cpu"), torch.float32, 64, 128)
    second = roofline.measure_machine(torch.device("cpu"), torch.float32, 64, 128)
    assert first == second and len(calls) == 1
    assert first["bandwidth_bytes_s"] > 0 and first["matmul_flop_s"] > 0
    assert first["gemm_shape"] == [roofline.GEMM_ROWS, 64, 128] and first["timer"] == "perf_counter"


def test_the_copy_buffer_is_larger_than_the_last_level_cache():
    measured = roofline.measure_bandwidth(torch.device("cpu"), repeats=1)
    assert measured["buffer_bytes"] >= max(roofline.MIN_CPU_BUFFER, 4 * roofline.last_level_cache_bytes())
