"""One run's page data: its identity, per-task scores with intervals, KV bytes, timings, the environment it ran in
(commit, lock digest, versions, device), the config as run, and its per-sample table (:mod:`kvbench.site.samples`).

Built from the typed record (:class:`kvbench.results.RunRecord`); every field may be missing in a partial record
(a run that failed early), so each is read with a default and shown blank.
"""

from __future__ import annotations

import json
from pathlib import Path

from kvbench.records_frame import method_label
from kvbench.results import RunRecord, short_params
from kvbench.site.overview import blank, number
from kvbench.site.samples import read_samples, read_sidecar_rows

ENV_FIELDS = ("git_commit", "lock_sha256", "kvbench", "python", "torch", "transformers", "lm_eval", "device",
              "torch_threads", "load_avg_1m", "lock_drift")


def _bytes(value) -> str:
    return "" if blank(value) else f"{value:,} B ({value / 2**20:.2f} MiB)"


def scores(record: RunRecord) -> list[dict]:
    rows = []
    for task, metrics in record.metrics.items():
        primary = (record.primary_metrics.get(task) or {}).get("name") or next(iter(metrics or {}), "")
        interval = record.intervals.get(task) or [None, None]
        others = {k: v for k, v in (metrics or {}).items() if k != primary}
        rows.append({"task": task, "metric": primary, "value": number((metrics or {}).get(primary), ".4g"),
                     "interval": "" if blank(interval[0]) else f"[{number(interval[0], '.4g')}, {number(interval[1], '.4g')}]",
                     "n": record.n_samples.get(task, ""),
                     "stderr": number((record.stderr.get(task) or {}).get(primary), ".3g"),
                     "others": ", ".join(f"{k} {number(v, '.4g') if isinstance(v, (int, float)) else v}"
                                         for k, v in others.items())})
    return rows


def samples_table(rows: list[dict]) -> dict:
    """The per-sample rows as the browser table's ``{columns, rows}`` (filter by task)."""
    columns = [{"key": k, "title": k, "wrap": k in ("prompt", "prediction", "reference")}
               for k in ("task", "id", "prompt", "prediction", "reference", "score")]
    out = []
    for row in rows:
        cells = [[row[k], row[k], None, None] for k in ("task", "id", "prompt", "prediction", "reference")]
        score = None if blank(row["score"]) else row["score"]
        cells.append([score, number(score, ".4g"), None, None])
        out.append({"id": "", "f": {"task": row["task"]}, "c": cells})
    return {"columns": columns, "rows": out}


def run_page(path: Path, record: RunRecord) -> dict:
    """What ``run.html.j2`` shows of one record read from ``path``."""
    kv, timing, env = record.kv, record.timing, record.env
    run_dir = Path(record.outputs.get("dir") or path.parent) if path.name != "record.json" else path.parent
    samples, problems = read_samples(run_dir, record.primary_metrics)
    from_sidecar = not samples and not problems
    if from_sidecar:  # a committed record: its per-sample scores travel beside it
        samples = read_sidecar_rows(path)
    return {
        "run_id": record.run_id, "path": str(path), "status": record.status, "created_at": record.created_at,
        "label": method_label(record.method), "params": short_params(record.method.label_params or {}),
        "model": record.model.name, "suite": record.suite.name, "error": record.error,
        "scores": scores(record),
        "kv": [("ratio", number(kv.ratio)), ("full bytes", _bytes(kv.full_bytes)),
               ("stored bytes", _bytes(kv.stored_bytes)), ("peak stored bytes", _bytes(kv.peak_stored_bytes)),
               ("peak full bytes", _bytes(kv.peak_full_bytes)),
               ("components", json.dumps(kv.components) if kv.components else ""),
               ("notes", json.dumps(kv.notes) if kv.notes else "")],
        "timing": [(name, number(timing.get(name), ".4g")) for name in
                   ("wall_s", "load_apply_s", "eval_s", "prefill_tok_s", "decode_tok_s", "decode_ms_per_token")],
        "env": [(name, "" if blank(env.get(name)) else str(env.get(name))) for name in ENV_FIELDS],
        "samples": samples_table(samples), "sample_problems": problems, "run_dir": str(run_dir),
        "samples_from_sidecar": from_sidecar and bool(samples),
        "config": json.dumps(record.config, indent=2, sort_keys=True, default=str),
    }
