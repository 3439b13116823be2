"""The run record: one typed schema, written atomically as JSON, read back at its own version.

:class:`RunRecord` is the schema, and each of its parts (``model``, ``method``, ``suite``, ``kv``, ``timing``,
``efficiency``, ``env``, ``outputs``) is a small dataclass (:class:`RecordPart`). The runner writes records;
tracking and the report read them (the report's flat table is :mod:`kvbench.records_frame`). On disk a record is
a plain nested JSON object: a part is written with every field (null where unknown), or as ``{}`` while nothing
in it is known yet (a rejected run's ``env``, the ``kv`` of a run that failed before measuring, the
``efficiency`` of any other suite). A part also reads like that object (``record.kv["ratio"]``,
``record.kv.get("ratio")``), so scripts written for the dict parts of schema version 2 keep working.

``schema_version`` changes whenever a field changes meaning. Version 2 records (free-form dict parts) are
upgraded in memory when read (:func:`upgrade_version_2`); any other version is refused with a clear
:class:`RecordError` instead of being read wrongly, and the report lists such a file as unreadable. The
README's record table is generated from the field docs here (``python -m kvbench.results``; a test checks
that they agree). The module is over 300 lines because of those docs: they are the schema's documentation.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kvbench.atomic import atomic_write_json
from kvbench.errors import KvbenchError
from kvbench.sample_scores import write_sidecar

log = logging.getLogger(__name__)
RECORD_NAME = "record.json"
SCHEMA_VERSION = 3
#: Config keys that do not change what a run measures (excluded from the hash).
UNHASHED_KEYS = ("logger", "force", "records_dir", "reports_dir", "report_name", "html", "job_device", "dry_run",
                "paper")


class RecordError(KvbenchError):
    """A record file cannot be read as a kvbench record of this version."""


def _doc(text: str, default=None, factory=None):
    if factory is not None:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


class RecordPart(Mapping):
    """A part of a record: a dataclass written as a JSON object of all its fields, or ``{}`` while every field is
    at its default (nothing known yet). Read-only mapping access mirrors that object."""

    def _keys(self) -> list[str]:
        names = [f.name for f in dataclasses.fields(self)]
        at_default = all(getattr(self, f.name) == (f.default_factory() if f.default_factory is not dataclasses.MISSING
                                                   else f.default) for f in dataclasses.fields(self))
        return [] if at_default else names

    def __getitem__(self, key: str):
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def to_dict(self) -> dict:
        return {key: copy.deepcopy(getattr(self, key)) for key in self._keys()}

    @classmethod
    def from_dict(cls, data, name: str):
        """``data`` (the JSON object, or a part already) as this part; :class:`RecordError` on an unknown key."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise RecordError(f"field {name} is not an object")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise RecordError(f"field {name} has unknown key(s) {', '.join(map(str, unknown))} "
                              f"(valid: {', '.join(valid)})")
        return cls(**data)


@dataclass(eq=False)
class ModelPart(RecordPart):
    """The model evaluated: only `name` until it loads."""

    name: str | None = _doc("the model's config name (`smollm2_135m`)")
    n_params: int | None = _doc("parameters of the model as evaluated (after any surgery)")
    n_layers: int | None = _doc("layers of the original model")
    n_heads: int | None = _doc("attention heads of the original model")
    n_kv_heads: int | None = _doc("KV heads of the original model")
    head_dim: int | None = _doc("head dimension of the original model")
    kv_heads_after_method: int | None = _doc("KV heads after the method's surgery")
    dtype: str | None = _doc("the weights' dtype (`float32`)")


@dataclass(eq=False)
class MethodPart(RecordPart):
    """The method and its parameters."""

    name: str | None = _doc("the registered method (`h2o`)")
    label: str | None = _doc("the method's config name, the report's label (`h2o_local` is a variant of `h2o`)")
    label_params: dict = _doc("the parameters changed from that config's defaults (shown with the label)",
                              factory=dict)
    params: dict = _doc("every parameter, defaults resolved", factory=dict)
    changed_params: dict = _doc("the parameters differing from the method's defaults", factory=dict)
    simulated: bool = _doc("true for a masking simulation (`h2o protocol=simulate`): nothing was evicted", False)


