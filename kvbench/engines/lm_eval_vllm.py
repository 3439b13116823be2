"""kvbench's lm-eval suites through lm-eval's own ``vllm`` model, in the engine environment (issue 29, item 4):
quality as the engine serves it, beside kvbench's ``full`` on the same samples.

lm-eval runs in ``.venv-vllm`` (its ``vllm`` model builds vLLM's ``LLM``), driven by
:mod:`kvbench.engines.vllm_driver` (job ``lm_eval``), so kvbench's environment keeps its lock. kvbench's offline
tasks generate their data with kvbench's code (``custom_dataset: !function quick.*``), which the engine
environment does not have: kvbench writes each task's data here as JSONL and hands the engine a copy of the task's
YAML that reads it (``dataset_path: json``), beside a copy of its utils file (the scoring functions import nothing
of kvbench). The engine therefore scores the very documents kvbench's ``full`` scores, with the same doc ids, and
the report's paired tests compare the two sample by sample. Tasks that are not kvbench's are passed by name.

The KV cache figures of such a row are vLLM's (``kv.source: engine``): bytes per token from its block accounting
(the cache's bytes ÷ its blocks × tokens per block) against the model dtype's keys and values per token.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
from pathlib import Path

from kvbench.engines import vllm_launcher as vllm
from kvbench.engines.export import engine_model_dir
from kvbench.eval.lm import TASKS_DIR

#: A kvbench task's data source: ``custom_dataset: !function <utils module>.<function>``.
CUSTOM_DATASET = re.compile(r"^custom_dataset:\s*!function\s+(\w+)\.(\w+)\s*$", re.M)
EMPTY_DATASET_PATH = re.compile(r"^dataset_path:\s*(\"\"|'')\s*$", re.M)


def kvbench_task_files() -> dict[str, Path]:
    """kvbench's offline tasks: ``{task name: its YAML}``."""
    return {path.stem: path for path in sorted(TASKS_DIR.glob("*.yaml"))}


def engine_task_yaml(text: str, data_file: Path) -> str:
    """A kvbench task's YAML that reads its data from ``data_file`` (JSONL, the test split) instead of calling
    kvbench's generator."""
    text = EMPTY_DATASET_PATH.sub("", CUSTOM_DATASET.sub("", text))
    return text.rstrip() + f"\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data_file))}\n"


def write_engine_tasks(tasks: list[str], seed: int, directory: Path) -> Path:
    """Under ``directory``: every kvbench task of ``tasks`` as data (JSONL, generated here with ``seed``), its YAML
    reading that data, and its utils file. Returns the directory (lm-eval's ``include_path``)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = kvbench_task_files()
    for task in (t for t in tasks if t in files):
        text = files[task].read_text(encoding="utf-8")
        found = CUSTOM_DATASET.search(text)
        if found is None:
            shutil.copy(files[task], directory / files[task].name)
            continue
        module, function = found.groups()
        split = getattr(importlib.import_module(f"kvbench.eval.tasks.{module}"), function)(seed=seed)["test"]
        data = directory / f"{task}.jsonl"
        data.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in split), encoding="utf-8")
        (directory / files[task].name).write_text(engine_task_yaml(text, data), encoding="utf-8")
        shutil.copy(TASKS_DIR / f"{module}.py", directory / f"{module}.py")
    return directory


def evaluate(engine, model_cfg, suite_cfg, tasks: list[str], gen_kwargs: dict | None, num_fewshot: dict,
             seed: int, scratch: Path) -> dict:
    """Every task of ``tasks`` through lm-eval's ``vllm`` model in the engine environment: the driver's response
    (per task, what ``simple_evaluate`` returned: results, samples, configs, higher_is_better)."""
    include = write_engine_tasks(tasks, seed, Path(scratch) / "engine_tasks")
    request = {"job": "lm_eval", "model_dir": str(engine_model_dir(model_cfg)), "dtype": model_cfg.dtype,
               "max_model_len": model_cfg.max_length, "seed": seed, "tasks": tasks, "include_path": str(include),
               "include_defaults": any(t not in kvbench_task_files() for t in tasks), "limit": suite_cfg.limit,
               "num_fewshot": num_fewshot, "gen_kwargs": gen_kwargs}
    return vllm.run_driver(engine, request)


def engine_kv(response: dict, reference_config, model_dtype_bytes: int) -> dict:
    """The record's ``kv`` part of an engine row: vLLM's bytes per token (its block accounting, where it reported
    it; else from the model's shape and its ``kv_cache_dtype``) against the model dtype's, labelled ``engine``."""
    info = response.get("engine") or {}
    full = vllm.kv_bytes_per_token(reference_config, "auto", model_dtype_bytes)
    blocks, block_size, space = response.get("kv_blocks"), response.get("block_size"), info.get("kv_cache_memory_bytes")
    accounted = space / (blocks * block_size) if blocks and block_size and space else None
    per_token = accounted or vllm.kv_bytes_per_token(reference_config, info.get("kv_cache_dtype", "auto"),
                                                     model_dtype_bytes)
    return {"ratio": full / per_token, "source": "engine",
            "aggregation": "per token: the uncompressed K and V bytes of one token in the model's dtype ÷ the bytes "
                           "vLLM's cache gives one token (engine-reported, not measured from tensors)",
            "notes": {"engine": f"vllm {info.get('version')}", "kv_cache_dtype": info.get("kv_cache_dtype"),
                      "kv_blocks": blocks, "block_size": block_size, "bytes_per_token": per_token,
                      "bytes_per_token_source": "block accounting" if accounted else "model shape",
                      "full_bytes_per_token": full}}
