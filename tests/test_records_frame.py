"""Records as the report's flat table: one row per run from the typed parts, duplicates dropped."""

from __future__ import annotations

import json

from kvbench import results
from kvbench.records_frame import load_records


def _record(run_id, method="full", created="2026-01-01T00:00:00", **metrics):
    return results.RunRecord(
        run_id=run_id, created_at=created, status="complete", model={"name": "m"},
        method={"name": method, "params": {"x": 1}, "changed_params": {"x": 1}},
        suite={"name": "quick", "tasks": ["t"]}, metrics={"t": metrics or {"acc": 0.5}},
        primary_metrics={"t": {"name": "acc", "higher_is_better": True}}, intervals={"t": [0.1, 0.9]},
        n_samples={"t": 4}, kv={"full_bytes": 100, "stored_bytes": 50, "ratio": 2.0},
        timing={"decode_tok_s": 10.0}, env={"device": "cpu (2 cores)"})


def test_load_records_flattens_primary_metrics_and_drops_duplicate_runs(tmp_path):
    results.write_record(tmp_path / "a" / "record.json", _record("1", acc=0.25))
    results.write_record(tmp_path / "records" / "h.json", _record("1", acc=0.25))  # same run stored twice
    results.write_record(tmp_path / "b" / "record.json", _record("2", method="h2o", created="2026-01-02T00:00:00", acc=0.75))
    (tmp_path / "c.json").write_text("{not json")
    frame = load_records(tmp_path)
    assert sorted(frame["run_id"]) == ["1", "2"]
    assert dict(zip(frame["method"], frame["t/acc"])) == {"full": 0.25, "h2o": 0.75}
    row = frame.set_index("method").loc["h2o"]
    assert (row["t/acc:low"], row["t/acc:high"], row["t/acc:n"]) == (0.1, 0.9, 4)
    assert (row["label"], row["kv_ratio"], row["decode_tok_s"], row["device"]) == ("h2o", 2.0, 10.0, "cpu (2 cores)")
    assert json.loads(row["method_params"]) == {"x": 1} and row["efficiency"] is None
    assert frame.attrs["higher_is_better"] == {"t/acc": True}


def test_a_version_2_record_and_a_version_3_record_give_the_same_row(tmp_path):
    record = _record("1")
    record.method = {"name": "h2o", "label": "h2o", "label_params": {"x": 1}, "params": {"x": 1},
                     "changed_params": {"x": 1}, "simulated": True}
    v2 = record.to_dict() | {"schema_version": 2}
    v2["method"] = {k: v for k, v in v2["method"].items()}
    v2["suite"] = {"name": "quick", "tasks": ["t"]}  # v2 suites could lack keys
    results.write_record(tmp_path / "new" / "record.json", record)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "record.json").write_text(json.dumps(v2 | {"run_id": "2"}))
    frame = load_records(tmp_path).drop(columns=["run_id", "path"])
    assert frame.iloc[0].to_dict() == frame.iloc[1].to_dict()
    assert frame["label"].tolist() == ["h2o (simulated)"] * 2
