"""The console scripts end to end: a Hydra multirun sweep rolls up into a table; kvbench-report; lm-eval's CLI.

The console scripts' entry points run in-process (``run_cli``, tests/conftest.py) with the argv a shell passes;
what needs a process of its own runs as one: ``--help`` importing nothing heavy, and (slow tier) a kill mid-sweep
and lm-eval finding the kvbench model through the installed plugin.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_SILENT="true")
BIN = Path(sys.executable).parent


def _run(args, cwd, **env):
    return subprocess.run(args, cwd=cwd, env=ENV | {k: str(v) for k, v in env.items()}, capture_output=True,
                          text=True, timeout=600)


def test_multirun_sweep_writes_records_and_a_rollup_table(run_cli, tmp_path):
    result = run_cli(["-m", "model=tiny_llama", "method=full", "logger=none", "suite.limit=1",
                   "seed=0", "suite.tasks=[kvbench_recall_mc]", "report_name=cli_sweep",
                   f"reports_dir={tmp_path / 'reports'}", f"records_dir={tmp_path / 'records'}",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, KVBENCH_CACHE_DIR=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "sweep").glob("*/record.json"))) == 1
    table = pd.read_csv(tmp_path / "reports" / "cli_sweep.csv")
    assert list(table["method"]) == ["full"] and "kvbench_recall_mc/acc" in table
    assert "cli_sweep.md" in result.stdout


def test_bad_input_is_one_clear_line_and_exit_code_2(run_cli, tmp_path):
    result = run_cli(["model=tiny_llama", "logger=none", "suite.limit=0",
                   f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 2
    assert "kvbench: error: suite.limit=0 must be a positive number of examples per task" in result.stderr
    assert "Traceback" not in result.stderr


def test_kvbench_report_rolls_up_a_directory(run_cli, tmp_path):
    from kvbench.results import RunRecord, write_record

    write_record(tmp_path / "runs" / "a" / "record.json", RunRecord(
        run_id="1", created_at="2026-01-01", status="complete", model={"name": "m"},
        method={"name": "full", "params": {}}, suite={"name": "s"}, metrics={"t": {"acc": 0.5}},
        primary_metrics={"t": {"name": "acc", "higher_is_better": True}},
        kv={"full_bytes": 8, "stored_bytes": 8, "ratio": 1.0}, timing={"decode_tok_s": 1.0}))
    result = run_cli([str(tmp_path / "runs"), "--name", "mine", "--reports-dir", str(tmp_path / "out")], tmp_path,
                     prog="kvbench-report")
    assert result.returncode == 0, result.stderr
    assert "| full" in (tmp_path / "out" / "mine.md").read_text()


@pytest.mark.slow  # a process of its own: lm-eval finds the model through the installed plugin (.pth)
def test_lm_eval_cli_finds_the_kvbench_model(tmp_path):
    tasks = Path(__file__).resolve().parents[1] / "kvbench" / "eval" / "tasks"
    result = _run([BIN / "lm_eval", "--model", "kvbench", "--model_args", "model=tiny_llama,method=full",
                   "--tasks", "kvbench_recall_mc", "--include_path", str(tasks), "--limit", "1"],
                  cwd=tmp_path, KVBENCH_CACHE_DIR=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kvbench_recall_mc" in result.stdout and "acc" in result.stdout


@pytest.mark.slow  # two processes, one killed with SIGKILL
def test_a_sweep_killed_mid_job_is_resumed_without_redoing_finished_jobs(tmp_path):
    """SIGKILL during the second job: the first job's record is complete and reused on re-run, no record is
    half-written (atomic writes), and the killed job runs again."""
    import json
    import signal
    import time

    from kvbench.results import read_record

    args = ["-m", "model=tiny_llama", "method=full,h2o", "logger=none", "suite.limit=1",
            "suite.tasks=[kvbench_recall_mc]", f"records_dir={tmp_path / 'records'}",
            f"reports_dir={tmp_path / 'reports'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    # the h2o job hangs inside its evaluation, so the kill lands mid-job
    slow = ("import sys, time; import kvbench.suites.lm_eval as m; run = m.LmEval.run\n"
            "def hang(self, plan, context):\n"
            "    if context.protocol.method.name == 'h2o': time.sleep(300)\n"
            "    yield from run(self, plan, context)\n"
            "m.LmEval.run = hang; sys.argv = ['kvbench', *sys.argv[1:]]\n"
            "from kvbench.cli import main; main()\n")
    env = ENV | {"KVBENCH_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-c", slow, *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_record = tmp_path / "sweep" / "1_h2o" / "record.json"
    deadline = time.monotonic() + 120
    while not killed_record.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert killed_record.exists(), "the second job never started"
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for path in (tmp_path / "sweep").rglob("*.json"):
        json.loads(path.read_text())  # every record on disk is whole
    assert read_record(killed_record).status == "running"
    first = read_record(tmp_path / "sweep" / "0_full" / "record.json")
    assert first.status == "complete"

    again = _run([BIN / "kvbench", *args], cwd=tmp_path, KVBENCH_CACHE_DIR=tmp_path / "cache")
    assert again.returncode == 0, again.stderr[-2000:]
    assert read_record(tmp_path / "sweep" / "0_full" / "record.json").run_id == first.run_id  # reused, not redone
    assert read_record(killed_record).status == "complete"
    assert "kvbench: sweep job 1/2 (full) starting; 0 done in 0m" in again.stderr  # the progress line, with an ETA
    assert re.search(r"kvbench: sweep job 2/2 \(h2o\) starting; 1 done in \dm\d\ds, about \dm\d\ds left", again.stderr)
    assert not list((tmp_path / "sweep").rglob(".*.tmp")) and not list((tmp_path / "records").glob(".*.tmp"))


def test_a_single_run_is_quiet_and_ends_with_a_short_table(run_cli, tmp_path):
    result = run_cli(["model=tiny_llama", "suite.limit=3", "logger=wandb_offline",
                   f"logger.dir={tmp_path}", f"records_dir={tmp_path / 'records'}", f"hydra.run.dir={tmp_path / 'run'}"],
                  tmp_path, KVBENCH_CACHE_DIR=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    printed = [line for line in (result.stdout + result.stderr).replace("\r", "\n").splitlines()
               if line.strip() and "%|" not in line and "Left truncation" not in line]  # progress bars aside
    assert len(printed) < 15, printed
    assert result.stdout.splitlines()[0].startswith(f"kvbench: full on quick (tiny_llama), record {tmp_path / 'run'}")
    table = result.stdout
    assert "95% interval" in table and "kvbench_prose_ppl" in table and "word_perplexity" in table
    assert "KV cache: 1.00x smaller than uncompressed" in table and "tok/s on cpu" in table


def test_help_says_what_kvbench_is_with_examples_and_the_user_facing_groups(run_cli, tmp_path):
    result = run_cli(["--help"], tmp_path)
    assert result.returncode == 0
    text = result.stdout
    assert text.startswith("kvbench: benchmark KV-cache compression in LLMs")
    assert "kvbench -m method=full,h2o,minicache" in text and "method:" in text and "h2o_local" in text
    assert "schema" not in text and "powered by Hydra" not in text


def test_help_imports_neither_torch_nor_transformers_nor_lm_eval(tmp_path):
    code = ("import sys; sys.argv = ['kvbench', '--help']\n"
            "from kvbench.cli import main; main()\n"
            "print('heavy:', sorted({'torch', 'transformers', 'lm_eval', 'pandas'} & set(sys.modules)))")
    result = _run([sys.executable, "-c", code], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "heavy: []"


def test_a_single_runs_summary_says_an_engine_rows_kv_ratio_is_engine_reported():
    from kvbench.cli import summary
    from kvbench.results import RunRecord

    record = RunRecord(run_id="1", created_at="2026-01-01T00:00:00", status="complete", model={"name": "m"},
                       method={"name": "full", "label": "vllm_fp8"}, suite={"name": "quick"},
                       kv={"ratio": 4.0, "source": "engine", "notes": {"engine": "vllm 0.32.0", "kv_cache_dtype": "fp8"}})
    text = summary(record, Path("run"))
    assert "4.00x smaller than uncompressed per token, engine-reported (vllm 0.32.0, kv_cache_dtype=fp8)" in text
