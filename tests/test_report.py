"""Roll-up tables: one row per method, primary metrics, average, KV ratios, decode speed."""

from __future__ import annotations

import pandas as pd
import pytest

from kvbench.report import comparison_table, write_report
from kvbench.results import RunRecord, write_record


def _record(run_id, method, params, acc, ppl, stored, decode, status="complete", suite=None):
    return RunRecord(
        run_id=run_id, created_at=f"2026-01-01T00:00:0{run_id}", status=status, model={"name": "m"},
        method={"name": method, "params": params}, suite=suite or {"name": "quick", "tasks": ["mc", "ppl"], "limit": 12},
        metrics={"mc": {"acc": acc}, "ppl": {"word_perplexity": ppl}},
        primary_metrics={"mc": {"name": "acc", "higher_is_better": True},
                         "ppl": {"name": "word_perplexity", "higher_is_better": False}},
        kv={"full_bytes": 1000, "stored_bytes": stored, "ratio": 1000 / stored}, timing={"decode_tok_s": decode})


@pytest.fixture
def sweep(tmp_path):
    write_record(tmp_path / "0" / "record.json", _record("1", "full", {}, 0.8, 10.0, 1000, 30.0))
    write_record(tmp_path / "1" / "record.json", _record("2", "h2o", {"heavy_ratio": 0.1, "recent_ratio": 0.1}, 0.6, 12.0, 200, 28.0))
    failed = _record("3", "minicache", {}, 0.1, 99.0, 700, 20.0, status="failed")
    failed.error = "MethodConfigError: method.gamma=1.5 must be in [0, 1]"
    write_record(tmp_path / "2" / "record.json", failed)
    return tmp_path


def test_table_has_one_row_per_complete_method_with_ratios_against_full_and_failed_rows_last(sweep):
    table = comparison_table(sweep)
    assert list(table["method"]) == ["full", "h2o", "minicache"]
    failed = table.set_index("method").loc["minicache"]
    assert failed["error"] == "MethodConfigError: method.gamma=1.5 must be in [0, 1]"
    assert pd.isna(failed["mc/acc"]) and pd.isna(failed["kv_ratio"])  # a failed run shows no number
    assert pd.isna(table.set_index("method").loc["h2o", "error"])
    h2o = table.set_index("method").loc["h2o"]
    assert h2o["params"] == "heavy_ratio=0.1, recent_ratio=0.1"
    assert h2o["mc/acc"] == 0.6 and h2o["ppl/word_perplexity"] == 12.0
    assert h2o["avg"] == pytest.approx(0.6)  # perplexity (lower is better) is not averaged in
    assert h2o["kv_ratio"] == pytest.approx(5.0) and h2o["kv_vs_full"] == pytest.approx(0.2)
    assert h2o["decode_tok_s"] == 28.0


def test_write_report_writes_markdown_csv_and_plot(sweep, tmp_path):
    paths = write_report(sweep, "demo", tmp_path / "reports")
    assert paths["md"].read_text().count("\n| ") == 4  # header + separator + 3 rows (rows start with '| ')
    csv = pd.read_csv(paths["csv"])
    assert list(csv["method"]) == ["full", "h2o", "minicache"]
    assert paths["png"].stat().st_size > 1000


def test_rows_are_labelled_by_the_parameters_changed_from_the_defaults(tmp_path):
    record = _record("1", "h2o", {"heavy_ratio": 0.0, "recent_ratio": 0.2, "score_agg": "sum"}, 0.5, 10.0, 200, 9.0)
    record.method["changed_params"] = {"heavy_ratio": 0.0, "recent_ratio": 0.2}
    write_record(tmp_path / "r" / "record.json", record)
    assert list(comparison_table(tmp_path)["params"]) == ["heavy_ratio=0.0, recent_ratio=0.2"]


def test_a_table_mixing_records_from_different_lock_files_carries_a_warning(sweep, tmp_path, capsys):
    from kvbench.report import lock_warning

    assert lock_warning(sweep) is None  # no lock digests recorded
    for i, digest in enumerate(["a" * 64, "a" * 64, "b" * 64]):
        record = _record(str(i + 5), "full" if i == 0 else "h2o", {"x": i}, 0.5, 10.0, 500, 9.0)
        record.env = {"lock_sha256": digest}
        write_record(tmp_path / "mixed" / str(i) / "record.json", record)
    message = lock_warning(tmp_path / "mixed")
    assert message.startswith("warning: this table mixes records from 2 different lock files")
    assert "aaaaaaaaaaaa" in message and "bbbbbbbbbbbb" in message
    paths = write_report(tmp_path / "mixed", "mixed", tmp_path / "reports")
    assert message in paths["md"].read_text() and message in capsys.readouterr().err


def test_kv_vs_full_pairs_each_row_with_the_full_run_of_the_same_workload(tmp_path):
    long_suite = {"name": "quick", "tasks": ["mc", "ppl"], "limit": 12}
    short_suite = {"name": "quick", "tasks": ["mc", "ppl"], "limit": 2}
    write_record(tmp_path / "a" / "record.json", _record("1", "full", {}, 0.8, 10.0, 1000, 30.0, suite=long_suite))
    write_record(tmp_path / "b" / "record.json", _record("2", "h2o", {"x": 1}, 0.6, 12.0, 200, 28.0, suite=long_suite))
    write_record(tmp_path / "c" / "record.json", _record("3", "full", {}, 0.8, 10.0, 60, 30.0, suite=short_suite))
    write_record(tmp_path / "d" / "record.json", _record("4", "h2o", {"x": 2}, 0.6, 12.0, 9, 28.0, suite=short_suite))
    other = {"name": "ruler", "tasks": ["t"], "limit": None}
    write_record(tmp_path / "e" / "record.json", _record("5", "h2o", {"x": 3}, 0.6, 12.0, 50, 28.0, suite=other))
    table = comparison_table(tmp_path).set_index("params")
    assert table.loc["x=1", "kv_vs_full"] == pytest.approx(0.2)  # 200 / 1000, not 200 / 60 (the last full seen)
    assert table.loc["x=2", "kv_vs_full"] == pytest.approx(0.15)  # 9 / 60
    assert pd.isna(table.loc["x=3", "kv_vs_full"])  # no full run of the ruler workload: blank
