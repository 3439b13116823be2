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
