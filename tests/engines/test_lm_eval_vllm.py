"""kvbench's lm-eval suites through the engine (kvbench/engines/lm_eval_vllm.py): the tasks handed to the engine
environment read the very documents kvbench's own run scores, and an engine row's cache figures are labelled."""

import pytest

from kvbench.engines import lm_eval_vllm
from kvbench.models import tiny_llama_config


@pytest.fixture(autouse=True)
def cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path / "cache"))


def test_engine_task_yaml_reads_its_jsonl_instead_of_calling_kvbench(tmp_path):
    text = 'task: t\ndataset_path: ""\ncustom_dataset: !function quick.prose_dataset\ntest_split: test\n'
    rewritten = lm_eval_vllm.engine_task_yaml(text, tmp_path / "t.jsonl")
    assert "custom_dataset" not in rewritten and 'dataset_path: ""' not in rewritten
    assert "dataset_path: json" in rewritten and f'test: "{tmp_path / "t.jsonl"}"' in rewritten


def test_engine_tasks_load_the_same_documents_as_kvbenchs_own(tmp_path):
    from lm_eval.tasks import TaskManager

    from kvbench.eval.lm import TASKS_DIR

    tasks = ["kvbench_passkey_short", "kvbench_recall_mc"]
    include = lm_eval_vllm.write_engine_tasks(tasks, seed=3, directory=tmp_path / "engine_tasks")
    assert sorted(p.name for p in include.iterdir()) == ["kvbench_passkey_short.jsonl", "kvbench_passkey_short.yaml",
                                                         "kvbench_recall_mc.jsonl", "kvbench_recall_mc.yaml", "quick.py"]
    theirs = TaskManager(include_path=str(include), include_defaults=False, metadata={"seed": 3})
    ours = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"seed": 3})
    for task in tasks:
        engine_docs = list(theirs.load([task])["tasks"][task].test_docs())
        own_docs = list(ours.load([task])["tasks"][task].test_docs())
        assert engine_docs == own_docs and len(own_docs) > 0


def test_engine_row_kv_is_labelled_engine_and_uses_the_block_accounting():
    config = tiny_llama_config("llama-gqa")
    full = 2 * config.num_hidden_layers * config.num_key_value_heads * (config.hidden_size //
                                                                      config.num_attention_heads) * 4
    response = {"kv_blocks": 10, "block_size": 16,
                "engine": {"version": "0.32.0", "kv_cache_dtype": "fp8", "kv_cache_memory_bytes": 10 * 16 * full // 4}}
    kv = lm_eval_vllm.engine_kv(response, config, 4)
    assert kv["source"] == "engine" and kv["ratio"] == pytest.approx(4.0)
    assert kv["notes"]["bytes_per_token_source"] == "block accounting"
    shape_only = lm_eval_vllm.engine_kv({"engine": {"kv_cache_dtype": "fp8"}}, config, 4)
    assert shape_only["ratio"] == pytest.approx(4.0) and shape_only["notes"]["bytes_per_token_source"] == "model shape"
