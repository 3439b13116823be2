"""Result records: the typed schema and its JSON, version 2 records upgraded, stable config hashes, record files."""

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


def test_a_record_that_cannot_be_serialised_leaves_the_previous_one_intact(tmp_path):
    path = tmp_path / "record.json"
    results.write_record(path, {"run_id": "a"})

    class Unserialisable:
        def __str__(self):
            raise RuntimeError("cannot serialise")

    with pytest.raises(RuntimeError):
        results.write_record(path, {"run_id": "b", "bad": Unserialisable()})
    assert json.loads(path.read_text()) == {"run_id": "a"}
    assert os.listdir(tmp_path) == ["record.json"]  # no temp file left behind


def test_a_part_is_written_whole_with_nulls_or_as_an_empty_object_until_anything_is_known(tmp_path):
    record = _record("1")
    record.model = {"name": "m"}
    record.kv = {}
    data = json.loads(results.write_record(tmp_path / "r.json", record).read_text())
    assert data["model"] == {"name": "m", "n_params": None, "n_layers": None, "n_heads": None, "n_kv_heads": None,
                             "head_dim": None, "kv_heads_after_method": None, "dtype": None}
    assert data["kv"] == data["efficiency"] == data["env"] == {}
    assert data["suite"] == {"name": "quick", "runner": None, "tasks": [], "limit": None, "query_aware": False,
                             "question_visible": None}
    assert data["schema_version"] == 3
    back = results.read_record(tmp_path / "r.json")
    assert back == record and isinstance(back.model, results.ModelPart) and back.kv.ratio is None


def test_a_part_reads_like_the_json_object_it_is_written_as():
    record = _record("1")
    assert isinstance(record.kv, results.KvPart) and record.kv.ratio == 2.0  # a dict given is read into its part
    assert record.kv["ratio"] == record.kv.get("ratio") == 2.0 and "ratio" in record.kv
    assert dict(record.kv) == record.kv.to_dict() == record.to_dict()["kv"]
    assert record.kv.get("components") is None and not record.efficiency and record.efficiency.get("points") is None
    with pytest.raises(KeyError):
        record.env["device"]  # nothing known: the part is {} on disk
    with pytest.raises(results.RecordError, match="field kv has unknown key.s. colour"):
        record.kv = {"ratio": 2.0, "colour": "red"}


def test_only_complete_records_count_as_finished(tmp_path):
    results.write_record(tmp_path / "abc.json", _record("1", status="failed"))
    assert results.find_complete_record(tmp_path, "abc") is None
    results.write_record(tmp_path / "abc.json", _record("1"))
    assert results.find_complete_record(tmp_path, "abc") == tmp_path / "abc.json"


def test_the_readme_record_table_is_the_one_generated_from_the_schema():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- record-fields:start -->\n", 1)[1].split("\n<!-- record-fields:end -->", 1)[0]
    assert table == results.record_fields_markdown()


def test_a_record_of_another_schema_version_or_with_unknown_fields_is_refused(tmp_path):
    record = _record("1").to_dict()
    for bad, message in ((dict(record, schema_version=1), "schema version 1; this kvbench reads version 3"),
                         (dict(record, schema_version=4), "schema version 4; this kvbench reads version 3"),
                         ({k: v for k, v in record.items() if k != "schema_version"}, "schema version 1"),
                         (dict(record, colour="red"), "unknown field"),
                         (dict(record, kv={"ratio": 1.0, "colour": "red"}), r"r.json: field kv has unknown key\(s\) colour"),
                         (dict(record, kv=[1.0]), "r.json: field kv is not an object")):
        (tmp_path / "r.json").write_text(json.dumps(bad))
        with pytest.raises(results.RecordError, match=message):
            results.read_record(tmp_path / "r.json")


def test_a_version_2_record_is_read_as_version_3_and_its_file_left_alone(tmp_path):
    """Version 2 parts were free-form: a rejected run's method had no label, its suite no query_aware."""
    v2 = {"run_id": "1", "created_at": "2026-01-01", "status": "failed", "config_hash": "h", "config": {},
          "model": {"name": "m"}, "method": {"name": "h2o", "params": {"heavy_ratio": 0.2}, "changed_params": {}},
          "suite": {"name": "quick", "runner": "lm_eval", "tasks": ["t"], "limit": 2}, "metrics": {},
          "primary_metrics": {}, "stderr": {}, "n_samples": {}, "intervals": {}, "kv": {}, "timing": {"wall_s": 1.0},
          "efficiency": {}, "env": {}, "error": "ConfigError: bad", "outputs": {"dir": "d"}, "schema_version": 2}
    (tmp_path / "r.json").write_text(json.dumps(v2))
    record = results.read_record(tmp_path / "r.json")
    assert record.schema_version == 3 and record.error == "ConfigError: bad" and record.timing.wall_s == 1.0
    assert (record.method.label, record.method.label_params, record.method.simulated) == ("h2o", {}, False)
    assert record.suite.query_aware is False and record.suite.tasks == ["t"] and not record.kv
    assert json.loads((tmp_path / "r.json").read_text()) == v2
    oldest = dict(v2, method={"name": "h2o", "params": {"heavy_ratio": 0.2}})  # before changed_params existed
    (tmp_path / "r.json").write_text(json.dumps(oldest))
    method = results.read_record(tmp_path / "r.json").method
    assert (method.changed_params, method.label_params) == ({"heavy_ratio": 0.2}, {})


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
    assert store.rescued == written[0]
    message = store.rescue_message()  # the runner's one line: where it should have gone, and where it is
    assert (str(tmp_path / "run" / "record.json") in message and str(tmp_path / "records" / "h.json") in message
            and "No space left on device" in message and message.endswith(f"saved to {written[0]}"))


def test_one_copy_failing_still_writes_the_other(tmp_path, monkeypatch):
    real = results.write_record
    monkeypatch.setattr(results, "write_record",
                        lambda path, record: (_ for _ in ()).throw(OSError("gone")) if "records" in str(path)
                        else real(path, record))
    store = results.RecordStore(tmp_path / "run" / "record.json", tmp_path / "records" / "h.json")
    assert store.save(_record("1")) == [tmp_path / "run" / "record.json"]
    assert list(store.failed) == [tmp_path / "records" / "h.json"]
