"""Records as one flat table (a pandas DataFrame, one row per run): what the roll-up, the efficiency section and
the paper tables read. The report side's only view of the typed record (:mod:`kvbench.results`).

A row holds the run's identity (model, method label and parameters, suite, tasks, limit, protocol), its KV and
speed figures, the machine it ran on, its error, and per task ``<task>/<primary metric>`` with ``:low``/``:high``
(95% interval) and ``:n``. The efficiency suite's measurements travel as one JSON column (``efficiency``), read by
:mod:`kvbench.efficiency_report`; a probed suite's divergence from full as another (``divergence``), read by
:mod:`kvbench.divergence_report`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd

from kvbench.results import MethodPart, RunRecord, iter_records


def method_label(method: MethodPart) -> str:
    """The report's label: the config name, marked ``(simulated)`` for a masking simulation unless it says so."""
    label = method.label or method.name
    return f"{label} (simulated)" if method.simulated and "simulated" not in label else label


def weight_format(model_cfg: dict, dtype: str | None) -> str | None:
    """The weights as evaluated, in words: ``GGUF Q4_1, dequantised to float32`` for a quantised GGUF file (what a
    quantisation method's numbers depend on), else the dtype."""
    gguf = model_cfg.get("gguf_file")
    if gguf:
        kind = re.search(r"\.((?:I?Q\d[\w]*)|F16|BF16|F32)\.gguf$", str(gguf), re.IGNORECASE)
        return f"GGUF {kind.group(1).upper() if kind else 'file'}, dequantised to {dtype or model_cfg.get('dtype')}"
    if str(model_cfg.get("pretrained", "")).startswith("tiny:"):
        return f"tiny random model, {dtype or model_cfg.get('dtype')}"
    return dtype or model_cfg.get("dtype")


def record_row(path: Path, record: RunRecord) -> tuple[dict, dict[str, bool]]:
    """``(row, {metric column: higher is better})`` of one record."""
    model, method, suite, kv, timing, env = record.model, record.method, record.suite, record.kv, record.timing, record.env
    components = kv.components or {}
    engine = (record.config.get("engine") or {}).get("backend", "hf")
    row = {
        "run_id": record.run_id, "path": str(path), "created_at": record.created_at, "status": record.status,
        # an engine row serves full but is not kvbench's full: it is compared with it, by its label (vllm, vllm_fp8)
        "model": model.name, "method": method.name if engine == "hf" else method_label(method),
        "label": method_label(method),
        "method_params": json.dumps(method.changed_params, sort_keys=True, default=str),
        "label_params": json.dumps(method.label_params, sort_keys=True, default=str),
        "suite": suite.name, "tasks": json.dumps(suite.tasks), "limit": suite.limit,
        "query_aware": bool(suite.query_aware), "question_visible": question_visible(suite),
        "kv_full_bytes": kv.full_bytes, "kv_stored_bytes": kv.stored_bytes, "kv_ratio": kv.ratio,
        "kv_expected_ratio": components.get("product"), "kv_longest_ratio": components.get("measured"),
        "decode_tok_s": timing.decode_tok_s, "prefill_tok_s": timing.prefill_tok_s, "wall_s": timing.wall_s,
        "lock_sha256": env.lock_sha256, "device": env.device, "load_avg_1m": env.load_avg_1m, "error": record.error,
        "git_commit": env.git_commit, "git_dirty": env.git_dirty, "torch_threads": env.torch_threads,
        "cpu_model": env.cpu_model, "engine": engine,
        "weight_format": weight_format(record.config.get("model") or {}, model.dtype),
        "kv_aggregation": kv.aggregation,
        "efficiency": json.dumps(record.efficiency.to_dict(), default=str) if record.efficiency else None,
        "divergence": _divergence(record.metrics),
    }
    higher = {}
    for task, primary in record.primary_metrics.items():
        column = f"{task}/{primary['name']}"
        row[column] = record.primary_value(task)
        if row[column] is not None and (isinstance(row[column], bool) or not isinstance(row[column], (int, float))):
            raise TypeError(f"{column} is {row[column]!r}, not a number")
        row[f"{column}:low"], row[f"{column}:high"] = record.intervals.get(task) or [None, None]
        row[f"{column}:n"] = record.n_samples.get(task)
        higher[column] = bool(primary.get("higher_is_better", True))
    return row, higher


#: The report's legend for the ``question_visible`` column.
QUESTION_VISIBLE_NOTE = ("`question_visible`: whether the question was visible at compression time (`yes`: compressed "
                         "with the context, query-aware; `no`: fed after the compressed context, query-agnostic; "
                         "`whole prompt`: the prompt compressed whole, any question in it included; `no question`: "
                         "none asked; `not recorded`: a record older than the field)")


def question_visible(suite) -> str:
    """The record's ``suite.question_visible`` as one cell: the value every task shares, else ``task: value`` pairs.
    A record older than the field says ``yes`` when it was query-aware, else ``not recorded``."""
    per_task = suite.question_visible or {}
    if not per_task:
        return "yes" if suite.query_aware else "not recorded"
    values = set(per_task.values())
    return values.pop() if len(values) == 1 else "; ".join(f"{task}: {value}" for task, value in per_task.items())


def _divergence(metrics: dict) -> str | None:
    """``{task: {kl_vs_full, ...}}`` as JSON for the tasks a decoding suite probed against full (``suite.fidelity``)."""
    probed = {task: {k: v for k, v in values.items() if k.endswith("_vs_full") or "_vs_full_" in k}
              for task, values in (metrics or {}).items() if isinstance(values, dict) and "kl_vs_full" in values}
    return json.dumps(probed) if probed else None


def load_records(root: str | os.PathLike, skipped: list | None = None) -> pd.DataFrame:
    """All records under ``root`` as one flat DataFrame (one row per run, duplicates by run_id dropped); the
    direction of each metric column is in ``frame.attrs["higher_is_better"]``. Unreadable record files, and records
    whose fields have the wrong shape (a metric that is not a number, an interval that is not a pair), are
    appended to ``skipped`` as ``(path, reason)``."""
    rows, higher = [], {}
    for path, record in iter_records(root, skipped):
        try:
            row, directions = record_row(path, record)
        except (AttributeError, TypeError, ValueError, KeyError) as error:  # valid JSON, wrong shapes inside
            if skipped is not None:
                skipped.append((path, f"malformed record: {type(error).__name__}: {error}"))
            continue
        rows.append(row)
        higher.update(directions)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values("created_at").drop_duplicates("run_id", keep="last").reset_index(drop=True)
    frame.attrs["higher_is_better"] = higher  # per metric column: its direction
    return frame
