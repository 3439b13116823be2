"""``dry_run=true``: every check a run makes before its model loads, and one line saying what it would run."""

from __future__ import annotations

import pytest

from kvbench import models
from kvbench.compose import compose_config
from kvbench.dry_run import dry_run
from kvbench.errors import MethodConfigError


def test_dry_run_validates_without_loading_and_reports_bad_values(monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a dry run loaded the model"))
    line = dry_run(compose_config(["method=h2o_simulated", "suite.num_fewshot=5"]), "h2o_simulated")
    assert line == ("model=smollm2_135m method=h2o_simulated (simulated) suite=quick tasks=[kvbench_passkey_short, "
                    "kvbench_prose_ppl] num_fewshot=5 limit=32 family=llama: h2o works: ok")
    hub = dry_run(compose_config(["model=llama2_7b", "method=full"]))
    assert hub.startswith("model=llama2_7b method=full suite=quick") and "ok, except not checked offline: " in hub
    with pytest.raises(MethodConfigError, match="method.kv_heads=5 is larger than the model.s 3 KV heads"):
        dry_run(compose_config(["method=svd_gqa", "method.kv_heads=5"]))


def test_a_variant_config_is_named_with_the_parameters_changed_from_its_own_defaults():
    line = dry_run(compose_config(["method=h2o_local", "method.recent_ratio=0.25"]), "h2o_local")
    assert line.startswith("model=smollm2_135m method=h2o_local recent_ratio=0.25 suite=quick")


#: The hub configs of today's models (issue 27), each with its support-matrix family.
HUB_MODELS = {"llama3_1_8b_instruct": "llama", "qwen3_8b": "qwen3", "qwen2_5_7b_instruct": "qwen2",
              "mistral_7b_instruct_v0_3": "llama", "gemma3_12b_it": "gemma3", "phi4_mini": "phi3"}


@pytest.mark.parametrize("model, family", sorted(HUB_MODELS.items()))
def test_each_hub_model_passes_a_dry_run_offline_with_its_family_cell_beside_it(model, family, monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a dry run loaded the model"))
    line = dry_run(compose_config([f"model={model}", "method=full"]))
    assert line.startswith(f"model={model} method=full suite=quick")
    assert f"family={family}: full works" in line and (line.endswith(": ok") or ": ok, except not checked offline: " in line)


def test_a_method_the_family_refuses_fails_the_dry_run_offline_in_one_line():
    with pytest.raises(MethodConfigError) as error:  # gemma3_12b_it: alternating sliding/global layers
        dry_run(compose_config(["model=gemma3_12b_it", "method=h2o"]))
    assert "method=h2o cannot run on Gemma-3 (text) models: h2o evicts by one budget per layer" in str(error.value)
    assert "\n" not in str(error.value)


def test_a_models_config_is_read_once_per_process_and_each_caller_gets_its_own_copy(tmp_path, monkeypatch):
    """A sweep's dry run checks every job against the model's config: a GGUF config is parsed from the whole file
    (seconds), so it is read once per source and copied."""
    from dataclasses import replace

    import transformers

    from kvbench.config import ModelConfig

    models.tiny_llama_config("llama-gqa").save_pretrained(tmp_path)
    reads = []
    real = transformers.AutoConfig.from_pretrained
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained",
                        lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    monkeypatch.setattr(models, "_CONFIGS", {})
    cfg = replace(ModelConfig(), pretrained=str(tmp_path), gguf_file=None)
    first = models.load_config(replace(cfg, attn_implementation="eager"))
    second = models.load_config(cfg)
    assert reads == [str(tmp_path)]
    assert first is not second and first._attn_implementation == "eager"
    assert second.num_hidden_layers == first.num_hidden_layers == 4
