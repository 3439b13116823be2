"""Per-sample scores of a run, kept in a sidecar beside its record: what the report's paired tests read.

Every method is scored on the same samples as ``full``, so a comparison should pair them (one sample's score under
``full`` against the same sample's under the method: :mod:`kvbench.statistics`); the record keeps only aggregates and
intervals, so the per-sample scores travel in a second file next to each record copy:
``record.json`` -> ``record.samples.jsonl.gz``, ``<hash>.json`` -> ``<hash>.samples.jsonl.gz``.

Format: gzip-compressed JSON lines, one object per sample: ``{"task", "id", "score"}``, and for a perplexity-type
metric (lm-eval's ``(loglikelihood, weight)`` items) ``{"task", "id", "loglikelihood", "weight"}`` (the weight is
the words, bytes or tokens the task normalises by). Why JSON lines and gzip rather than parquet: the records are JSON
already and the report side reads them with the standard library (no pyarrow in the lock, nothing to install); a row
per sample can be appended as each task finishes; and gzip makes a thousand-sample task a few kilobytes, small
enough to commit beside a report. The sample id is the suite's own stable id (lm-eval's ``doc_id``, a RULER sample's
index, LongBench's ``_id``), as a string, so two runs of the same workload pair sample by sample.

A record without a sidecar (written before sidecars existed, or the file deleted) stays readable: its rows are
"not testable: no per-sample scores" in the report, never compared by their intervals.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

SUFFIX = ".samples.jsonl.gz"


def sidecar_path(record_path: str | os.PathLike) -> Path:
    """Where the per-sample scores of the record at ``record_path`` are kept."""
    path = Path(record_path)
    return path.with_name(path.name.removesuffix(".json") + SUFFIX)


def sample_entries(task: str, ids: Sequence, items: Sequence) -> list[dict]:
    """One sidecar row per sample: ``items`` are per-sample scores, or ``(loglikelihood, weight)`` pairs."""
    rows = []
    for sample_id, item in zip(ids, items):
        row = {"task": task, "id": str(sample_id)}
        if isinstance(item, (list, tuple)) and len(item) == 2:
            row["loglikelihood"], row["weight"] = float(item[0]), float(item[1])
        elif item is not None:
            row["score"] = float(item)
        rows.append(row)
    return rows


def write_sidecar(record_path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write ``rows`` as the sidecar of ``record_path`` atomically (a reader never sees half a file)."""
    target = sidecar_path(record_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=SUFFIX)
    try:
        with os.fdopen(handle, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
            for row in rows:
                out.write((json.dumps(row, sort_keys=True) + "\n").encode("utf-8"))
        os.chmod(temp, 0o644)  # as readable as the record beside it (mkstemp makes it private)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target


def read_sidecar(record_path: str | os.PathLike) -> dict[str, dict[str, dict]] | None:
    """``{task: {sample id: row}}`` of the record at ``record_path``; None without a readable sidecar."""
    path = sidecar_path(record_path)
    if not path.is_file():
        return None
    tasks: dict[str, dict[str, dict]] = {}
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    tasks.setdefault(row["task"], {})[row["id"]] = row
    except (OSError, EOFError, ValueError, KeyError):
        return None
    return tasks


def copy_sidecar(source_record: str | os.PathLike, target_record: str | os.PathLike) -> Path | None:
    """Copy the sidecar of one record copy to another's place (a reused record keeps its per-sample scores)."""
    source = sidecar_path(source_record)
    if not source.is_file():
        return None
    target = sidecar_path(target_record)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target
