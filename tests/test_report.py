"""Roll-up tables on hand-made records: intervals and n, significance against the paired full run, the
mean rank over every metric (perplexity included), labels of variants and of combined, plots, LaTeX."""

from __future__ import annotations

import pandas as pd
import pytest

from kvbench.report import collect, comparison_table, display_table, lock_warning, write_report
from kvbench.results import RunRecord, write_record

QUICK = {"name": "quick", "tasks": ["mc", "ppl"], "limit": 12}


def _record(run_id, method, acc, ppl, stored=500, status="complete", label=None, label_params=None,
            acc_ci=(None, None), ppl_ci=(None, None), suite=None, n=12, params=None):
    return RunRecord(
        run_id=run_id, created_at=f"2026-01-01T00:00:{int(run_id):02d}", status=status, model={"name": "m"},
        method={"name": method, "label": label or method, "label_params": label_params or {},
                "params": params or {}, "changed_params": label_params or {}},
        suite=suite or QUICK, metrics={"mc": {"acc": acc}, "ppl": {"word_perplexity": ppl}},
        primary_metrics={"mc": {"name": "acc", "higher_is_better": True},
                         "ppl": {"name": "word_perplexity", "higher_is_better": False}},
        n_samples={"mc": n, "ppl": n}, intervals={k: list(v) for k, v in (("mc", acc_ci), ("ppl", ppl_ci)) if v[0] is not None},
        kv={"full_bytes": 1000, "stored_bytes": stored, "ratio": 1000 / stored}, timing={"decode_tok_s": 20.0},
        env={"device": "cpu (2 cores)", "load_avg_1m": 1.5})


@pytest.fixture
def sweep(tmp_path):
    records = [
        _record("1", "full", 0.80, 10.0, 1000, acc_ci=(0.70, 0.90), ppl_ci=(9.0, 11.0)),
        _record("2", "h2o", 0.50, 30.0, 200, acc_ci=(0.35, 0.65), ppl_ci=(25.0, 36.0)),  # worse on both
        _record("3", "h2o", 0.78, 10.5, 200, label="h2o_local", label_params={"recent_ratio": 0.3},
                acc_ci=(0.66, 0.88), ppl_ci=(9.5, 11.6)),  # overlaps full on both: not significant
        _record("4", "combined", 0.60, 12.0, 50, label_params={"layers": None, "tokens_params": {"heavy_ratio": 0.2}},
                acc_ci=(0.55, 0.65), ppl_ci=(11.2, 12.9)),
        _record("5", "minicache", 0.1, 99.0, 700, status="failed"),
    ]
    records[4].error = "MethodConfigError: method.gamma=1.5 must be in [0, 1]"
    for i, record in enumerate(records):
        write_record(tmp_path / str(i) / "record.json", record)
    return tmp_path


def test_cells_carry_value_interval_and_n_and_significance_against_full(sweep):
    table = comparison_table(sweep).set_index("method")
    h2o = table.loc["h2o"]
    assert (h2o["mc/acc"], h2o["mc/acc:low"], h2o["mc/acc:high"], h2o["mc/acc:n"]) == (0.5, 0.35, 0.65, 12)
    assert h2o["mc/acc:vs_full"] == "worse" and h2o["ppl/word_perplexity:vs_full"] == "worse"
    assert table.loc["h2o_local", "mc/acc:vs_full"] == "same"  # intervals overlap: not marked
    assert table.loc["combined", "ppl/word_perplexity:vs_full"] == "worse"  # 11.2 > full's 11.0 (lower is better)
    assert pd.isna(table.loc["full", "mc/acc:vs_full"])
    shown = display_table(comparison_table(sweep)).set_index("method")
    assert list(shown.columns[2:4]) == ["mc/acc (↑, n=12)", "ppl/word_perplexity (↓, n=12)"]  # the suite's order
    assert shown.loc["h2o", "mc/acc (↑, n=12)"] == "0.5 [0.35, 0.65] ▼"
    assert shown.loc["h2o_local", "mc/acc (↑, n=12)"] == "0.78 [0.66, 0.88]"


