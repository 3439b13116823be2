"""A run's per-sample rows for its page: prompt excerpt, prediction, reference, score.

The record holds aggregates only; the samples are the files a suite wrote beside it in the run dir
(``samples_<task>.jsonl`` from lm-eval, ``<suite>/predictions.jsonl`` from RULER, ``<suite>/<dataset>.jsonl`` from
LongBench: :mod:`kvbench.suites`). Each suite names its fields its own way, so a row is read by the first field
present of a short list per column. A file that cannot be parsed gives no rows (its page says so), never an error:
the site must build from any directory.

A committed record travels without its run dir but with its per-sample scores (the sidecar,
:mod:`kvbench.sample_scores`): without sample files the page shows the sidecar's rows -- task, id and score (a
perplexity-type task's log-likelihood and weight), no prompt or prediction -- so every number of a committed report
still opens onto the samples behind it.
"""

from __future__ import annotations

import json
from pathlib import Path

from kvbench.sample_scores import read_sidecar

#: Rows kept per run and characters kept per cell: a page stays light whatever the run's size.
MAX_ROWS = 2000
EXCERPT = 300
PROMPT_KEYS = ("arguments", "prompt", "input", "context", "doc")
PREDICTION_KEYS = ("filtered_resps", "pred", "prediction", "resps")
REFERENCE_KEYS = ("target", "answers", "reference", "answer")


def _text(value) -> str:
    """The first string inside ``value`` (lm-eval nests prompts and responses in lists and dicts)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            text = _text(item)
            if text:
                return text
        return ""
    return "" if value is None else str(value)


def _first(row: dict, keys: tuple[str, ...]):
    return next((row[k] for k in keys if k in row and row[k] not in (None, "", [])), None)


def _excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT else text[:EXCERPT] + "…"


def _score(row: dict, metric: str | None):
    for key in (metric, "score", "acc", "exact_match"):
        value = row.get(key) if key else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, bool):
            return float(value)
    return None


def sample_files(run_dir: Path) -> list[Path]:
    """The JSONL files of per-sample rows a suite wrote in ``run_dir`` (one level of suite directories)."""
    if not run_dir.is_dir():
        return []
    return sorted([*run_dir.glob("*.jsonl"), *run_dir.glob("*/*.jsonl")])


def read_samples(run_dir: Path, primary_metrics: dict | None = None) -> tuple[list[dict], list[str]]:
    """``(rows, problems)``: up to :data:`MAX_ROWS` rows ``{task, id, prompt, prediction, reference, score}`` from
    the run dir's sample files, and a line per file that could not be read."""
    rows: list[dict] = []
    problems: list[str] = []
    primary_metrics = primary_metrics or {}
    for path in sample_files(run_dir):
        default_task = path.stem.removeprefix("samples_")
        try:
            with path.open(encoding="utf-8", errors="replace") as handle:
                for number, line in enumerate(handle):
                    if len(rows) >= MAX_ROWS:
                        return rows, problems
                    if line.strip():
                        rows.append(_row(json.loads(line), default_task, number, primary_metrics))
        except (OSError, ValueError, AttributeError) as error:
            problems.append(f"{path.name}: {type(error).__name__}: {error}")
    return rows, problems


def _row(data: dict, default_task: str, number: int, primary_metrics: dict) -> dict:
    task = str(data.get("task") or default_task)
    if "length" in data and f"{task}_{data['length']}" in primary_metrics:
        task = f"{task}_{data['length']}"
    metric = (primary_metrics.get(task) or primary_metrics.get(default_task) or {}).get("name")
    reference = _first(data, REFERENCE_KEYS)
    return {"task": task, "id": str(data.get("doc_id", data.get("index", data.get("_id", number)))),
            "prompt": _excerpt(_text(_first(data, PROMPT_KEYS))),
            "prediction": _excerpt(_text(_first(data, PREDICTION_KEYS))),
            "reference": _excerpt(", ".join(map(str, reference)) if isinstance(reference, list)
                                  and all(isinstance(r, str) for r in reference) else _text(reference)),
            "score": _score(data, metric)}


def read_sidecar_rows(record_path: Path) -> list[dict]:
    """Up to :data:`MAX_ROWS` rows from the sidecar of the record at ``record_path`` (none without one): the score,
    or for a perplexity-type item its log-likelihood over its weight shown in ``prediction``."""
    rows: list[dict] = []
    for task, samples in (read_sidecar(record_path) or {}).items():
        for sample_id, data in samples.items():
            if len(rows) >= MAX_ROWS:
                return rows
            score = _score(data, None)
            loglik = "" if score is not None or "loglikelihood" not in data else \
                f"log-likelihood {data['loglikelihood']:.4g} over weight {data.get('weight', float('nan')):g}"
            rows.append({"task": task, "id": str(sample_id), "prompt": "", "prediction": loglik, "reference": "",
                         "score": score})
    return rows
