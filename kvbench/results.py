"""The run record: one typed schema, written atomically as JSON, read back only at its own version.

:class:`RunRecord` is the schema. The runner writes it; tracking, the roll-up (``load_records``) and the
report read it. ``schema_version`` changes whenever a field changes meaning; :func:`read_record` refuses
a record of another version with a clear error instead of reading it wrongly. The README's record
table is generated from the field docs here (``python -m kvbench.results``; a test checks they agree).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvbench.errors import KvbenchError

RECORD_NAME = "record.json"
SCHEMA_VERSION = 2
#: Config keys that do not change what a run measures (excluded from the hash).
UNHASHED_KEYS = ("logger", "force", "records_dir", "reports_dir", "report_name", "job_device", "dry_run", "paper")


class RecordError(KvbenchError):
    """A record file cannot be read as a kvbench record of this version."""


def _doc(text: str, default=None, factory=None):
    if factory is not None:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


@dataclass
class RunRecord:
    """One run of one configuration (ARCHITECTURE.md, "Result record")."""

    run_id: str = _doc("12-hex-digit id of this run")
    created_at: str = _doc("UTC time the run started (ISO 8601)")
    status: str = _doc("`running`, `complete` or `failed`", "running")
    config_hash: str = _doc("hash of the resolved config, minus logger/force/paths: the skip key", "")
    config: dict = _doc("the resolved config", factory=dict)
    model: dict = _doc("`name`; once loaded `n_params`, `n_layers`, `n_heads`, `n_kv_heads`, `head_dim` (the "
                       "original model), `kv_heads_after_method`, `dtype`", factory=dict)
    method: dict = _doc("`name`, `label` (the method's config name: `h2o_local` is a variant of `h2o`), "
                        "`label_params` (the parameters changed from that config's defaults: the report's label), "
                        "`params` (defaults resolved), `changed_params` (those differing from the method's defaults), "
                        "`simulated` (true for a masking simulation, `h2o protocol=simulate`: nothing was evicted)",
                        factory=dict)
    suite: dict = _doc("`name`, `runner`, `tasks`, `limit`, `query_aware` (the question compressed with the context, "
                       "or fed after it: the default)", factory=dict)
    metrics: dict = _doc("`{task: {metric: value}}`, written as each task finishes", factory=dict)
    primary_metrics: dict = _doc("`{task: {name, higher_is_better}}`: the column a table shows", factory=dict)
    stderr: dict = _doc("`{task: {metric: standard error}}` where the evaluator computes one", factory=dict)
    n_samples: dict = _doc("`{task: examples scored}`", factory=dict)
    intervals: dict = _doc("`{task: [low, high]}`: 95% interval of the primary metric, bootstrapped over the task's "
                           "samples (1000 resamples, seed 0, the task's own aggregation)", factory=dict)
    kv: dict = _doc("`full_bytes`, `stored_bytes` (summed over requests, after context compression), `ratio`, "
                    "`peak_stored_bytes`, `peak_full_bytes`; for a method with components (`combined`) also "
                    "`components`: each component's ratio measured alone on the run's longest context, their "
                    "`product` (the expected ratio) and the `measured` ratio on that context; `notes`: what a method "
                    "adapted, counted over prefills (e.g. PyramidKV's clamped budgets)", factory=dict)
    timing: dict = _doc("`wall_s`, `load_apply_s`, `eval_s`, `prefill_tok_s`, `decode_tok_s`, "
                        "`decode_ms_per_token`", factory=dict)
    efficiency: dict = _doc("efficiency suite only (else empty): `points`, one per (batch, context): `batch_size`, "
                            "`context_length`, `new_tokens` (EOS ignored), `ttft_s` (prefill + compression of the batch), "
                            "`decode_ms_per_step`, `throughput_tok_s` (B·new_tokens / decode time), each the median over "
                            "`repeats` with `_min`/`_max`; `kv_bytes` (the cache after prefill), `kv_bytes_peak` (over "
                            "decoding), `kv_full_bytes`, `kv_ratio`, `peak_memory_bytes`, `memory_source` "
                            "(`cuda_max_allocated`, or `rss_high_water`: the process's resident-set peak, reset per run "
                            "where `memory_reset`; approximate), `out_of_memory` on a point that did not fit; "
                            "`max_batch`: `budget_gb`, `context_length`, `batch`, `source` (`search`: largest batch that "
                            "ran under the budget on CUDA; `derived`: weights + measured cache bytes per sequence at "
                            "context + new tokens against the budget, activations not counted); `model_bytes`; `workload`",
                            factory=dict)
    env: dict = _doc("`python`, `torch`, `transformers`, `lm_eval`, `kvbench`, `device`, `git_commit`, "
                     "`torch_threads`, `load_avg_1m` (the machine's load when the run started), `lock_sha256` (sha256 of the `requirements.lock` the package was installed "
                     "from), `lock_drift` (pinned packages installed at another version; empty in a locked "
                     "environment)", factory=dict)
    error: str | None = _doc("`<ErrorType>: <message>` of a failed run, else null")
    outputs: dict = _doc("`dir` (the run dir) and `wandb_dir`", factory=dict)
    schema_version: int = _doc("version of this schema; a record of another version is refused", SCHEMA_VERSION)

    # -- results of a run ---------------------------------------------------------------------------
    def add_task(self, task: str, metrics: dict, primary: str, higher_is_better: bool = True,
                 stderr: dict | None = None, n: int | None = None, interval=None) -> None:
        self.metrics[task] = dict(metrics)
        self.primary_metrics[task] = {"name": primary, "higher_is_better": bool(higher_is_better)}
        if stderr:
            self.stderr[task] = dict(stderr)
        if n is not None:
            self.n_samples[task] = int(n)
        if interval is not None:
            self.intervals[task] = [float(interval[0]), float(interval[1])]

    def primary_value(self, task: str):
        return self.metrics.get(task, {}).get(self.primary_metrics[task]["name"])

    # -- (de)serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "record") -> "RunRecord":
        if not isinstance(data, dict) or "run_id" not in data:
            raise RecordError(f"{source} is not a kvbench run record")
        version = data.get("schema_version", 1)
        if version != SCHEMA_VERSION:
            raise RecordError(f"{source} has record schema version {version}; this kvbench reads version "
                              f"{SCHEMA_VERSION} only (re-run it, or report it with the kvbench that wrote it)")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise RecordError(f"{source} has unknown field(s) {', '.join(unknown)} for schema version {version}")
        return cls(**data)


def short_params(params: dict, prefix: str = "") -> str:
    """``{"heavy_ratio": 0.1, "tokens_params": {"gamma": 1}}`` -> ``heavy_ratio=0.1 tokens.gamma=1``: a short,
    stable label (keys sorted, nested keys dotted, never a Python dict)."""
    parts = []
    for key in sorted(params):
        value = params[key]
        name = f"{prefix}{key.removesuffix('_params')}" if isinstance(value, dict) else f"{prefix}{key}"
        if isinstance(value, dict):
            inner = short_params(value, f"{name}.")
            if inner:
                parts.append(inner)
        else:
            parts.append(f"{name}={'null' if value is None else format(value, 'g') if isinstance(value, float) else value}")
    return " ".join(parts)


def record_fields_markdown() -> str:
    """The README's record table, generated from the schema."""
    rows = ["| field | content |", "|---|---|"]
    for f in dataclasses.fields(RunRecord):
        rows.append(f"| `{f.name}` | {f.metadata['doc']} |")
    return "\n".join(rows)


