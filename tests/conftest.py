"""Shared fixtures: seeded tiny random Llama models (built per test) and the bundled SmolLM2 (loaded once)."""

from __future__ import annotations

import copy
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _kvbench_cache_dir(tmp_path, monkeypatch):
    """Task data, calibration projections and LongBench downloads of a test go to its own temp dir."""
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path / "kvbench-cache"))


@pytest.fixture
def tiny_gqa():
    """(model, tokenizer): 4 layers, 4 query heads, 2 KV heads, RoPE, float32, seed 0."""
    from kvbench.models import tiny_llama

    return tiny_llama("llama-gqa", seed=0)


@pytest.fixture
def tiny_mha():
    """(model, tokenizer): 4 layers, 4 query heads, 4 KV heads, RoPE, float32, seed 0."""
    from kvbench.models import tiny_llama

    return tiny_llama("llama-mha", seed=0)


@pytest.fixture(scope="session")
def _smollm2_session():
    from kvbench.models import ModelConfig, load_model

    return load_model(ModelConfig())


@pytest.fixture
def smollm2(_smollm2_session):
    """(model, tokenizer) of the bundled SmolLM2-135M-Instruct; the model is a private copy per test."""
    model, tokenizer = _smollm2_session
    return copy.deepcopy(model), tokenizer


@pytest.fixture
def smollm2_shared(_smollm2_session):
    """The session's SmolLM2 (model, tokenizer) itself: for tests that do not modify the model."""
    return _smollm2_session


# -- helpers shared by the test modules (import them: ``from tests.conftest import random_ids``) ----------
def random_ids(n: int, seed: int = 0, vocab: int = 256):
    """``[1, n]`` seeded random token ids of the tiny models' byte vocabulary."""
    import torch

    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def method_from_config(*overrides: str):
    """The method a composed kvbench config describes, e.g. ``method_from_config("method=h2o_local")``."""
    from kvbench.compose import compose_config
    from kvbench.validation import build_method_from

    return build_method_from(compose_config(list(overrides)).method)


@pytest.fixture
def no_grad():
    """Run the test without autograd (use with ``pytestmark = pytest.mark.usefixtures("no_grad")``)."""
    import torch

    with torch.no_grad():
        yield


# -- LongBench fixtures (tests/eval/test_longbench.py, tests/suites/test_longbench.py) ---------------------
def longbench_record(i: int, **over) -> dict:
    """A small LongBench-format record whose answer is in its context."""
    base = {"input": f"Who wrote book {i}?", "context": f"Passage {i}: book {i} was written by Ann. " * 6,
            "answers": ["Ann"], "length": 40 + 3000 * i, "all_classes": None, "dataset": "hotpotqa",
            "language": "en", "_id": f"id{i}"}
    base.update(over)
    return base


def write_jsonl(path, rows) -> None:
    import json

    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def run_suite(suite_cfg, model, tokenizer, model_cfg, output_dir, method: str = "full"):
    """``({task: metrics}, protocol)``: validate the suite, then run it through the protocol, as the runner does."""
    from kvbench.eval.protocol import CompressionProtocol
    from kvbench.methods import build_method
    from kvbench.suites import RunContext, build_suite

    suite = build_suite(suite_cfg)
    plan = suite.validate(model_cfg)
    protocol = CompressionProtocol(model, build_method(method))
    results = list(suite.run(plan, RunContext(protocol, tokenizer, model_cfg, output_dir)))
    return {r.task: r.metrics for r in results}, protocol