@dataclass(eq=False)
class SuitePart(RecordPart):
    """What was evaluated."""

    name: str | None = _doc("the suite's config name (`quick`)")
    runner: str | None = _doc("the registered suite that ran it (`lm_eval`)")
    tasks: list = _doc("the tasks, in the suite's order", factory=list)
    limit: int | None = _doc("examples per task (null: all)")
    query_aware: bool = _doc("the question compressed with the context (true), or fed after it (the default)", False)
    question_visible: dict | None = _doc("per task, whether the question was visible at compression time: `yes`, "
                                         "`no`, `whole prompt` (compressed whole) or `no question`")


@dataclass(eq=False)
class KvPart(RecordPart):
    """The KV cache, bytes measured from the cache's own tensors."""

    full_bytes: int | None = _doc("what an uncompressed cache holds for the same tokens, summed over requests")
    stored_bytes: int | None = _doc("what the method's cache held after context compression, summed over requests")
    ratio: float | None = _doc("`full_bytes / stored_bytes`")
    peak_stored_bytes: int | None = _doc("the largest cache of the run")
    peak_full_bytes: int | None = _doc("the uncompressed bytes of that same request")
    peak_decode_stored_bytes: int | None = _doc("the largest cache measured during generation, after every decode "
                                                "step (and its decode-time compression), over all generations")
    final_decode_stored_bytes: int | None = _doc("the cache each generation ended with, summed over generations")
    generations: int | None = _doc("the generations those two count (null: the run generated nothing)")
    components: dict | None = _doc("a method with components (`combined`): each component's ratio measured alone on "
                                   "the run's longest context, their `product` (the expected ratio) and the "
                                   "`measured` ratio on that context")
    notes: dict | None = _doc("what a method adapted, counted over prefills (e.g. PyramidKV's clamped budgets); an engine "
                              "row: the engine's cache accounting (blocks, tokens per block, bytes per token)")
    aggregation: str | None = _doc("how `ratio` was aggregated: the requests whose bytes the sums count (prefills after "
                                   "context compression; perplexity windows, streamed without a prefill, at their end)")
    source: str | None = _doc("`engine`: an engine row (`engine=vllm`), its figures engine-reported (vLLM's block "
                              "accounting, per token, in `notes`), not measured from tensors; null: measured by kvbench")


@dataclass(eq=False)
class TimingPart(RecordPart):
    """Where the time went (seconds) and the speeds measured."""

    wall_s: float | None = _doc("the whole run")
    load_apply_s: float | None = _doc("loading the model and applying the method")
    eval_s: float | None = _doc("the suite")
    prefill_tok_s: float | None = _doc("prefill tokens per second (compression included)")
    decode_tok_s: float | None = _doc("decoded tokens per second")
    decode_ms_per_token: float | None = _doc("milliseconds per decoded token")


