"""The efficiency part of a report, on hand-made records: ratios against full's same point, max batch against the
KV ratio, the papers' claims beside the measured ratios, and the plot."""

from __future__ import annotations

import json

import pytest

from kvbench import efficiency_report
from kvbench.report import collect, write_report
from kvbench.results import RunRecord, write_record


def _point(context, batch, ms, ttft, ratio, kv=1000):
    return {"batch_size": batch, "context_length": context, "new_tokens": 8, "repeats": 3,
            "ttft_s": ttft, "ttft_s_min": ttft * 0.9, "ttft_s_max": ttft * 1.1,
            "decode_ms_per_step": ms, "decode_ms_per_step_min": ms * 0.9, "decode_ms_per_step_max": ms * 1.2,
            "throughput_tok_s": batch * 1000 / ms, "throughput_tok_s_min": 1.0, "throughput_tok_s_max": 2.0,
            "kv_bytes": kv * batch, "kv_bytes_peak": kv * batch, "kv_full_bytes": int(kv * batch * ratio),
            "kv_ratio": ratio, "peak_memory_bytes": 2**30, "memory_source": "rss_high_water", "memory_reset": True}


def _record(run_id, label, ms_scale, ratio, max_batch, name=None):
    points = [_point(c, b, ms_scale * (10 + b * c / 100), 0.01 * b * c / 100, ratio) for c in (256, 1024)
              for b in (1, 4)]
    return RunRecord(
        run_id=run_id, created_at=f"2026-01-01T00:00:{int(run_id):02d}", status="complete", model={"name": "m"},
        method={"name": name or label, "label": label, "label_params": {}, "params": {}, "changed_params": {}},
        suite={"name": "efficiency", "tasks": ["efficiency"], "limit": None},
        metrics={f"ctx{p['context_length']}_b{p['batch_size']}": {"throughput_tok_s": p["throughput_tok_s"]}
                 for p in points},
        primary_metrics={f"ctx{p['context_length']}_b{p['batch_size']}": {"name": "throughput_tok_s",
                                                                          "higher_is_better": True} for p in points},
        efficiency={"points": points, "max_batch": {"budget_gb": 2.0, "context_length": 1024, "new_tokens": 8,
                                                    "batch": max_batch, "source": "derived"}},
        env={"device": "cpu (2 cores)", "load_avg_1m": 1.0})


@pytest.fixture
def sweep(tmp_path):
    for i, record in enumerate([_record("1", "full", 1.0, 1.0, 100), _record("2", "h2o", 0.5, 5.0, 480),
                                _record("3", "minicache_kivi", 0.8, 5.0, 300, name="combined")]):
        write_record(tmp_path / "runs" / str(i) / "record.json", record)
    return tmp_path


def test_points_are_compared_with_fulls_same_point(sweep):
    frame, _ = collect(sweep / "runs")
    table = efficiency_report.points_table(frame).set_index(["label", "context", "batch"])
    assert table.loc[("h2o", 1024, 4), "decode_vs_full"] == pytest.approx(0.5)
    assert table.loc[("h2o", 1024, 4), "throughput_vs_full"] == pytest.approx(2.0)
    assert table.loc[("full", 256, 1), "ttft_vs_full"] == pytest.approx(1.0)


def test_max_batch_is_set_beside_the_kv_ratio_it_should_track(sweep):
    frame, _ = collect(sweep / "runs")
    table = efficiency_report.max_batch_table(frame).set_index("label")
    assert table.loc["h2o", "batch_vs_full"] == pytest.approx(4.8)
    assert table.loc["h2o", "vs_kv_ratio"] == pytest.approx(-0.04)  # 4.8 vs 5.0
    assert table.loc["minicache_kivi", "vs_kv_ratio"] == pytest.approx(-0.4)


def test_paper_claims_sit_beside_the_ratio_measured_at_the_largest_batch_of_the_longest_context(sweep):
    frame, _ = collect(sweep / "runs")
    claims = efficiency_report.claims_table(efficiency_report.points_table(frame)).set_index("method")
    assert claims.loc["h2o", "paper_throughput_ratio"] == pytest.approx(918.9 / 494.1)
    assert claims.loc["h2o", "measured_at"] == "m, context 1024, batch 4"
    assert claims.loc["h2o", "throughput_ratio"] == pytest.approx(2.0)
    assert claims.loc["minicache_kivi", "throughput_ratio"] == pytest.approx(1 / 0.8)
    assert claims.isna().loc["svd_gqa", "throughput_ratio"]  # not run: no number made up


def test_the_report_writes_the_efficiency_section_csv_and_plot(sweep):
    paths = write_report(sweep / "runs", "eff", sweep / "reports")
    text = paths["md"].read_text(encoding="utf-8")
    assert "## Efficiency" in text and "### Max batch within the memory budget" in text
    assert "### The papers' claims beside the measured ratios" in text and "not run" in text
    assert "| h2o " in text and "-4.0%" in text
    assert paths["efficiency_png"].stat().st_size > 10_000
    rows = paths["efficiency_csv"].read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + 3 * 4  # header + 3 methods × 4 points


