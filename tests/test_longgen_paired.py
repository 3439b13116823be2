"""experiments/longgen/paired.py: each method is compared with streaming_llm at its own decode budget only, the larger
budget of a method against its smaller one, and a batched run's ms/step names its rows."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from kvbench.results import RunRecord, write_record

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "longgen" / "paired.py"
PROMPTS = 6


def _script():
    spec = importlib.util.spec_from_file_location("_longgen_paired", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(root: Path, run_id: int, name: str, budget: int | None, kl: float, rows: int = 6) -> None:
    params = {} if budget is None else {"decode_budget_tokens": budget, "compress_every": 1}
    record = RunRecord(
        run_id=str(run_id), created_at=f"2026-01-01T00:00:{run_id:02d}", status="complete", model={"name": "m"},
        method={"name": name, "label": name, "label_params": {}, "params": params, "changed_params": {}},
        suite={"name": "longgen", "tasks": ["prose"]}, metrics={"prose": {"kl": kl}},
        primary_metrics={"prose": {"name": "kl", "higher_is_better": False}}, n_samples={"prose": PROMPTS},
        kv={"full_bytes": 1000, "stored_bytes": 1000, "ratio": 1.0, "peak_decode_stored_bytes": budget or 1000,
            "final_decode_stored_bytes": budget or 1000})
    path = write_record(root / f"{run_id}_{name}_{budget}" / "record.json", record)
    traces = []
    for i in range(PROMPTS):
        value = 0.0 if budget is None else kl + 0.01 * i
        traces.append({"task": "prose", "prompt": i, "kl": value, "kl_bins": {"0_256": value},
                       "agreement_bins": {"0_256": 1.0}, "first_disagreement": 10, "departed": budget is not None,
                       "length": 20, "full_length": 20, "decode_ms_per_step": 100.0, "decode_rows": rows})
    (path.parent / "longgen").mkdir()
    (path.parent / "longgen" / "traces.jsonl").write_text("".join(json.dumps(t) + "\n" for t in traces))


def test_methods_meet_streaming_llm_at_their_own_budget_and_a_larger_budget_meets_the_smaller(tmp_path):
    _write(tmp_path, 0, "full", None, 0.0)
    for run_id, (name, budget, kl) in enumerate([("streaming_llm", 128, 0.5), ("streaming_llm", 256, 0.2),
                                                 ("h2o", 128, 0.3), ("h2o", 256, 0.1)], start=1):
        _write(tmp_path, run_id, name, budget, kl)
    paired = _script()
    runs = paired.collect([tmp_path])
    methods = sorted(label for label in runs if label != "full")
    found = paired.against_baseline(runs, ["0_256"], methods)
    assert [baseline for baseline, _ in found] == ["streaming_llm (decode 128, every 1)",
                                                   "streaming_llm (decode 256, every 1)"]
    assert "| h2o (decode 128, every 1) | whole trace | -0.2 [" in found[0][1]  # 0.3 - 0.5, not 0.3 - 0.2
    assert "| h2o (decode 256, every 1) | whole trace | -0.1 [" in found[1][1]
    budgets = paired.budget_table(runs, methods)
    assert "| h2o (decode 256, every 1) vs h2o (decode 128, every 1) | -0.2 [" in budgets
    assert "| streaming_llm (decode 256, every 1) vs streaming_llm (decode 128, every 1) | -0.3 [" in budgets
    speed = paired.departure_and_length_table(runs, ["full", *methods], "full")
    assert "| 100 (6 rows) |" in speed and "| 0.128 |" in speed  # peak bytes 128 over full's 1000