@dataclass(eq=False)
class EfficiencyPart(RecordPart):
    """The efficiency suite's measurements (`{}` for any other suite)."""

    points: list = _doc(
        "one per (batch, context): `batch_size`, `context_length`, `new_tokens` (EOS ignored), `ttft_s` (prefill + "
        "compression of the batch), `decode_ms_per_step`, `throughput_tok_s` (B·new_tokens / decode time), each the "
        "median over `repeats` with `_min`/`_max`; `kv_bytes` (the cache after prefill), `kv_bytes_peak` (over "
        "decoding), `kv_full_bytes`, `kv_ratio`, `peak_memory_bytes`, `memory_source`; the roofline: `step_bytes` "
        "(weights + the cache after prefill, read once per step), `step_flops` (linear layers + attention over the "
        "stored cache), `floor_ms_per_step` = max(bytes / bandwidth, FLOPs / matmul rate) on this machine, "
        "`floor_bound` (`memory` or `compute`), `floor_multiple` = `decode_ms_per_step / floor_ms_per_step` (records "
        "before the roofline lack these five); `out_of_memory` on a point that did not fit; an engine row (`engine=vllm`) "
        "has no roofline, and `kv_source: engine`: its bytes are vLLM's block accounting", factory=list)
    max_batch: dict | None = _doc(
        "`budget_gb`, `context_length`, `batch`, `source` (`search`: largest batch that ran under the budget on CUDA; "
        "`derived`: weights + measured cache bytes per sequence at context + new tokens against the budget, "
        "activations not counted; `engine_blocks`: the blocks vLLM's cache of `kv_cache_space_gb` holds ÷ the blocks "
        "one request needs); null without a budget")
    model_bytes: int | None = _doc("the loaded model's weights and buffers")
    memory_source: str | None = _doc("`cuda_max_allocated`, or `rss_high_water`: the process's resident-set peak "
                                     "(approximate)")
    memory_reset: bool | None = _doc("whether that peak could be reset before each run")
    workload: dict | None = _doc("`corpus`, `seed`, `new_tokens`, `repeats`, `warmup`, `eos`; `engine` on an engine row "
                                 "(`name`, `version`, `kv_cache_dtype`, `threads`, `kv_blocks`, `block_size`, ...)")
    roofline: dict | None = _doc(
        "the machine, measured once per run: `bandwidth_bytes_s` (a copy of `buffer_bytes`, larger than the "
        "last-level cache, best of 5), `matmul_flop_s` (a GEMM of `gemm_shape` [M, hidden, intermediate] in "
        "`gemm_dtype`, best of 5), `timer` (`perf_counter`, or `cuda_events`), `threads`; and the model: "
        "`weight_bytes` read per step, `matmul_params`, `attention_size` (layers × heads × head dim); null in "
        "records before the roofline")


@dataclass(eq=False)
class EnvPart(RecordPart):
    """Where the run ran."""

    python: str | None = _doc("Python version")
    torch: str | None = _doc("torch version")
    transformers: str | None = _doc("transformers version")
    lm_eval: str | None = _doc("lm-eval version")
    kvbench: str | None = _doc("kvbench version")
    device: str | None = _doc("the GPU's name, or `cpu (<n> cores)`")
    git_commit: str | None = _doc("kvbench's commit (null outside a checkout)")
    git_dirty: bool | None = _doc("whether tracked files of that checkout differed from the commit (null outside one)")
    torch_threads: int | None = _doc("torch's CPU threads")
    cpu_model: str | None = _doc("the CPU's model name (`/proc/cpuinfo`, else `platform.processor()`): CPU timings "
                                 "are only comparable on the same model")
    load_avg_1m: float | None = _doc("the machine's load when the run started")
    lock_sha256: str | None = _doc("sha256 of the `requirements.lock` the package was installed from")
    lock_drift: list | None = _doc("pinned packages installed at another version (empty in a locked environment)")


@dataclass(eq=False)
class OutputsPart(RecordPart):
    """Where the run's files are."""

    dir: str | None = _doc("the run dir")
    wandb: str | None = _doc("the W&B run's status (`offline`, `disabled`, or what failed)")
    wandb_dir: str | None = _doc("the W&B run's directory")


#: The record's parts and their dataclasses.
PARTS: dict[str, type[RecordPart]] = {"model": ModelPart, "method": MethodPart, "suite": SuitePart, "kv": KvPart,
                                      "timing": TimingPart, "efficiency": EfficiencyPart, "env": EnvPart,
                                      "outputs": OutputsPart}


