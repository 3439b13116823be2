"""suite.runner=ruler: a metric per task and length, predictions that rescore identically, bad settings."""

from __future__ import annotations

import json

import pytest

from kvbench.config import ModelConfig
from kvbench.errors import SuiteConfigError
from kvbench.eval.ruler import SyntheticError
from kvbench.eval.string_match import rescore
from kvbench.suites.ruler import RulerConfig
from tests.conftest import run_suite


def validate(cfg, model_cfg=None):
    from kvbench.suites import build_suite

    return build_suite(cfg).validate(model_cfg)


def test_run_suite_on_tiny_model_returns_a_metric_per_task_and_length(tiny_gqa, tmp_path):
    model, tok_ = tiny_gqa
    suite = RulerConfig(name="ruler", tasks=["passkey", "fwe"], limit=1,
                        options={"lengths": [1024], "samples_per_length": 3})
    metrics, protocol = run_suite(suite, model, tok_, ModelConfig(max_length=1024, chat=False), tmp_path)
    assert set(metrics) == {"passkey_1024", "fwe_1024"}
    assert set(metrics["passkey_1024"]) == {"string_match_all"}
    assert set(metrics["fwe_1024"]) == {"string_match_all", "string_match_part"}
    rows = [json.loads(x) for x in (tmp_path / "ruler" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and protocol.stats.n_prefills == 2
    assert all(r["context_tokens"] + r["query_tokens"] <= 1024 for r in rows)
    assert rescore(tmp_path / "ruler" / "predictions.jsonl", multi_reference=["fwe"]) == metrics
    assert json.loads((tmp_path / "ruler" / "result.json").read_text()) == metrics


def test_validate_suite_names_bad_settings():
    ok = dict(name="ruler", tasks=["niah_single"])
    validate(RulerConfig(**ok, options={"lengths": [512]}))
    with pytest.raises(SyntheticError, match=r"'niah'.*choose from: niah_single"):
        validate(RulerConfig(**{**ok, "tasks": ["niah"]}))
    with pytest.raises(SyntheticError, match="lengths"):
        validate(RulerConfig(**ok, options={"lengths": [0]}))
    with pytest.raises(SyntheticError, match="lengths"):
        validate(RulerConfig(**ok, options={"lengths": []}))
    with pytest.raises(SyntheticError, match="samples_per_length"):
        validate(RulerConfig(**ok, options={"samples_per_length": 0}))
    with pytest.raises(SuiteConfigError, match="unknown key"):
        validate(RulerConfig(**ok, options={"length": [512]}))
    with pytest.raises(SyntheticError, match="exceed model.max_length=1024"):
        validate(RulerConfig(**ok, options={"lengths": [512, 4096]}), ModelConfig(max_length=1024))


def test_ruler_suite_config_composes_and_validates():
    from kvbench.compose import compose_config

    cfg = compose_config(["suite=ruler"]).suite
    assert cfg.runner == "ruler"
    validate(cfg, ModelConfig())
    assert all(n <= ModelConfig().max_length for n in cfg.options.lengths)
