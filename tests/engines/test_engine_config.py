"""The engine config group (conf/engine/, conf/arm/) and its checks before any model loads (issue 29)."""

import pytest

from kvbench.compose import compose_config, experiment_jobs
from kvbench.engines.vllm_launcher import EngineUnavailableError
from kvbench.errors import ConfigError
from kvbench.results import config_hash
from kvbench.validation import validate


@pytest.fixture
def no_engine_env(monkeypatch, tmp_path):
    monkeypatch.setenv("KVBENCH_ENGINE_PYTHON", str(tmp_path / "missing" / "python"))


def test_engine_refuses_a_compression_method_in_one_line():
    with pytest.raises(ConfigError, match="engine=vllm serves the uncompressed model.*method=full"):
        validate(compose_config(["engine=vllm", "method=h2o", "suite=efficiency"]))


def test_engine_refuses_a_suite_it_does_not_run_naming_the_ones_it_does():
    with pytest.raises(ConfigError, match="runs the suites with runner efficiency, lm_eval here, not suite.runner=fidelity"):
        validate(compose_config(["engine=vllm", "suite=fidelity"]))


def test_lm_eval_suites_run_through_the_engine_labelled_by_its_name(no_engine_env):
    notes = []
    plan = validate(compose_config(["engine=vllm_fp8", "suite=quick"]), unavailable=notes)
    assert plan.label == "vllm_fp8" and any("make engine-env" in note for note in notes)


def test_missing_engine_environment_fails_before_the_model_loads(no_engine_env):
    with pytest.raises(EngineUnavailableError, match="make engine-env"):
        validate(compose_config(["engine=vllm", "suite=efficiency"]))


def test_dry_run_notes_a_missing_engine_environment_and_labels_the_row(no_engine_env):
    notes = []
    plan = validate(compose_config(["engine=vllm_fp8", "suite=efficiency"]), unavailable=notes)
    assert plan.label == "vllm_fp8" and any("make engine-env" in note for note in notes)


def test_the_default_engine_leaves_config_hashes_as_they_were():
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(compose_config(["method=h2o"]), resolve=True)
    assert resolved["engine"]["backend"] == "hf"
    without = {k: v for k, v in resolved.items() if k != "engine"}
    assert config_hash(resolved) == config_hash(without)
    with_vllm = OmegaConf.to_container(compose_config(["engine=vllm", "suite=efficiency"]), resolve=True)
    assert config_hash(with_vllm) != config_hash({k: v for k, v in with_vllm.items() if k != "engine"})


def test_fp8_variant_differs_from_vllm_only_in_its_cache_dtype_and_name():
    auto, fp8 = compose_config(["engine=vllm"]).engine, compose_config(["engine=vllm_fp8"]).engine
    assert (auto.kv_cache_dtype, fp8.kv_cache_dtype) == ("auto", "fp8")
    assert {k: v for k, v in auto.items() if k not in ("name", "kv_cache_dtype")} == \
        {k: v for k, v in fp8.items() if k not in ("name", "kv_cache_dtype")}


def test_efficiency_engine_sweeps_arms_not_the_product_of_methods_and_engines():
    arms = []
    for job in experiment_jobs("efficiency_engine"):
        cfg = compose_config(["experiment=efficiency_engine", *job])
        arms.append((cfg.method.name, cfg.engine.name))
    assert arms == [("full", "vllm"), ("full", "vllm_fp8"), ("full", "hf"), ("streaming_llm", "hf"), ("h2o", "hf"),
                    ("kivi", "hf")]
