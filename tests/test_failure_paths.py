"""Every failure path ends in one clear line, loses nothing already computed, and never hangs (issue 24).

One test per case the issue lists that had none: Ctrl-C in a job, a disk that fills mid-run, a corrupt or missing
lock, two sweeps on one records dir, hostile record values, and bad ``lm_eval --model kvbench`` arguments. Records of
another schema version were already handled: tests/test_bad_input.py::
test_report_names_a_corrupt_or_other_version_record_and_skips_it. All in-process, on the tiny random model.
"""

from __future__ import annotations

import errno
import json
import threading
import time
from pathlib import Path

import pytest

from kvbench import environment, models, results, runner
from kvbench.compose import compose_config
from kvbench.errors import ConfigError
from kvbench.results import RecordRescuedError, RunRecord, read_record, write_record

TINY = ["model=tiny_llama", "logger=none", "suite.limit=1", "suite.tasks=[kvbench_recall_mc,kvbench_prose_ppl]"]


@pytest.fixture
def cfg_for(tmp_path):
    def compose(*overrides):
        return compose_config([*TINY, f"records_dir={tmp_path / 'records'}", *overrides])

    return compose


def _interrupt_after_first_task(monkeypatch):
    from kvbench.suites.lm_eval import LmEval

    real = LmEval.run

    def ctrl_c_after_first(self, plan, context):
        for item in real(self, plan, context):
            yield item
            raise KeyboardInterrupt

    monkeypatch.setattr(LmEval, "run", ctrl_c_after_first)


