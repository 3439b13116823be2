"""experiments/shared_context/reuse_gap.py: the reuse gap per method is score_own − score paired on the same
questions, and the SnapKV sentence follows the test, never the means alone."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from kvbench.results import RunRecord, write_record

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "shared_context" / "reuse_gap.py"
spec = importlib.util.spec_from_file_location("reuse_gap", SCRIPT)
reuse_gap = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reuse_gap)


def _run(root: Path, name: str, label: str, reused: list[float], own: list[float], per_context: int = 4) -> None:
    rows = [{"task": "multi_request", "sample": i // per_context, "question": i % per_context, "score": s,
             "score_own": o} for i, (s, o) in enumerate(zip(reused, own))]
    score, score_own = sum(reused) / len(reused), sum(own) / len(own)
    record = RunRecord(run_id=name, created_at="2026-01-01T00:00:00", status="complete", model={"name": "m"},
                       method={"name": label, "label": label}, suite={"name": "shared_context",
                                                                      "tasks": ["multi_request"]},
                       metrics={"multi_request": {"score": score, "score_own": score_own,
                                                  "reuse_cost": score_own - score}})
    write_record(root / name / "record.json", record)
    (root / name / "shared_context").mkdir()
    (root / name / "shared_context" / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_gap_on_every_question_is_significant_and_a_small_one_is_not(tmp_path):
    _run(tmp_path, "a", "snapkv", [0.0] * 24, [1.0] * 20 + [0.0] * 4)
    _run(tmp_path, "b", "h2o", [1.0] * 22 + [0.0] * 2, [1.0] * 24)
    text, found = reuse_gap.table(tmp_path)
    snap, _ = found[("snapkv", "multi_request")]
    assert snap.difference == 20 / 24 and snap.p_value < 0.05 and snap.n == 24
    h2o, _ = found[("h2o", "multi_request")]
    assert h2o.difference == 2 / 24 and h2o.p_value > 0.05
    assert "| snapkv |  | multi_request | 24 (6) | 0.000 | 0.833 | +0.833" in text
    [sentence] = reuse_gap.snapkv_sentences(found)
    assert sentence.startswith("**snapkv query-agnostic (multi-request) scores below")


def test_no_significant_gap_says_what_the_sample_could_detect(tmp_path):
    _run(tmp_path, "a", "snapkv", [1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0])
    _, found = reuse_gap.table(tmp_path)
    [sentence] = reuse_gap.snapkv_sentences(found)
    assert "no significant reuse gap at this n" in sentence and "detectable |gap| ≥" in sentence


def test_each_snapkv_budget_gets_its_own_sentence(tmp_path):
    _run(tmp_path, "a", "ratio90/snapkv", [0.0] * 24, [1.0] * 24)
    _run(tmp_path, "b", "ratio80/snapkv", [1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0])
    _, found = reuse_gap.table(tmp_path)
    first, second = reuse_gap.snapkv_sentences(found)
    assert first.startswith("ratio80/snapkv (multi-request): no significant reuse gap")
    assert second.startswith("**ratio90/snapkv query-agnostic (multi-request) scores below")
