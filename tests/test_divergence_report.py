"""The report's divergence-from-full section, on hand-made records: one row per probed task with the KL interval,
nothing for records whose suite was not probed."""

from __future__ import annotations

from kvbench import divergence_report
from kvbench.report import collect, write_report
from kvbench.results import RunRecord, write_record


def _record(run_id, method, kl=None):
    metrics = {"passkey_384": {"string_match_all": 0.5}}
    if kl is not None:
        metrics["passkey_384"].update({"kl_vs_full": kl, "kl_vs_full_low": kl / 2, "kl_vs_full_high": kl * 2,
                                       "top1_vs_full": 1 - kl, "first_disagreement_vs_full": 4.0})
    return RunRecord(
        run_id=run_id, created_at=f"2026-01-01T00:00:{int(run_id):02d}", status="complete", model={"name": "m"},
        method={"name": method, "label": method, "label_params": {}, "params": {}, "changed_params": {}},
        suite={"name": "ruler", "tasks": ["passkey"], "limit": None}, metrics=metrics,
        primary_metrics={"passkey_384": {"name": "string_match_all", "higher_is_better": True}})


def test_probed_tasks_get_a_row_with_their_interval_and_unprobed_runs_none(tmp_path):
    for i, record in enumerate([_record("1", "full", 0.0), _record("2", "h2o", 0.25), _record("3", "kivi")]):
        write_record(tmp_path / "runs" / str(i) / "record.json", record)
    frame, _ = collect(tmp_path / "runs")
    table = divergence_report.divergence_table(frame).set_index("method")
    assert list(table.index) == ["full", "h2o"]
    assert table.loc["h2o", "kl_vs_full_low"] == 0.125 and table.loc["h2o", "top1_vs_full"] == 0.75
    text = write_report(tmp_path / "runs", "probed", tmp_path / "reports", formats=("md",))["md"].read_text()
    assert "## Divergence from full along the answers" in text
    assert "| m       | h2o      | passkey_384 | 0.25 [0.125, 0.5]" in text


def test_a_report_without_probed_records_has_no_divergence_section(tmp_path):
    write_record(tmp_path / "runs" / "0" / "record.json", _record("1", "kivi"))
    text = write_report(tmp_path / "runs", "plain", tmp_path / "reports", formats=("md",))["md"].read_text()
    assert "Divergence from full" not in text
