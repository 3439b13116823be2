"""suite.runner=longbench: data checks before the model loads, end-to-end runs, configs."""

from __future__ import annotations

import json

import pytest

from kvbench.config import ModelConfig
from kvbench.errors import SuiteConfigError
from kvbench.eval import longbench as lb
from kvbench.suites.longbench import LongBenchConfig
from tests.conftest import longbench_record as record
from tests.conftest import run_suite, write_jsonl


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "longbench"
    d.mkdir()
    write_jsonl(d / "hotpotqa.jsonl", [record(0), record(1)])
    write_jsonl(d / "trec.jsonl", [record(2, answers=["Person"], all_classes=["Person", "Location", "Number"])])
    write_jsonl(d / "hotpotqa_e.jsonl", [record(0), record(2)])
    return d


def suite(data_dir, tasks=("hotpotqa", "trec"), **options) -> LongBenchConfig:
    return LongBenchConfig(name="longbench", tasks=list(tasks), max_gen_toks=3,
                           options={"data_dir": str(data_dir), **options})


def validate(cfg, model_cfg=None):
    from kvbench.suites import build_suite

    return build_suite(cfg).validate(model_cfg)


def test_run_suite_on_tiny_model_writes_predictions_and_scores_that_rescore_identically(tiny_gqa, data_dir, tmp_path):
    model, tok = tiny_gqa
    out = tmp_path / "out"
    metrics, protocol = run_suite(suite(data_dir), model, tok, ModelConfig(max_length=512, chat=False), out)

    assert set(metrics) == {"hotpotqa", "trec", "average"}
    assert set(metrics["hotpotqa"]) == {"qa_f1_score"} and set(metrics["trec"]) == {"classification_score"}
    preds = [json.loads(line) for line in (out / "longbench" / "hotpotqa.jsonl").read_text().splitlines()]
    assert len(preds) == 2 and all(p["answers"] == ["Ann"] and p["split"] == "query" for p in preds)
    assert all(1 <= p["generated_tokens"] <= 3 and p["query_tokens"] > 0 for p in preds)
    saved = json.loads((out / "longbench" / "result.json").read_text())
    assert saved == metrics
    assert lb.rescore(out / "longbench") == {k: v for k, v in metrics.items() if k != "average"}
    assert protocol.stats.n_prefills == 3


def test_longbench_e_reports_buckets_present_in_the_data(tiny_gqa, data_dir, tmp_path):
    model, tok = tiny_gqa
    metrics, _ = run_suite(suite(data_dir, tasks=["hotpotqa"], e=True), model, tok,
                           ModelConfig(max_length=512, chat=False), tmp_path / "out")
    assert set(metrics["hotpotqa"]) == {"qa_f1_score", "qa_f1_score@0-4k", "qa_f1_score@4-8k"}


# -- bad input ------------------------------------------------------------------------------------
def test_missing_data_dir_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(lb.LongBenchError, match="data_dir"):
        validate(LongBenchConfig(name="longbench", tasks=["hotpotqa"]))
    with pytest.raises(lb.LongBenchError, match="not a directory"):
        validate(LongBenchConfig(name="longbench", tasks=["hotpotqa"], options={"data_dir": "/nonexistent/lb"}))


def test_unknown_dataset_names_the_valid_ones(data_dir):
    with pytest.raises(lb.LongBenchError, match=r"'nq'.*choose from: narrativeqa, qasper"):
        validate(suite(data_dir, tasks=["hotpotqa", "nq"]))
    with pytest.raises(lb.LongBenchError, match="LongBench-E"):
        validate(suite(data_dir, tasks=["musique"], e=True))
    with pytest.raises(SuiteConfigError, match=r"suite.options has unknown key\(s\) datadir \(valid: data_dir, e"):
        validate(suite(data_dir, tasks=["hotpotqa"], datadir="x"))


def test_missing_file_and_bad_records_name_the_file_and_line(data_dir, tiny_gqa, tmp_path):
    with pytest.raises(lb.LongBenchError, match=r"'lcc' not found: .*lcc\.jsonl"):
        validate(suite(data_dir, tasks=["lcc"]))
    bad = record(1)
    del bad["answers"]
    write_jsonl(data_dir / "hotpotqa.jsonl", [record(0), bad])
    with pytest.raises(lb.LongBenchError, match=r"hotpotqa\.jsonl:2: record has no 'answers' field"):
        validate(suite(data_dir))
    (data_dir / "trec.jsonl").write_text(json.dumps(record(0, all_classes=None)) + "\n")
    with pytest.raises(lb.LongBenchError, match=r"trec\.jsonl:1: trec records need a non-empty 'all_classes'"):
        validate(suite(data_dir, tasks=["trec"]))
    # validation reads every file before anything runs: no prediction or score file is written
    model, tok = tiny_gqa
    out = tmp_path / "out"
    with pytest.raises(lb.LongBenchError):
        run_suite(suite(data_dir), model, tok, ModelConfig(chat=False), out)
    assert not out.exists()


def test_suite_configs_compose_with_their_schemas():
    from kvbench.compose import compose_config
    from kvbench.eval.longbench_data import check_datasets

    for name in ("longbench", "longbench_e", "minicache_longbench"):
        cfg = compose_config([f"suite={name}"]).suite
        assert cfg.runner == "longbench" and cfg.name == name
        check_datasets(list(cfg.tasks), cfg.options.e)
    with pytest.raises(Exception, match="suite.options.datadir"):  # an unknown option fails at composition
        compose_config(["suite=longbench", "suite.options.datadir=x"])
    with pytest.raises(SuiteConfigError, match="datadir"):  # ... and when forced in with '+', at validation
        validate(compose_config(["suite=longbench", "+suite.options.datadir=x"]).suite)


def test_paper_lm_eval_suites_compose_with_the_schema():
    from kvbench.compose import compose_config

    expected = {"minicache_lmeval": ({"gsm8k", "coqa", "truthfulqa_mc2"}, None),
                "svd_gqa_paper": ({"mmlu", "wikitext"}, 0),
                "h2o_paper": ({"copa", "openbookqa", "piqa", "winogrande"}, 5)}
    for name, (tasks, shots) in expected.items():
        cfg = compose_config([f"suite={name}"]).suite
        assert cfg.runner == "lm_eval" and set(cfg.tasks) == tasks and cfg.num_fewshot == shots