@dataclass
class RunRecord:
    """One run of one configuration (ARCHITECTURE.md, "Result record"). A part may be given as the dict it is
    written as (it is read into its dataclass, also when assigned later)."""

    run_id: str = _doc("12-hex-digit id of this run")
    created_at: str = _doc("UTC time the run started (ISO 8601)")
    status: str = _doc("`running`, `complete`, `failed` or `interrupted` (Ctrl-C; a re-run redoes it)", "running")
    config_hash: str = _doc("hash of the resolved config, minus logger/force/paths: the skip key", "")
    config: dict = _doc("the resolved config", factory=dict)
    model: ModelPart = _doc(ModelPart.__doc__, factory=ModelPart)
    method: MethodPart = _doc(MethodPart.__doc__, factory=MethodPart)
    suite: SuitePart = _doc(SuitePart.__doc__, factory=SuitePart)
    metrics: dict = _doc("`{task: {metric: value}}`, written as each task finishes", factory=dict)
    primary_metrics: dict = _doc("`{task: {name, higher_is_better}}`: the column a table shows", factory=dict)
    stderr: dict = _doc("`{task: {metric: standard error}}` where the evaluator computes one", factory=dict)
    n_samples: dict = _doc("`{task: examples scored}`", factory=dict)
    intervals: dict = _doc("`{task: [low, high]}`: 95% interval of the primary metric, bootstrapped over the task's "
                           "samples (1000 resamples, seed 0, the task's own aggregation)", factory=dict)
    kv: KvPart = _doc(KvPart.__doc__, factory=KvPart)
    timing: TimingPart = _doc(TimingPart.__doc__, factory=TimingPart)
    efficiency: EfficiencyPart = _doc(EfficiencyPart.__doc__, factory=EfficiencyPart)
    env: EnvPart = _doc(EnvPart.__doc__, factory=EnvPart)
    error: str | None = _doc("`<ErrorType>: <message>` of a failed run, else null")
    outputs: OutputsPart = _doc(OutputsPart.__doc__, factory=OutputsPart)
    schema_version: int = _doc("version of this schema; version 2 is upgraded when read, any other is refused",
                               SCHEMA_VERSION)

    def __setattr__(self, name: str, value) -> None:
        part = PARTS.get(name)
        super().__setattr__(name, value if part is None else part.from_dict(value, name))

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
        """The record as the plain nested object written to disk."""
        return {f.name: value.to_dict() if isinstance(value, RecordPart) else copy.deepcopy(value)
                for f in dataclasses.fields(self) for value in (getattr(self, f.name),)}

    @classmethod
    def from_dict(cls, data: dict, source: str = "record") -> "RunRecord":
        if not isinstance(data, dict) or "run_id" not in data:
            raise RecordError(f"{source} is not a kvbench run record")
        version = data.get("schema_version", 1)
        if version == 2:
            data = upgrade_version_2(data, source)
        elif version != SCHEMA_VERSION:
            raise RecordError(f"{source} has record schema version {version}; this kvbench reads version "
                              f"{SCHEMA_VERSION} (and upgrades version 2): re-run it, or report it with the kvbench "
                              "that wrote it")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise RecordError(f"{source} has unknown field(s) {', '.join(unknown)} for schema version {version}")
        try:
            return cls(**data)
        except (RecordError, TypeError) as error:
            raise RecordError(f"{source}: {error}") from None


def upgrade_version_2(data: dict, source: str = "record") -> dict:
    """A version 2 record as version 3, in memory (the file is left as it is). Version 2 parts were free-form
    dicts: keys no version 2 kvbench wrote are dropped, and what early version 2 records lack is filled as the
    version 2 report read it: ``method.label`` = the method's name, ``method.label_params`` = its
    ``changed_params`` (else none), ``method.changed_params`` = its ``params``; every other missing key is null
    (``simulated`` and ``query_aware``: false)."""
    upgraded = dict(data, schema_version=SCHEMA_VERSION)
    for name, part in PARTS.items():
        value = data.get(name) or {}
        if not isinstance(value, dict):
            raise RecordError(f"{source}: field {name} is not an object")
        known = {f.name for f in dataclasses.fields(part)}
        upgraded[name] = {key: item for key, item in value.items() if key in known}
    method = upgraded["method"]
    if method:
        method.setdefault("label", method.get("name"))
        method.setdefault("label_params", method.get("changed_params", {}))
        method.setdefault("changed_params", method.get("params", {}))
    return upgraded


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
    """The README's record table, generated from the schema: a row per field, and one per field of each part."""
    rows = ["| field | content |", "|---|---|"]
    for f in dataclasses.fields(RunRecord):
        rows.append(f"| `{f.name}` | {f.metadata['doc']} |")
        for sub in dataclasses.fields(PARTS[f.name]) if f.name in PARTS else ():
            rows.append(f"| `{f.name}.{sub.name}` | {sub.metadata['doc']} |")
    return "\n".join(rows)