def config_hash(config: dict) -> str:
    """Stable hash of the resolved config, ignoring keys that do not change results."""
    relevant = {k: v for k, v in config.items() if k not in UNHASHED_KEYS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_mode() -> int:
    """The mode a new file gets under the user's umask (``mkstemp`` would leave 0600 through the rename)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` atomically: a temp file in the same directory, then rename over ``path``.
    A failure leaves the previous file (if any) untouched and no temp file behind. The file gets the
    permissions of any other file the user creates (umask), so colleagues can read shared results."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_record(path: str | os.PathLike, record: RunRecord | dict) -> Path:
    """Write ``record`` as JSON atomically (serialised first, so a bad value never touches the file)."""
    data = record.to_dict() if isinstance(record, RunRecord) else record
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_jsonable))


def rescue_dir() -> Path:
    """Where a record goes when neither the run dir nor the records dir can be written (e.g. a full disk)."""
    return Path(tempfile.gettempdir()) / "kvbench-rescued-records"


class RecordStore:
    """Writes one run's record to each of its paths in order (the runner: the records dir, then the run dir),
    after every change.

    A write that fails (full disk, a directory gone) never costs the result: the other copy is still
    written, and if both fail the record goes to :func:`rescue_dir`, named in one warning line.
    """

    def __init__(self, *paths: str | os.PathLike):
        self.paths = [Path(p) for p in paths]
        self.failed: dict[Path, str] = {}

    def save(self, record: "RunRecord") -> list[Path]:
        import logging

        if not self.paths:  # a store that keeps nothing (a data-parallel rank other than 0)
            return []
        written = []
        for path in self.paths:
            try:
                written.append(write_record(path, record))
            except OSError as error:
                if path not in self.failed:
                    logging.getLogger(__name__).warning("could not write the record to %s (%s)", path, error)
                self.failed[path] = f"{type(error).__name__}: {error}"
        if not written:
            rescued = rescue_dir() / f"{record.run_id}.json"
            write_record(rescued, record)
            logging.getLogger(__name__).warning("kvbench: the record could not be written where configured; "
                                                "saved to %s", rescued)
            written.append(rescued)
        return written


def read_record(path: str | os.PathLike) -> RunRecord:
    """The record at ``path``; :class:`RecordError` if it is not a readable record of this schema version."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecordError(f"{path} is not a readable JSON record ({type(error).__name__})") from None
    return RunRecord.from_dict(data, str(path))


def stored_record_path(records_dir: str | os.PathLike, digest: str) -> Path:
    """Where the records dir keeps the record of the config with this hash: the copy the skip rule reads."""
    return Path(records_dir) / f"{digest}.json"


def find_complete_record(records_dir: str | os.PathLike, digest: str) -> Path | None:
    """The stored record of a complete run with this config hash, if any (an unreadable one does not count)."""
    path = stored_record_path(records_dir, digest)
    if path.exists():
        try:
            if read_record(path).status == "complete":
                return path
        except RecordError:
            return None
    return None


def iter_records(root: str | os.PathLike, skipped: list | None = None):
    """``(path, record)`` for every record JSON under ``root`` (``record.json`` in run dirs and
    ``<hash>.json`` in records dirs). Files that are not records are passed over; files that look like
    records but cannot be read are appended to ``skipped`` as ``(path, reason)``."""
    for path in sorted(Path(root).rglob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            yield path, read_record(path)
        except RecordError as error:
            if skipped is not None and (path.name == RECORD_NAME or path.parent.name == "records"
                                        or "run_id" in _head(path)):
                skipped.append((path, str(error)))


def _head(path: Path) -> str:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return handle.read(4096)
    except OSError:
        return ""


def load_records(root: str | os.PathLike, skipped: list | None = None):
    """All records under ``root`` as one flat DataFrame (one row per run, duplicates by run_id dropped)."""
    import pandas as pd

    rows, higher = [], {}
    for path, record in iter_records(root, skipped):
        suite = record.suite or {}
        row = {
            "run_id": record.run_id, "path": str(path), "created_at": record.created_at, "status": record.status,
            "model": record.model.get("name"), "method": record.method.get("name"),
            "label": _label(record.method),
            "method_params": json.dumps(record.method.get("changed_params", record.method.get("params", {})),
                                        sort_keys=True, default=str),
            "label_params": json.dumps(record.method.get("label_params", record.method.get("changed_params", {})),
                                       sort_keys=True, default=str),
            "suite": suite.get("name"), "tasks": json.dumps(suite.get("tasks")), "limit": suite.get("limit"),
            "query_aware": bool(suite.get("query_aware", False)),
            "kv_full_bytes": record.kv.get("full_bytes"), "kv_stored_bytes": record.kv.get("stored_bytes"),
            "kv_ratio": record.kv.get("ratio"),
            "kv_expected_ratio": (record.kv.get("components") or {}).get("product"),
            "kv_longest_ratio": (record.kv.get("components") or {}).get("measured"),
            "decode_tok_s": record.timing.get("decode_tok_s"), "prefill_tok_s": record.timing.get("prefill_tok_s"),
            "wall_s": record.timing.get("wall_s"), "lock_sha256": record.env.get("lock_sha256"),
            "device": record.env.get("device"), "load_avg_1m": record.env.get("load_avg_1m"), "error": record.error,
            "efficiency": json.dumps(record.efficiency, default=str) if record.efficiency else None,
        }
        for task, primary in record.primary_metrics.items():
            column = f"{task}/{primary['name']}"
            row[column] = record.primary_value(task)
            low_high = record.intervals.get(task) or [None, None]
            row[f"{column}:low"], row[f"{column}:high"] = low_high
            row[f"{column}:n"] = record.n_samples.get(task)
            higher[f"{task}/{primary['name']}"] = bool(primary.get("higher_is_better", True))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values("created_at").drop_duplicates("run_id", keep="last").reset_index(drop=True)
    frame.attrs["higher_is_better"] = higher  # per metric column: its direction
    return frame


def _label(method: dict) -> str:
    """The report's label: the config name, marked ``(simulated)`` for a masking simulation unless it says so."""
    label = method.get("label") or method.get("name")
    return f"{label} (simulated)" if method.get("simulated") and "simulated" not in label else label


def _jsonable(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    return str(value)


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(record_fields_markdown() + "\n")
