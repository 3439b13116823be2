"""Result records: atomic writes, stable config hashes, loading many records."""

from __future__ import annotations

import json
import os

import pytest

from kvbench import results


def _record(run_id, method="full", status="complete", created="2026-01-01T00:00:00", **metrics):
    return results.RunRecord(
        run_id=run_id, created_at=created, status=status, model={"name": "m"}, method={"name": method, "params": {}},
        suite={"name": "quick"}, metrics={"t": metrics or {"acc": 0.5}},
        primary_metrics={"t": {"name": "acc", "higher_is_better": True}},
        kv={"full_bytes": 100, "stored_bytes": 50, "ratio": 2.0}, timing={"decode_tok_s": 10.0})


def test_config_hash_ignores_logger_and_force_but_not_the_method():
    base = {"model": {"name": "m"}, "method": {"name": "h2o", "heavy_ratio": 0.1}, "logger": {"mode": "offline"}, "force": False}
    assert results.config_hash(base) == results.config_hash(base | {"logger": {"mode": "disabled"}, "force": True})
    assert results.config_hash(base) != results.config_hash(base | {"method": {"name": "h2o", "heavy_ratio": 0.2}})


def test_a_failed_write_leaves_the_previous_record_intact(tmp_path):
    path = tmp_path / "record.json"
    results.write_record(path, {"run_id": "a"})

    class Unserialisable:
        def __str__(self):
            raise RuntimeError("cannot serialise")

    with pytest.raises(RuntimeError):
        results.write_record(path, {"run_id": "b", "bad": Unserialisable()})
    assert json.loads(path.read_text()) == {"run_id": "a"}
    assert os.listdir(tmp_path) == ["record.json"]  # no temp file left behind


def test_only_complete_records_count_as_finished(tmp_path):
    results.write_record(tmp_path / "abc.json", _record("1", status="failed"))
    assert results.find_complete_record(tmp_path, "abc") is None
    results.write_record(tmp_path / "abc.json", _record("1"))
    assert results.find_complete_record(tmp_path, "abc") == tmp_path / "abc.json"


def test_load_records_flattens_primary_metrics_and_drops_duplicate_runs(tmp_path):
    results.write_record(tmp_path / "a" / "record.json", _record("1", acc=0.25))
    results.write_record(tmp_path / "records" / "h.json", _record("1", acc=0.25))  # same run stored twice
    results.write_record(tmp_path / "b" / "record.json", _record("2", method="h2o", created="2026-01-02T00:00:00", acc=0.75))
    (tmp_path / "c.json").write_text("{not json")
    frame = results.load_records(tmp_path)
    assert sorted(frame["run_id"]) == ["1", "2"]
    assert dict(zip(frame["method"], frame["t/acc"])) == {"full": 0.25, "h2o": 0.75}


def test_the_readme_record_table_is_the_one_generated_from_the_schema():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- record-fields:start -->\n", 1)[1].split("\n<!-- record-fields:end -->", 1)[0]
    assert table == results.record_fields_markdown()


def test_a_record_of_another_schema_version_or_with_unknown_fields_is_refused(tmp_path):
    record = _record("1").to_dict()
    for bad, message in ((dict(record, schema_version=1), "schema version 1; this kvbench reads version 2"),
                         ({k: v for k, v in record.items() if k != "schema_version"}, "schema version 1"),
                         (dict(record, colour="red"), "unknown field")):
        results.atomic_write_text(tmp_path / "r.json", json.dumps(bad))
        with pytest.raises(results.RecordError, match=message):
            results.read_record(tmp_path / "r.json")


def test_records_are_written_with_the_users_umask_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = results.write_record(tmp_path / "r.json", _record("1"))
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644


def test_a_record_that_cannot_be_written_where_configured_goes_to_the_rescue_dir(tmp_path, monkeypatch, caplog):
    import errno

    monkeypatch.setattr(results.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    real = results.write_record

    def full_disk(path, record):
        if "kvbench-rescued-records" not in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, record)

    monkeypatch.setattr(results, "write_record", full_disk)
    store = results.RecordStore(tmp_path / "run" / "record.json", tmp_path / "records" / "h.json")
    written = store.save(_record("abc", acc=0.9))
    assert written == [tmp_path / "tmp" / "kvbench-rescued-records" / "abc.json"]
    assert results.read_record(written[0]).metrics == {"t": {"acc": 0.9}}
    assert "saved to" in caplog.text and "No space left on device" in caplog.text


def test_one_copy_failing_still_writes_the_other(tmp_path, monkeypatch):
    real = results.write_record
    monkeypatch.setattr(results, "write_record",
                        lambda path, record: (_ for _ in ()).throw(OSError("gone")) if "records" in str(path)
                        else real(path, record))
    store = results.RecordStore(tmp_path / "run" / "record.json", tmp_path / "records" / "h.json")
    assert store.save(_record("1")) == [tmp_path / "run" / "record.json"]
    assert list(store.failed) == [tmp_path / "records" / "h.json"]
