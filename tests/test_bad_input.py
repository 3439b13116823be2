"""Bad input is one clear line, before any model loads, on every entry point; nothing computed is lost.

Each case asserts the exact behaviour: the exit code, a single stderr line naming the value and the valid
choices, no model load, and the record where one is owed. In-process cases patch the model loader to fail
the test if it is reached; the console scripts' cases (lm-eval's CLI included) call their entry points in-process
with the argv a shell would pass (``run_cli``, tests/conftest.py); tests/test_cli.py's slow tier runs ``lm_eval``
as a process of its own, finding kvbench through the installed ``.pth`` hook.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvbench import models, runner
from kvbench.compose import compose_config
from kvbench.errors import ConfigError, KvbenchError
from kvbench.results import read_record

TINY = ["model=tiny_llama", "logger=none", "suite.limit=1", "suite.tasks=[kvbench_recall_mc]"]


def _one_line(stderr: str, prog: str = "kvbench") -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith(f"{prog}: error: ") and "Traceback" not in stderr
    return lines[0]


@pytest.fixture
def no_model_loading(monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded before the error"))


@pytest.fixture
def run_in(tmp_path, monkeypatch):
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path / "cache"))

    def run(*overrides, output="run"):
        cfg = compose_config([*TINY, f"records_dir={tmp_path / 'records'}", f"reports_dir={tmp_path / 'reports'}",
                              f"logger.dir={tmp_path}", *overrides])
        return runner.run(cfg, tmp_path / output)

    return run


# -- composition: Hydra's errors as one line (kvbench CLI) -----------------------------------------------
@pytest.mark.parametrize("args, expected", [
    (["method=no_such_method"], "method=no_such_method is not a kvbench method config (choose one of: adakv, combined, duo_attention"),
    (["model=no_such_model"], "model=no_such_model is not a kvbench model config (choose one of: bloomz_7b1"),
    (["suite=no_such_suite"], "suite=no_such_suite is not a kvbench suite config (choose one of: efficiency, fidelity, h2o_paper"),
    (["experiment=nope"], "experiment=nope is not a kvbench experiment config (choose one of: baselines, "),
    (["method=h2o", "method.heavy_ratoi=0.3"],
     "method.heavy_ratoi: method=h2o has no setting 'heavy_ratoi' (valid: compress_every, decode_budget_ratio, decode_budget_tokens, group_reduction, heavy_ratio, heavy_tokens"),
    (["suite=longbench", "suite.options.datadir=x"],
     "suite.options.datadir: suite.options has no setting 'datadir' (valid: chat_template, data_dir, e, max_length)"),
    (["method=minicache", "method.gamma=lots"], "method.gamma=lots: Value 'lots' of type 'str' could not be converted"),
    (["method.heavy_ratio=[1,2"], "cannot parse the override 'method.heavy_ratio=[1,2'"),
    (["method=h2o", "method.score_agg=max"], "method=h2o: score_agg was renamed group_reduction (set method.group_reduction"),
    (["method=snapkv", "method.protocol=simulate"],
     "method.protocol: method=snapkv has no masking simulation (protocol=simulate exists for: h2o; snapkv runs real"),
    (["method=svd_gqa", "method.lora.rnak=4"], "method.lora.rnak: method.lora has no setting 'rnak' (valid: alpha, "),
    (["-m", "method=full,nope"], "method=nope is not a kvbench method config"),
    (["seeds=3"], "seeds: the config has no setting 'seeds' (valid: dry_run, engine, force, html, job_device, logger, method, model, paper"),
    (["hydra/launcher=nope"], "hydra/launcher=nope is not a kvbench hydra/launcher config (choose one of: basic, joblib"),
    (["-m", "hydra/launcher=workers", "hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs=0 must be a positive number"),
    # a decode budget on a method without a token axis, or without a decode-time rule, says why (issue 25)
    (["method=kivi", "method.decode_budget_tokens=5"],
     "method.decode_budget_tokens: method=kivi has no token axis, so decode_budget_tokens does not apply"),
    (["method=pyramidkv", "method.compress_every=4"], "method.compress_every: method=pyramidkv cannot compress while decoding"),
])
def test_composition_errors_are_one_line_with_the_valid_choices(run_cli, tmp_path, args, expected):
    result = run_cli([*args, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert result.returncode == 2
    assert expected in _one_line(result.stderr)


def test_composition_error_translation_keeps_hydras_error_as_the_cause():
    with pytest.raises(ConfigError) as error:
        compose_config(["method=h2o", "method.heavy_ratoi=0.3"])
    assert "+method.heavy_ratoi" not in str(error.value)  # Hydra's hint to append is the wrong fix for a typo
    assert type(error.value.__cause__).__name__ == "ConfigCompositionException"


# -- validation before the model loads (runner; one line through the CLI) -------------------------------
@pytest.mark.parametrize("overrides, expected", [
    (["suite.max_gen_toks=0"], "suite.max_gen_toks=0 must be a positive number of tokens"),
    (["suite.num_fewshot=-1"], "suite.num_fewshot=-1 must be >= 0"),
    (["+suite.options.foo=1"], "suite.options has unknown key(s) foo (valid: none)"),
    (["logger.mode=bogus"], "logger.mode='bogus' is not valid (choose one of: offline, online, disabled)"),
    (["model.attn_implementation=sdpaa"], "model.attn_implementation='sdpaa' is not an attention implementation (choose"),
    (["method=h2o", "model.attn_implementation=flash_attention_2"],
     "method=h2o cannot score attention with model.attn_implementation='flash_attention_2' (choose sdpa or eager)"),
    (["model.pretrained=/no/such/model/dir"], "model.pretrained='/no/such/model/dir': no such directory"),
    (["model.dtype=float8"], "model.dtype='float8' is not supported (choose one of: auto, float32"),
    (["method=h2o", "method.heavy_ratio=2.0"], "method.heavy_ratio=2.0 must lie in [0, 1]"),
    (["method=h2o", "+method.heavy_ratoi=1"], "method=h2o has no parameter heavy_ratoi (valid: compress_every, decode_budget_ratio, decode_budget_tokens, group_reduction, heavy_ratio"),
    (["method=h2o", "+method.score_agg=max"], "method=h2o: score_agg was renamed group_reduction"),
    (["method=kivi", "+method.decode_budget_tokens=5"], "method=kivi has no token axis, so decode_budget_tokens"),
    (["method=h2o", "method.compress_every=0"], "method.compress_every=0 must be an integer >= 1"),
    (["method=pyramidkv", "+method.decode_budget_tokens=5"], "method=pyramidkv cannot compress while decoding"),
    (["method=svd_gqa", "method.calibration=allenai/c4"],
     "method.calibration: corpus 'allenai/c4' is a hub dataset, but HF_DATASETS_OFFLINE=1"),
    (["model=llama2_7b"], "model=llama2_7b: could not load the config of 'meta-llama/Llama-2-7b-hf'"),
    (["job_device=gpu0"], "job_device='gpu0' is not valid (choose one of: round_robin, or null)"),
    (["method=minicache", "method.start_layer=7"], "method.start_layer=7 must be in [1, 2] for this 4-layer model"),
    (["method=h2o", "method.protocol=simulated"], "method.protocol='simulated' is not valid (choose one of: real, simulate)"),
    (["method=svd_gqa", "method.init=random"], "method.init='random' is not valid (choose one of: activation, weight)"),
    (["method=svd_gqa", "method.recovery=lora", "method.lora.rank=0"], "method.lora.rank=0 must be an integer >= 1"),
    (["method=meanpool_gqa", "method.recovery=lora", "method.lora.lr=3.0"], "method.lora.lr=3.0 must lie in (0, 1]"),
    (["method=meanpool_gqa", "method.recovery=lora", "method.lora.steps=-5"], "method.lora.steps=-5 must be an integer >= 1"),
    (["method=meanpool_gqa", "method.recovery=finetune"], "method.recovery='finetune' is not valid (choose one of: none, lora)"),
    (["method=adakv", "method.budget_tokens=64", "method.floor_ratio=null", "method.floor_tokens=40"],
     "method.floor_tokens=40 is above the per-head budget: each KV head selects budget_tokens - window = 32 tokens"),
    (["method=snapkv", "method.group_reduction=median"],
     "method.group_reduction='median' is not supported (choose one of: sum, mean, max)"),
    (["method=duo_attention", "method.calibration=''"],
     "method.calibration is empty: duo_attention finds its streaming heads by a calibration on a corpus"),
    (["method=duo_attention", "method.calibration=/no/such/corpus.txt"],
     "method.calibration: corpus file '/no/such/corpus.txt' does not exist"),
])
def test_bad_values_fail_before_the_model_loads_and_leave_a_failed_record(run_in, no_model_loading, tmp_path,
                                                                        overrides, expected):
    with pytest.raises(KvbenchError) as error:
        run_in(*overrides)
    assert expected in str(error.value) and "\n" not in str(error.value)
    record = read_record(tmp_path / "run" / "record.json")
    assert record.status == "failed" and expected in record.error


def test_the_offline_hub_error_says_what_to_do(run_in, no_model_loading):
    with pytest.raises(KvbenchError, match="HF_HUB_OFFLINE is set: a hub model must already be in the local cache"):
        run_in("model=llama2_7b")


@pytest.mark.parametrize("key", ["records_dir", "reports_dir", "hydra.run.dir"])
def test_a_destination_that_cannot_be_written_is_named_before_anything_runs(run_cli, tmp_path, key):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    args = [*TINY, f"records_dir={tmp_path / 'records'}", f"reports_dir={tmp_path / 'reports'}",
            f"hydra.run.dir={tmp_path / 'run'}", f"{key}={blocker / 'sub'}"]
    result = run_cli(args, tmp_path, KVBENCH_CACHE_DIR=tmp_path / "cache")
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert f"is not writable: {blocker} is a file, not a directory" in line


def test_the_cli_prints_a_validation_error_as_one_line_and_debug_shows_the_traceback(run_cli, tmp_path):
    args = [*TINY, "suite.max_gen_toks=0", f"hydra.run.dir={tmp_path / 'run'}", f"records_dir={tmp_path / 'r'}"]
    result = run_cli(args, tmp_path, KVBENCH_CACHE_DIR=tmp_path / "cache")
    assert result.returncode != 0 and "suite.max_gen_toks=0" in _one_line(result.stderr)
    debug = run_cli(args, tmp_path, KVBENCH_CACHE_DIR=tmp_path / "cache", KVBENCH_DEBUG=1)
    assert "Traceback" in debug.stderr and "SuiteConfigError" in debug.stderr


def test_a_question_count_of_0_is_one_line_before_the_model_loads(run_cli, no_model_loading, tmp_path):
    result = run_cli(["model=tiny_llama", "logger=none", "suite=shared_context", "suite.options.questions=0",
                      f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, KVBENCH_CACHE_DIR=tmp_path / "cache")
    assert result.returncode == 2
    assert "suite.options.questions=0 must be an integer >= 1" in _one_line(result.stderr)


def test_a_decode_budget_the_generation_never_reaches_is_run_and_warned_in_the_record(run_in):
    """Warned, not refused: a budget covering every token is the identity run (equal to full), which is how the
    decode budgets are tested; the record says the budget was never reached."""
    record = run_in("suite=longgen", "suite.tasks=[progression]", "suite.options.max_new_tokens=6",
                    "method=decode128/streaming_llm", "method.decode_budget_tokens=4096")
    assert record.status == "complete"
    [note] = [n for n in record.kv["notes"] if "never reached" in n]
    assert "decode_budget_tokens=4096 >= prompt + max_new_tokens" in note


# -- lm_eval --model kvbench --------------------------------------------------------------------------------
@pytest.fixture
def kvbench_tasks_only(monkeypatch):
    """lm-eval's CLI indexes only kvbench's tasks: its own ~14,000 task YAMLs take a minute to index on two cores
    and none of them is asked for (the claim is about ``--model_args``, checked after the tasks resolve)."""
    import lm_eval.tasks

    real = lm_eval.tasks.TaskManager
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", lambda *a, **k: real(*a, **(k | {"include_defaults": False})))


@pytest.mark.parametrize("model_args, expected", [
    ("model=nope,method=full", "model=nope is not a kvbench model config (choose one of:"),
    ("model=tiny_llama,method=h2o,method.heavy_ratio=5", "method.heavy_ratio=5.0 must lie in [0, 1]"),
    ("model=tiny_llama,method=h2o,method.heavy_ratoi=0.1", "method.heavy_ratoi: method=h2o has no setting 'heavy_ratoi'"),
    ("model=tiny_llama,method=nope", "method=nope is not a kvbench method config"),
    ("model=tiny_llama,method=h2o,method.compress_every=0", "method.compress_every=0 must be an integer >= 1"),
    ("model=tiny_llama,method=kivi,method.decode_budget_tokens=5", "method=kivi has no token axis, so decode_budget_tokens"),
    ("model=tiny_llama,method=pyramidkv,method.decode_budget_ratio=0.5", "method=pyramidkv cannot compress while decoding"),
])
def test_lm_eval_cli_bad_model_args_are_one_line(run_cli, kvbench_tasks_only, tmp_path, model_args, expected):
    result = run_cli(["--model", "kvbench", "--model_args", model_args, "--tasks", "kvbench_recall_mc", "--limit", "1",
                   "--include_path", str(Path(__file__).resolve().parents[1] / "kvbench" / "eval" / "tasks")],
                  tmp_path, prog="lm_eval", KVBENCH_CACHE_DIR=tmp_path / "cache")
    assert result.returncode == 2
    assert expected in [line for line in result.stderr.splitlines() if line.startswith("kvbench: error:")][0]
    assert "Traceback" not in result.stderr


# -- kvbench-report -----------------------------------------------------------------------------------------
def test_report_on_an_empty_or_corrupt_directory_is_one_line(run_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli([str(tmp_path / "empty")], tmp_path, prog="kvbench-report")
    assert result.returncode == 2
    assert f"no readable kvbench record under {tmp_path / 'empty'}" in _one_line(result.stderr, "kvbench-report")
    (tmp_path / "corrupt" / "a").mkdir(parents=True)
    (tmp_path / "corrupt" / "a" / "record.json").write_text("{not json")
    result = run_cli([str(tmp_path / "corrupt")], tmp_path, prog="kvbench-report")
    assert result.returncode == 2
    assert "1 unreadable" in _one_line(result.stderr, "kvbench-report")


def test_report_names_a_corrupt_or_other_version_record_and_skips_it(run_cli, tmp_path):
    import json

    from kvbench.results import RunRecord, write_record

    good = RunRecord(run_id="1", created_at="2026-01-01", status="complete", model={"name": "m"},
                     method={"name": "full", "params": {}}, suite={"name": "s"}, metrics={"t": {"acc": 0.5}},
                     primary_metrics={"t": {"name": "acc", "higher_is_better": True}},
                     kv={"full_bytes": 8, "stored_bytes": 8, "ratio": 1.0})
    write_record(tmp_path / "runs" / "a" / "record.json", good)
    (tmp_path / "runs" / "b").mkdir()
    (tmp_path / "runs" / "b" / "record.json").write_text('{"run_id": "2", "status": "compl')
    for name, version in (("c", 1), ("d", 4)):  # older than version 2, and from a newer kvbench
        (tmp_path / "runs" / name).mkdir()
        (tmp_path / "runs" / name / "record.json").write_text(json.dumps(dict(good.to_dict(), run_id=name,
                                                                              schema_version=version)))
    result = run_cli([str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "out")], tmp_path, prog="kvbench-report")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning: skipped" in line]
    assert len(warnings) == 3
    assert any(str(tmp_path / "runs" / "b" / "record.json") in w and "not a readable JSON record" in w for w in warnings)
    for name, version in (("c", 1), ("d", 4)):
        assert any(str(tmp_path / "runs" / name / "record.json") in w
                   and f"schema version {version}; this kvbench reads version 3" in w for w in warnings)


# -- sweeps: a rejected job is a failed record, a failed row, a summary line and exit code 1 ------------
def test_a_sweep_with_a_rejected_job_records_it_lists_it_and_exits_nonzero(run_cli, tmp_path):
    result = run_cli(["-m", *TINY, "method=h2o", "method.heavy_ratio=0.1,2.0", "report_name=t",
                   f"reports_dir={tmp_path / 'reports'}", f"records_dir={tmp_path / 'records'}",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, KVBENCH_CACHE_DIR=tmp_path / "cache")
    assert result.returncode == 1, result.stderr[-2000:]
    records = {p.parent.name: read_record(p) for p in (tmp_path / "sweep").glob("*/record.json")}
    assert {k: r.status for k, r in records.items()} == {"0_h2o": "complete", "1_h2o": "failed"}
    assert "method.heavy_ratio=2.0 must lie in [0, 1]" in records["1_h2o"].error
    summary = [line for line in result.stderr.splitlines() if "jobs failed" in line]
    assert summary == ["kvbench: 1 of 2 jobs failed: 1_h2o: MethodConfigError: method.heavy_ratio=2.0 must lie in [0, 1] "
                       "(a fraction of the prompt length)"]
    table = (tmp_path / "reports" / "t.md").read_text()
    assert "method.heavy_ratio=2.0 must lie in [0, 1]" in table  # the failed row, with its error
