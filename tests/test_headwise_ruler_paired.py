"""experiments/headwise_ruler/paired.py: a method's two protocols pair by (task, sample id) into one test, and each
method is compared with snapkv under its own protocol only."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from kvbench.results import RunRecord, write_record
from kvbench.sample_scores import write_sidecar

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "headwise_ruler" / "paired.py"
TASKS = ("niah_multikey_512", "passkey_512")


def _script():
    spec = importlib.util.spec_from_file_location("_headwise_ruler_paired", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(root: Path, run_id: int, label: str, aware: bool, hits: set[tuple[str, int]], stored: int) -> None:
    name = label.rpartition("/")[2]
    record = RunRecord(
        run_id=str(run_id), created_at=f"2026-01-01T00:00:{run_id:02d}", status="complete", model={"name": "m"},
        method={"name": name, "label": label, "label_params": {}, "params": {}, "changed_params": {}},
        suite={"name": "ruler_query_aware" if aware else "ruler", "query_aware": aware, "tasks": list(TASKS)},
        metrics={t: {"string_match_all": 0.0} for t in TASKS},
        primary_metrics={t: {"name": "string_match_all", "higher_is_better": True} for t in TASKS},
        n_samples={t: 3 for t in TASKS}, kv={"full_bytes": 1000, "stored_bytes": stored, "ratio": 1000 / stored})
    path = write_record(root / f"{run_id}_{name}" / "record.json", record)
    write_sidecar(path, [{"task": t, "id": str(i), "score": float((t, i) in hits)} for t in TASKS for i in range(3)])


def test_the_question_gap_pairs_each_methods_protocols_and_snapkv_is_compared_per_protocol(tmp_path):
    everything = {(t, i) for t in TASKS for i in range(3)}
    _write(tmp_path, 1, "ruler512_25/snapkv", False, set(), 250)
    _write(tmp_path, 2, "ruler512_25/snapkv", True, everything - {("passkey_512", 2)}, 251)
    _write(tmp_path, 3, "ruler512_25/kvzip", False, {("passkey_512", 0)}, 250)
    _write(tmp_path, 4, "ruler512_25/kvzip", True, {("passkey_512", 0)}, 250)
    paired = _script()
    runs = paired.collect(tmp_path)
    assert set(runs) == {(m, "25%", aware) for m in ("snapkv", "kvzip") for aware in (False, True)}
    gaps = paired.gap_table(runs)
    assert "| 25% | snapkv | 0.0 | 83.3 | +83.3 [" in gaps and "| 0.0625 | 6 | 0.250 / 0.251 |" in gaps  # 5 of 6 gained
    assert "| 25% | kvzip | 16.7 | 16.7 | +0.0 [+0.0, +0.0] | 1 | 6 |" in gaps
    against = paired.snapkv_table(runs).splitlines()
    assert any(line.startswith("| query-agnostic | 25% | kvzip | 16.7 | +16.7 [") for line in against)
    assert any(line.startswith("| query-aware | 25% | kvzip | 16.7 | -66.7 [") for line in against)