def test_the_points_table_shows_the_floor_and_the_multiple_and_blanks_for_older_records(tmp_path):
    floored = _record("1", "full", 1.0, 1.0, 100)
    for p in floored.efficiency["points"]:
        p.update(floor_ms_per_step=p["decode_ms_per_step"] / 4, floor_bound="memory", floor_multiple=4.0)
    write_record(tmp_path / "runs" / "0" / "record.json", floored)
    write_record(tmp_path / "runs" / "1" / "record.json", _record("2", "h2o", 0.5, 5.0, 480))  # before the roofline
    frame, _ = collect(tmp_path / "runs")
    points = efficiency_report.points_table(frame)
    full, h2o = points[points["label"] == "full"], points[points["label"] == "h2o"]
    assert list(full["floor_multiple"]) == [4.0] * 4 and set(full["floor_bound"]) == {"memory"}
    assert h2o["floor_ms_per_step"].isna().all()
    text = efficiency_report.markdown(frame)
    assert "floor ms/step" in text and "×floor" in text
    row = next(line for line in text.splitlines() if line.startswith("| m ") and " full " in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[8:11] == ["3.14", "4", "memory"]  # floor = 12.6 / 4 ms, ×floor, bound


def test_a_report_without_efficiency_records_has_no_efficiency_section(tmp_path):
    record = _record("1", "full", 1.0, 1.0, 100)
    record.efficiency = {}
    write_record(tmp_path / "runs" / "record.json", record)
    paths = write_report(tmp_path / "runs", "plain", tmp_path / "reports")
    assert "## Efficiency" not in paths["md"].read_text(encoding="utf-8") and "efficiency_png" not in paths
    assert json.loads(json.dumps(efficiency_report.CLAIMS))  # the claims are plain data


def _engine_record(run_id, label, ms_scale):
    record = _record(run_id, label, ms_scale, 1.0, 200, name="full")
    record.efficiency.workload = {"engine": {"name": "vllm", "kv_cache_dtype": "fp8" if "fp8" in label else "auto"}}
    return record


def test_engine_rows_sit_beside_the_methods_with_a_plain_verdict_per_point(sweep):
    # h2o decodes at half full's ms/step, the engine at 0.4 and 0.7 of it: at every point the engine wins
    write_record(sweep / "runs" / "e1" / "record.json", _engine_record("4", "vllm", 0.7))
    write_record(sweep / "runs" / "e2" / "record.json", _engine_record("5", "vllm_fp8", 0.4))
    frame, _ = collect(sweep / "runs")
    table = efficiency_report.engine_table(efficiency_report.points_table(frame))
    at = table[(table["context"] == 1024) & (table["batch"] == 4)].set_index("method")
    assert set(at.index) == {"full", "h2o", "minicache_kivi"}  # kvbench's rows only; the engines are the baseline
    assert at.loc["h2o", "engine"] == "vllm_fp8"  # the faster engine row
    assert at.loc["h2o", "vs_engine"] == pytest.approx(0.4 / 0.5)
    text = efficiency_report.markdown(frame)
    assert "m at B=4, N=1024: " in text and "no kvbench method beats the engine baseline here" in text


def test_a_method_faster_than_the_engine_is_named_as_beating_it(sweep):
    write_record(sweep / "runs" / "e1" / "record.json", _engine_record("4", "vllm", 0.6))
    frame, _ = collect(sweep / "runs")
    text = efficiency_report.markdown(frame)
    assert "h2o beats the engine baseline here" in text


def test_no_engine_rows_no_engine_section(sweep):
    frame, _ = collect(sweep / "runs")
    assert "Beside a serving engine" not in efficiency_report.markdown(frame)


def test_an_engine_row_that_failed_is_named_beside_the_engine_table_not_dropped(sweep):
    write_record(sweep / "runs" / "e1" / "record.json", _engine_record("4", "vllm", 0.6))
    failed = _record("5", "vllm_fp8", 1.0, 1.0, 200, name="full")
    failed.config = {"engine": {"backend": "vllm", "name": "vllm_fp8"}}
    failed.efficiency, failed.status = {}, "failed"
    failed.error = "EngineRunError: FP8 KV cache on CPU requires x86 with AVX-512 or AMX."
    write_record(sweep / "runs" / "e2" / "record.json", failed)
    frame, _ = collect(sweep / "runs")
    text = efficiency_report.markdown(frame)
    assert "Engine row that did not run, at any point: vllm_fp8: EngineRunError: FP8 KV cache on CPU" in text


def test_the_rollup_says_an_engine_rows_kv_ratio_is_engine_reported(sweep, tmp_path):
    before = write_report(sweep / "runs", "own", tmp_path / "reports", formats=("md",))["md"].read_text()
    record = _engine_record("4", "vllm", 0.6)
    record.config = {"engine": {"backend": "vllm", "name": "vllm"}}
    write_record(sweep / "runs" / "e1" / "record.json", record)
    after = write_report(sweep / "runs", "eng", tmp_path / "reports", formats=("md",))["md"].read_text()
    assert "engine-reported" not in before and "engine rows (vllm): engine-reported" in after