def config_hash(config: dict) -> str:
    """Stable hash of the resolved config, ignoring keys that do not change results."""
    relevant = {k: v for k, v in config.items() if k not in UNHASHED_KEYS}
    if (relevant.get("engine") or {}).get("backend", "hf") == "hf":  # the default engine: earlier records' hashes hold
        relevant.pop("engine", None)
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- record files -------------------------------------------------------------------------------------
def write_record(path: str | os.PathLike, record: RunRecord | dict) -> Path:
    """Write ``record`` as JSON atomically (serialised first, so a bad value never touches the file)."""
    return atomic_write_json(path, record.to_dict() if isinstance(record, RunRecord) else record)


def rescue_dir() -> Path:
    """Where a record goes when neither the run dir nor the records dir can be written (e.g. a full disk)."""
    return Path(tempfile.gettempdir()) / "kvbench-rescued-records"


class RecordStore:
    """Writes one run's record to each of its paths in order (the runner: the records dir, then the run dir),
    after every change.

    A write that fails (full disk, a directory gone) never costs the result: the other copy is still
    written, and if both fail the record goes to :func:`rescue_dir` (:attr:`rescued`); :meth:`rescue_message`
    is then the one line naming where it should have gone and where it is (the runner ends the run with it).
    """

    def __init__(self, *paths: str | os.PathLike):
        self.paths = [Path(p) for p in paths]
        self.failed: dict[Path, str] = {}
        self.rescued: Path | None = None
        self.written: list[Path] = []

    def save(self, record: RunRecord, scores: list[dict] | None = None) -> list[Path]:
        """Write ``record`` to every path; with ``scores`` (per-sample rows) also each copy's sidecar
        (:mod:`kvbench.sample_scores`)."""
        if not self.paths:  # a store that keeps nothing (a data-parallel rank other than 0)
            return []
        written, newly_failed = [], []
        for path in self.paths:
            try:
                written.append(write_record(path, record))
                if scores is not None:
                    write_sidecar(path, scores)
            except OSError as error:
                newly_failed += [] if path in self.failed else [path]
                self.failed[path] = f"{type(error).__name__}: {error}"
        for path in newly_failed if written else ():  # once per path; a full rescue is the runner's one line
            log.warning("could not write the record to %s (%s); it is at %s", path, self.failed[path], written[0])
        if not written:
            self.rescued = write_record(rescue_dir() / f"{record.run_id}.json", record)
            if scores is not None:
                write_sidecar(self.rescued, scores)
            written.append(self.rescued)
        self.written = written
        return written

    def rescue_message(self) -> str:
        """``could not write the record to A, B (OSError: ...); it was saved to R``."""
        failed, reason = ", ".join(str(p) for p in self.failed), next(iter(self.failed.values()))
        return f"could not write the record to {failed} ({reason}); it was saved to {self.rescued}"


class RecordRescuedError(KvbenchError):
    """Neither of a run's record paths could be written (a full disk): the record is in the rescue dir."""


def read_record(path: str | os.PathLike) -> RunRecord:
    """The record at ``path`` (a version 2 record upgraded); :class:`RecordError` if it cannot be read as one."""
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
    records but cannot be read (corrupt, another schema version) are appended to ``skipped`` as
    ``(path, reason)``."""
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


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(record_fields_markdown() + "\n")
