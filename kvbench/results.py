"""The result record: one JSON file per run, written atomically; loading many into a DataFrame.

Fields (ARCHITECTURE.md): ``run_id``, ``created_at``, ``status`` (running|complete|failed),
``config_hash``, ``config`` (resolved), ``model`` {name, n_params, n_layers, n_heads,
n_kv_heads, head_dim}, ``method`` {name, params, changed_params (those differing from the defaults)}, ``suite`` {name, tasks, limit},
``metrics`` {task: {metric: value}}, ``primary_metrics`` {task: {name, higher_is_better}},
``kv`` {full_bytes, stored_bytes, ratio, peak_stored_bytes, peak_full_bytes, and for ``combined``
``components``: each component's ratio measured alone, their ``product`` and the ``measured`` ratio},
``timing`` {wall_s, load_s, apply_s, eval_s, prefill_tok_s, decode_tok_s,
decode_ms_per_token}, ``env`` {python, torch, transformers, lm_eval, kvbench, device,
git_commit}, ``error``, ``outputs``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

RECORD_NAME = "record.json"
#: Config keys that do not change what a run measures (excluded from the hash).
UNHASHED_KEYS = ("logger", "force", "records_dir", "reports_dir", "report_name")


def config_hash(config: dict) -> str:
    """Stable hash of the resolved config, ignoring keys that do not change results."""
    relevant = {k: v for k, v in config.items() if k not in UNHASHED_KEYS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` atomically: a temp file in the same directory, then rename over ``path``.
    A failure leaves the previous file (if any) untouched and no temp file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_record(path: str | os.PathLike, record: dict) -> Path:
    """Write ``record`` as JSON atomically (serialised first, so a bad value never touches the file)."""
    return atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=_jsonable))


def read_record(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def find_complete_record(records_dir: str | os.PathLike, digest: str) -> Path | None:
    """The stored record of a complete run with this config hash, if any."""
    path = Path(records_dir) / f"{digest}.json"
    if path.exists():
        try:
            if read_record(path).get("status") == "complete":
                return path
        except json.JSONDecodeError:
            return None
    return None


def iter_records(root: str | os.PathLike):
    """Every record JSON under ``root`` (``record.json`` in run dirs and ``<hash>.json`` in records dirs)."""
    for path in sorted(Path(root).rglob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            record = read_record(path)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(record, dict) and {"run_id", "method", "metrics", "kv"} <= record.keys():
            yield path, record


def load_records(root: str | os.PathLike):
    """All records under ``root`` as one flat DataFrame (one row per run, duplicates by run_id dropped)."""
    import pandas as pd

    rows = []
    for path, record in iter_records(root):
        row = {
            "run_id": record["run_id"], "path": str(path), "created_at": record.get("created_at"),
            "status": record.get("status"), "model": record.get("model", {}).get("name"),
            "method": record["method"]["name"],
            "method_params": json.dumps(record["method"].get("changed_params", record["method"].get("params", {})),
                                        sort_keys=True, default=str),
            "suite": record.get("suite", {}).get("name"),
            "kv_full_bytes": record["kv"].get("full_bytes"), "kv_stored_bytes": record["kv"].get("stored_bytes"),
            "kv_ratio": record["kv"].get("ratio"),
            "kv_expected_ratio": (record["kv"].get("components") or {}).get("product"),
            "decode_tok_s": record.get("timing", {}).get("decode_tok_s"),
            "prefill_tok_s": record.get("timing", {}).get("prefill_tok_s"),
            "wall_s": record.get("timing", {}).get("wall_s"),
            "lock_sha256": (record.get("env") or {}).get("lock_sha256"),
        }
        for task, primary in record.get("primary_metrics", {}).items():
            value = record["metrics"].get(task, {}).get(primary["name"])
            row[f"{task}/{primary['name']}"] = value
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values("created_at").drop_duplicates("run_id", keep="last").reset_index(drop=True)
    return frame


def _jsonable(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    return str(value)
