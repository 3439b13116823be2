"""Records for the site's tests: a small sweep with intervals, an efficiency run, per-sample files (one holding
markup), a corrupt and a truncated record file, and a still-running record; and any number of records for scale."""

from __future__ import annotations

import json

import pytest

from kvbench.results import RunRecord, write_record

COMMIT = "0123456789abcdef0123456789abcdef01234567"
INJECTION = "<script>window.__kvbench_injected = true;</script><img src=x onerror=\"window.__kvbench_injected=1\">"
METHODS = [("full", {}, 1000), ("h2o", {"heavy_ratio": 0.1}, 200), ("h2o", {"heavy_ratio": 0.2}, 350),
           ("snapkv", {"window": 16}, 250), ("kivi", {"bits": 2}, 160)]


def make_record(index: int, method: str, params: dict, stored: int, model: str = "tiny", status: str = "complete",
                suite: str = "quick", query_aware: bool = False) -> RunRecord:
    """A complete record with two tasks (accuracy up, perplexity down), 95% intervals and n, bytes and timings."""
    acc = 0.8 - 0.3 * (1000 - stored) / 1000 + 0.001 * (index % 7)
    ppl = 10 + 20 * (1000 - stored) / 1000
    return RunRecord(
        run_id=f"{index:012x}", created_at=f"2026-01-01T00:{index // 60 % 60:02d}:{index % 60:02d}", status=status,
        config={"method": {"name": method, **params}, "model": {"name": model}, "seed": 0},
        model={"name": model, "n_layers": 4}, suite={"name": suite, "tasks": ["mc", "ppl"], "limit": 12,
                                                      "query_aware": query_aware},
        method={"name": method, "label": method, "label_params": params, "params": params, "changed_params": params},
        metrics={"mc": {"acc": acc}, "ppl": {"word_perplexity": ppl}},
        primary_metrics={"mc": {"name": "acc", "higher_is_better": True},
                         "ppl": {"name": "word_perplexity", "higher_is_better": False}},
        n_samples={"mc": 12, "ppl": 12}, intervals={"mc": [acc - 0.05, acc + 0.05], "ppl": [ppl - 1, ppl + 1]},
        kv={"full_bytes": 1000, "stored_bytes": stored, "ratio": 1000 / stored},
        timing={"wall_s": 3.0, "decode_tok_s": 20.0 + index % 5},
        env={"device": "cpu (2 cores)", "git_commit": COMMIT, "lock_sha256": "f" * 64, "torch": "2.13.0",
             "load_avg_1m": 1.0})


def efficiency_record(index: int, method: str, ratio: float) -> RunRecord:
    record = make_record(index, method, {}, int(1000 / ratio), suite="efficiency")
    points = [{"context_length": context, "batch_size": batch, "new_tokens": 8, "ttft_s": 0.1 * batch,
               "ttft_s_min": 0.09 * batch, "ttft_s_max": 0.11 * batch, "decode_ms_per_step": context / 100 / ratio,
               "decode_ms_per_step_min": 1.0, "decode_ms_per_step_max": 2.0,
               "throughput_tok_s": 10 * batch * ratio, "kv_ratio": ratio, "roofline_ms_per_step": context / 200}
              for context in (256, 1024) for batch in (1, 4)]
    record.efficiency = {"points": points, "max_batch": {"budget_gb": 1.0, "context_length": 1024,
                                                         "batch": int(8 * ratio), "source": "derived"}}
    return record


@pytest.fixture
def records_dir(tmp_path):
    """A sweep of five configurations (two models), an efficiency pair, a running record, the samples of the first
    h2o run (a prediction holding a script), a corrupt and a truncated record file."""
    root = tmp_path / "sweep"
    index = 0
    for model in ("tiny", "small"):
        for method, params, stored in METHODS:
            write_record(root / f"{index}_{method}" / "record.json", make_record(index, method, params, stored, model))
            index += 1
    for method, ratio in (("full", 1.0), ("h2o", 5.0)):
        write_record(root / f"{index}_eff_{method}" / "record.json", efficiency_record(index, method, ratio))
        index += 1
    running = RunRecord(run_id=f"{index:012x}", created_at="2026-01-02T00:00:00", status="running",
                        method={"name": "tova", "label": "tova"}, model={"name": "tiny"}, suite={"name": "quick"})
    write_record(root / f"{index}_tova" / "record.json", running)
    samples = [{"doc_id": i, "arguments": {"gen_args_0": {"arg_0": f"Question {i}: <b>bold?</b>"}},
                "target": f"answer {i}", "filtered_resps": [INJECTION if i == 0 else f"answer {i}"], "acc": float(i % 2)}
               for i in range(30)]
    (root / "1_h2o" / "samples_mc.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
    (root / "corrupt").mkdir()
    (root / "corrupt" / "record.json").write_text("{not json", encoding="utf-8")
    text = (root / "0_full" / "record.json").read_text(encoding="utf-8")
    (root / "truncated").mkdir()
    (root / "truncated" / "record.json").write_text(text[: len(text) // 2], encoding="utf-8")
    return root


def write_many(root, n: int) -> None:
    """``n`` complete records cycling through the configurations and two models."""
    for index in range(n):
        method, params, stored = METHODS[index % len(METHODS)]
        write_record(root / str(index) / "record.json",
                     make_record(index, method, {**params, "seed": index}, stored, ("tiny", "small")[index % 2]))
