"""kvbench's side of the vLLM engine (kvbench/engines/vllm_launcher.py, vllm_driver.py's pure parts): no vLLM needed."""

from types import SimpleNamespace

import pytest

from kvbench.config import EngineConfig
from kvbench.engines import vllm_launcher as vllm
from kvbench.engines.vllm_driver import max_concurrency
from kvbench.models import tiny_llama_config


def test_missing_engine_environment_is_one_line_naming_make_engine_env(tmp_path):
    with pytest.raises(vllm.EngineUnavailableError, match="make engine-env"):
        vllm.engine_python(str(tmp_path / "no-such-python"))


def test_engine_python_resolves_relative_paths_against_the_checkout():
    assert vllm.engine_python("pyproject.toml") == vllm.checkout_root() / "pyproject.toml"


@pytest.mark.parametrize("field, value", [("kv_cache_dtype", "int4"), ("kv_cache_space_gb", 0)])
def test_check_engine_refuses_a_bad_option_by_name(field, value):
    engine = EngineConfig(name="vllm", backend="vllm", **{field: value})
    with pytest.raises(vllm.ConfigError, match=f"engine.{field}"):
        vllm.check_engine(engine)


def test_max_concurrency_counts_whole_blocks_per_request():
    # 2080 tokens need 130 blocks of 16: 1000 blocks hold 7 such requests, not 1000 * 16 / 2080 = 7.69
    assert max_concurrency(1000, 16, 2080) == 7
    assert max_concurrency(1000, 16, 2081) == 1000 // 131
    assert max_concurrency(None, 16, 2080) is None


def test_fp8_cache_holds_a_quarter_of_the_fp32_bytes_per_token():
    config = tiny_llama_config("llama-gqa")
    fp32 = vllm.kv_bytes_per_token(config, "auto", 4)
    assert fp32 == 2 * config.num_hidden_layers * config.num_key_value_heads * (config.hidden_size //
                                                                             config.num_attention_heads) * 4
    assert vllm.kv_bytes_per_token(config, "fp8", 4) * 4 == fp32


def test_engine_points_take_whole_blocks_and_compare_with_full_bytes():
    response = {"block_size": 16, "points": [{"batch_size": 2, "context_length": 40, "throughput_tok_s": 1.0}]}
    (point,) = vllm.engine_points(response, per_token=10, full_per_token=40)
    assert point["kv_bytes"] == 2 * 48 * 10  # 40 tokens occupy 3 blocks of 16
    assert point["kv_full_bytes"] == 2 * 39 * 40  # kvbench's full holds the context less the token fed at decode
    assert point["kv_ratio"] == pytest.approx(2 * 39 * 40 / (2 * 48 * 10))
    assert point["kv_source"] == "engine"


def test_driver_environment_drops_kvbench_and_the_whole_gib_cache_override(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere/kvbench")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")  # would override the request's exact kv_cache_memory_bytes
    env = vllm.driver_env(SimpleNamespace(kv_cache_space_gb=3, threads=2))
    assert env["OMP_NUM_THREADS"] == "2" and env["HF_HUB_OFFLINE"] == "1"
    assert "PYTHONPATH" not in env and "VLLM_CPU_KVCACHE_SPACE" not in env


def test_engine_cache_is_the_budget_less_the_weights():
    from kvbench.engines.efficiency import kv_space_gb

    engine = SimpleNamespace(kv_cache_space_gb=7.0)
    assert kv_space_gb(engine, 2.0, 1 << 29) == pytest.approx(1.5)
    assert kv_space_gb(engine, None, 1 << 29) == 7.0


def test_engine_failure_names_the_root_cause_not_vllms_wrapper():
    output = """(EngineCore pid=12) Traceback (most recent call last):
(EngineCore pid=12) NotImplementedError: FP8 KV cache on CPU requires x86 with AVX-512 or AMX.
Traceback (most recent call last):
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
/usr/lib/python3.11/multiprocessing/resource_tracker.py:254: UserWarning: leaked shared_memory objects"""
    assert vllm.root_cause(output) == "NotImplementedError: FP8 KV cache on CPU requires x86 with AVX-512 or AMX."
    assert vllm.root_cause("just a last line") == "just a last line"