# -- Ctrl-C during a sweep job ----------------------------------------------------------------------------------
def test_ctrl_c_leaves_an_interrupted_record_and_a_rerun_redoes_only_that_job(cfg_for, tmp_path, monkeypatch):
    done = runner.run(cfg_for("method=full"), tmp_path / "sweep" / "0_full")
    _interrupt_after_first_task(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        runner.run(cfg_for("method=h2o"), tmp_path / "sweep" / "1_h2o")
    interrupted = read_record(tmp_path / "sweep" / "1_h2o" / "record.json")
    assert interrupted.status == "interrupted" and "Ctrl-C" in interrupted.error
    assert list(interrupted.metrics) == ["kvbench_recall_mc"]  # what was computed is on disk
    assert read_record(results.stored_record_path(tmp_path / "records", interrupted.config_hash)).status == "interrupted"

    monkeypatch.undo()
    loads = []
    real_load = models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    again_full = runner.run(cfg_for("method=full"), tmp_path / "rerun" / "0_full")
    again_h2o = runner.run(cfg_for("method=h2o"), tmp_path / "rerun" / "1_h2o")
    assert again_full.run_id == done.run_id  # the finished job is skipped
    assert again_h2o.status == "complete" and again_h2o.run_id != interrupted.run_id and len(loads) == 1


# -- a disk that fills mid-run --------------------------------------------------------------------------------------
def test_a_full_disk_rescues_the_record_and_ends_in_one_line_naming_both_paths(cfg_for, tmp_path, monkeypatch):
    monkeypatch.setattr(results.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    real = results.write_record
    full = {"now": False}

    def fills_up(path, record):  # the disk fills once the run has started
        if full["now"] and "kvbench-rescued-records" not in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        full["now"] = True
        return real(path, record)

    monkeypatch.setattr(results, "write_record", fills_up)
    with pytest.raises(RecordRescuedError) as caught:
        runner.run(cfg_for(), tmp_path / "run")
    message = str(caught.value)
    rescued = next((tmp_path / "tmp" / "kvbench-rescued-records").glob("*.json"))
    assert "\n" not in message and str(tmp_path / "run" / "record.json") in message and str(rescued) in message
    assert str(tmp_path / "records") in message and "No space left on device" in message
    record = read_record(rescued)
    assert record.status == "complete" and set(record.metrics) == {"kvbench_recall_mc", "kvbench_prose_ppl"}


def test_a_run_output_the_disk_has_no_room_for_is_one_line_naming_it_and_the_record(cfg_for, tmp_path, monkeypatch):
    from kvbench.errors import DiskFullError
    from kvbench.suites import lm_eval

    def no_room(path, samples, default):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(lm_eval, "_write_samples", no_room)
    with pytest.raises(DiskFullError) as caught:
        runner.run(cfg_for(), tmp_path / "run")
    message = str(caught.value)
    assert "samples_kvbench_recall_mc.jsonl" in message and str(tmp_path / "run" / "record.json") in message
    assert read_record(tmp_path / "run" / "record.json").status == "failed"


# -- a corrupt or missing lock in a checkout ------------------------------------------------------------------------
@pytest.mark.parametrize("content, reason", [
    (None, "no requirements.lock found"),
    (b"torch==2.13.0\n<<<<<<< HEAD\nnumpy==2.4.6\n=======\n", "line 2 is not a 'name==version' pin"),
    (b"\xff\xfe\x00garbage", "cannot be read as a lock (UnicodeDecodeError)"),
    (b"# only a comment, the pins were lost\n", "pins no package"),
])
def test_a_corrupt_or_missing_lock_is_one_line_from_the_check(tmp_path, monkeypatch, capsys, content, reason):
    lock = tmp_path / "requirements.lock"
    if content is not None:
        lock.write_bytes(content)
    monkeypatch.setattr(environment, "lock_path", lambda name=environment.LOCK_NAME: lock if lock.exists() else None)
    assert environment.main(["check"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kvbench: error:") and reason in err[0]


def test_the_cuda_check_names_what_a_cpu_setup_lacks(capsys):
    assert environment.main(["check", "--cuda"]) == 1
    err = capsys.readouterr().err
    assert "triton not installed, locked" in err and "torch 2.13.0+cpu is the CPU build" in err


# -- concurrent sweeps writing one records directory ----------------------------------------------------------------
def test_a_second_sweep_waits_for_a_config_another_is_running_then_skips_it(cfg_for, tmp_path, monkeypatch):
    """Each config runs once: the second process waits on the config's lock, then reuses the first's record."""
    from kvbench.file_lock import exclusive

    first = runner.run(cfg_for(), tmp_path / "first")  # gives the config's hash and a complete record to hand over
    records = tmp_path / "records"
    stored = results.stored_record_path(records, first.config_hash)
    stored.rename(tmp_path / "held.json")  # as if the first sweep were still running it
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the second sweep ran the config again"))
    outcome = {}
    with exclusive(stored.with_suffix(".lock")):
        second = threading.Thread(target=lambda: outcome.update(record=runner.run(cfg_for(), tmp_path / "second")))
        second.start()
        time.sleep(1.0)
        assert second.is_alive() and not (tmp_path / "second" / "record.json").exists()  # waiting, not running
        (tmp_path / "held.json").rename(stored)  # the first sweep finishes: its record is written, the lock freed
    second.join(timeout=60)
    assert not second.is_alive() and outcome["record"].run_id == first.run_id
    assert read_record(tmp_path / "second" / "record.json").run_id == first.run_id


# -- hostile values in records ---------------------------------------------------------------------------------------
def _complete(run_id: str, label: str, value, **extra) -> dict:
    record = RunRecord(run_id=run_id, created_at=f"2026-01-0{run_id}", status="complete", config_hash=run_id,
                       model={"name": "m"}, method={"name": label, "label": label, "params": {}},
                       suite={"name": "s", "tasks": ["t"]}, metrics={"t": {"acc": value}},
                       primary_metrics={"t": {"name": "acc", "higher_is_better": True}},
                       kv={"full_bytes": 8, "stored_bytes": 4, "ratio": 2.0}).to_dict()
    return {**record, **extra}


def test_huge_nan_and_unknown_values_pass_through_the_report_which_says_what_it_skipped(tmp_path, capsys):
    from kvbench.report import write_report

    runs = tmp_path / "runs"
    write_record(runs / "1" / "record.json", _complete("1", "full", 0.5))
    write_record(runs / "2" / "record.json", _complete("2", "h2o", float("nan")))
    huge = "x" * 10_000_000  # a 10 MB prediction in a metric, and as an error message
    write_record(runs / "3" / "record.json", _complete("3", "tova", 0.4, metrics={"t": {"acc": 0.4, "pred": huge}}))
    write_record(runs / "4" / "record.json", dict(_complete("4", "snapkv", 0.3), status="failed", error=huge))
    write_record(runs / "5" / "record.json", _complete("5", "knorm", 0.2, colour="red"))
    paths = write_report(runs, "hostile", tmp_path / "out", formats=("md", "csv"))
    table = paths["md"].read_text(encoding="utf-8")
    assert all(label in table for label in ("full", "h2o", "tova", "snapkv"))
    assert len(table) < 100_000  # the 10 MB string is not pasted into the table
    assert "Skipped 1 unreadable record" in table and str(runs / "5" / "record.json") in table
    assert "unknown field" in table


# -- lm_eval --model kvbench with arguments kvbench does not take -----------------------------------------------------
@pytest.mark.parametrize("arguments, expected", [
    ({"pretrained": "x", "method.heavy_ratio": "0.2"}, "--model_args pretrained: not a kvbench model_arg (valid: model, "
     "method, method.<param>, model.<field>, suite.stream_chunk, suite.query_aware)"),
    ({"batch_size": "auto"}, "--batch_size auto: kvbench evaluates one sequence at a time (use 1, the default)"),
    ({"batch_size": "auto:4"}, "--batch_size auto:4: kvbench evaluates one sequence at a time"),
    ({"device": "cuda:7"}, "--device cuda:7 is not available on this machine (available: cpu"),
    ({"device": "tpu"}, "--device tpu is not a device name (e.g. cpu, cuda, cuda:1, mps)"),
])
def test_lm_eval_arguments_kvbench_does_not_take_are_one_line_before_loading(monkeypatch, capsys, arguments, expected):
    from kvbench.lm_eval_model import KvbenchCLIModel

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model loaded before the bad argument"))
    with pytest.raises(SystemExit) as exited:
        KvbenchCLIModel(model="tiny_llama", method="h2o", **arguments)
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(err) == 1 and err[0].startswith("kvbench: error: --") and expected in err[0]


def test_lm_evals_own_default_device_and_the_cpu_are_accepted_without_a_gpu():
    from kvbench.lm_eval_model import LM_EVAL_DEFAULT_DEVICE, check_lm_eval_args

    for device in (None, LM_EVAL_DEFAULT_DEVICE, "cpu"):  # lm-eval passes cuda:0 when --device is not given
        check_lm_eval_args({"method.heavy_ratio": "0.2", "suite.stream_chunk": "4"}, 1, device)
    with pytest.raises(ConfigError, match="--device cuda:1 is not available"):
        check_lm_eval_args({}, "1", "cuda:1")


def test_a_config_lock_is_removed_when_released_and_still_excludes_a_waiter(tmp_path):
    """No ``.lock`` is left per config, and a waiter that wakes on the removed file still waits for the next
    holder: at most one holder at any time."""
    from kvbench.file_lock import exclusive

    lock, inside, overlaps = tmp_path / "records" / "abc.lock", [], []

    def hold(seconds: float) -> None:
        with exclusive(lock):
            inside.append(1)
            overlaps.append(len(inside))
            time.sleep(seconds)
            inside.pop()

    threads = [threading.Thread(target=hold, args=(0.2,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert overlaps == [1, 1, 1, 1]
    assert not lock.exists()