def test_mean_rank_includes_the_perplexity_column_in_its_own_direction(sweep):
    table = comparison_table(sweep).set_index("method")
    # acc ranks (higher first): full 1, h2o_local 2, combined 3, h2o 4; ppl ranks (lower first): full 1,
    # h2o_local 2, combined 3, h2o 4 -> perplexity counts, and lower perplexity ranks better
    assert table.loc["full", "mean_rank"] == 1.0 and table.loc["h2o", "mean_rank"] == 4.0
    assert pd.isna(table.loc["minicache", "mean_rank"])


def test_variants_and_combined_are_labelled_by_their_own_name_and_short_params(sweep):
    table = comparison_table(sweep)
    labels = dict(zip(table["method"], table["params"]))
    assert labels["h2o_local"] == "recent_ratio=0.3"
    assert labels["combined"] == "layers=null tokens.heavy_ratio=0.2"  # never a Python dict
    assert labels["full"] == "" and "{" not in "".join(labels.values())


def test_failed_runs_are_listed_last_with_their_error_and_no_numbers(sweep):
    table = comparison_table(sweep)
    assert list(table["method"]) == ["full", "combined", "h2o", "h2o_local", "minicache"]
    failed = table.iloc[-1]
    assert failed["error"] == "MethodConfigError: method.gamma=1.5 must be in [0, 1]"
    assert pd.isna(failed["mc/acc"]) and pd.isna(failed["kv_ratio"]) and pd.isna(failed["mean_rank"])


def test_kv_vs_full_pairing_uses_the_full_run_of_the_same_workload(tmp_path):
    short = {"name": "quick", "tasks": ["mc", "ppl"], "limit": 2}
    write_record(tmp_path / "a" / "record.json", _record("1", "full", 0.8, 10, 1000, acc_ci=(0.7, 0.9), ppl_ci=(9, 11)))
    write_record(tmp_path / "b" / "record.json", _record("2", "full", 0.2, 10, 60, acc_ci=(0.1, 0.3), ppl_ci=(9, 11),
                                                          suite=short))
    write_record(tmp_path / "c" / "record.json", _record("3", "h2o", 0.6, 10, 9, acc_ci=(0.5, 0.7), ppl_ci=(9, 11),
                                                          suite=short))
    table = comparison_table(tmp_path).set_index(["method", "params"])
    # compared with the limit-2 full run (0.1-0.3), not the limit-12 one (0.7-0.9): better, not worse
    assert table.loc[("h2o", ""), "mc/acc:vs_full"] == "better"


def test_write_report_writes_markdown_csv_latex_and_a_titled_pareto_plot(sweep, tmp_path):
    paths = write_report(sweep, "demo", tmp_path / "reports", formats=("md", "csv", "png", "tex"))
    md = paths["md"].read_text()
    assert "model m; suite quick; limit 12; device cpu (2 cores)" in md and "| h2o_local " in md
    csv = pd.read_csv(paths["csv"])
    assert list(csv["method"]) == ["full", "combined", "h2o", "h2o_local", "minicache"]
    tex = paths["tex"].read_text()
    assert r"\begin{tabular}" in tex and r"$\blacktriangledown$" in tex and "h2o\\_local" in tex
    assert paths["png"].stat().st_size > 10_000


def test_a_table_mixing_records_from_different_lock_files_carries_a_warning(tmp_path, capsys):
    for i, digest in enumerate(["a" * 64, "a" * 64, "b" * 64]):
        record = _record(str(i + 1), "full" if i == 0 else "h2o", 0.5, 10.0, params={"x": i},
                         label_params={"x": i})
        record.env = {"lock_sha256": digest}
        write_record(tmp_path / "mixed" / str(i) / "record.json", record)
    frame, _ = collect(tmp_path / "mixed")
    message = lock_warning(frame)
    assert message.startswith("warning: this table mixes records from 2 different lock files")
    paths = write_report(tmp_path / "mixed", "mixed", tmp_path / "reports")
    assert message in paths["md"].read_text() and message in capsys.readouterr().err
