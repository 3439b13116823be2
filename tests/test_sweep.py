"""The sweep's progress and end (RollupCallback): the job count from the overrides, state kept on the callback,
jobs counted where they run in this process, failures read from the records, exit code 1."""

from __future__ import annotations

import pytest


def _sweep_config(tmp_path, dry_run=False, **task):
    from omegaconf import OmegaConf

    return OmegaConf.create({
        "dry_run": dry_run, "report_name": "t", "reports_dir": str(tmp_path / "reports"), "paper": None,
        "logger": {"mode": "disabled"}, "method": {"name": "full"},
        "hydra": {"sweep": {"dir": str(tmp_path / "sweep")}, "sweeper": {"params": {"method": "full,h2o,snapkv"}},
                  "overrides": {"task": [f"{k}={v}" for k, v in task.items()]},
                  "runtime": {"choices": {"method": "full"}}, "job": {"num": 0}}})


def test_the_sweep_size_is_the_product_of_every_swept_key_counted_once(tmp_path):
    from kvbench.sweep import sweep_size

    assert sweep_size(_sweep_config(tmp_path)) == 3
    assert sweep_size(_sweep_config(tmp_path, **{"suite.limit": "1,2", "seed": "0"})) == 6
    assert sweep_size(_sweep_config(tmp_path, method="full,h2o", **{"suite.limit": "range(1,4)"})) == 6  # last wins
    assert sweep_size(_sweep_config(tmp_path, **{"x": "interval(0,1)"})) is None  # not the basic sweeper's


def test_the_callback_keeps_the_sweeps_state_and_counts_jobs_run_in_its_own_process(tmp_path, capsys, monkeypatch):
    from hydra.core.utils import JobReturn, JobStatus

    from kvbench.sweep import JobFailure, RollupCallback

    config = _sweep_config(tmp_path, dry_run=True)
    callback = RollupCallback()
    callback.on_multirun_start(config)
    ended = JobReturn(status=JobStatus.COMPLETED, _return_value=JobFailure("job 1", "method.x: no such setting"))
    callback.on_job_end(config, ended)
    monkeypatch.setattr("os.getpid", lambda: -1)  # a joblib worker: its copy's counts never reach this process
    callback.on_job_end(config, ended)
    monkeypatch.undo()
    assert callback.done == 1 and callback.returned_failures == [JobFailure("job 1", "method.x: no such setting")]
    with pytest.raises(SystemExit) as exit_:
        callback.on_multirun_end(config)
    assert exit_.value.code == 1
    assert "kvbench: dry run: 3 jobs validated, nothing loaded or run; 1 failed" in capsys.readouterr().err


def test_failed_jobs_are_read_from_their_records_at_the_sweeps_end(tmp_path, capsys):
    from kvbench.sweep import RollupCallback
    from kvbench.results import RunRecord, write_record

    for job, (method, status) in enumerate([("full", "complete"), ("h2o", "failed")]):
        write_record(tmp_path / "sweep" / f"{job}_{method}" / "record.json", RunRecord(
            run_id=str(job), created_at=f"2026-01-01T00:00:0{job}", status=status, model={"name": "m"},
            method={"name": method}, suite={"name": "s"}, metrics={"t": {"acc": 0.5}},
            primary_metrics={"t": {"name": "acc", "higher_is_better": True}},
            error="RuntimeError: disk on fire" if status == "failed" else None))
    callback = RollupCallback()  # jobs ran elsewhere (joblib, SLURM): nothing was counted here
    with pytest.raises(SystemExit) as exit_:
        callback.on_multirun_end(_sweep_config(tmp_path))
    assert exit_.value.code == 1
    out, err = capsys.readouterr()
    assert "kvbench: 1 of 2 jobs failed: 1_h2o: RuntimeError: disk on fire" in err
    assert "kvbench: sweep table written to" in out and (tmp_path / "reports" / "t.md").exists()


def test_html_true_writes_the_sweeps_rollup_as_a_site_beside_its_table(tmp_path, capsys):
    from kvbench.results import RunRecord, write_record
    from kvbench.sweep import RollupCallback

    for job, method in enumerate(["full", "h2o"]):
        write_record(tmp_path / "sweep" / f"{job}_{method}" / "record.json", RunRecord(
            run_id=f"{job:012x}", created_at=f"2026-01-01T00:00:0{job}", status="complete", model={"name": "m"},
            method={"name": method}, suite={"name": "s"}, metrics={"t": {"acc": 0.5}},
            primary_metrics={"t": {"name": "acc", "higher_is_better": True}}))
    config = _sweep_config(tmp_path)
    config.html = True
    RollupCallback().on_multirun_end(config)
    site = tmp_path / "reports" / "t_site"
    assert (site / "index.html").is_file() and len(list((site / "runs").glob("*.html"))) == 2
    assert f"kvbench: sweep site written to {site / 'index.html'}" in capsys.readouterr().out


def test_a_job_whose_record_went_to_the_rescue_dir_counts_as_failed_at_the_sweeps_end(tmp_path, capsys):
    from hydra.core.utils import JobReturn, JobStatus

    from kvbench.results import RunRecord, write_record
    from kvbench.sweep import JobFailure, RollupCallback

    config = _sweep_config(tmp_path)
    write_record(tmp_path / "sweep" / "0_full" / "record.json", RunRecord(
        run_id="0", created_at="2026-01-01T00:00:00", status="complete", model={"name": "m"}, method={"name": "full"},
        suite={"name": "s"}, metrics={"t": {"acc": 0.5}}, primary_metrics={"t": {"name": "acc", "higher_is_better": True}}))
    callback = RollupCallback()
    callback.on_multirun_start(config)
    rescued = JobFailure("job 1", "could not write the record to a, b (OSError: No space left); it was saved to r")
    callback.on_job_end(config, JobReturn(status=JobStatus.COMPLETED, _return_value=rescued))
    with pytest.raises(SystemExit) as exit_:
        callback.on_multirun_end(config)
    assert exit_.value.code == 1
    assert "kvbench: 1 of 2 jobs failed: job 1: could not write the record to a, b" in capsys.readouterr().err
