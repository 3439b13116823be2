"""One kvbench run: validate → record → logger → model + method → suite → record (ARCHITECTURE.md).

Everything that needs no weights is checked first (:mod:`kvbench.validation`), the places the run writes
to included; a run rejected there still leaves a ``failed`` record saying why. The record is written
before the logger starts, rewritten atomically after every task (a failure later loses nothing already
computed; a failed write falls back, see :class:`~kvbench.results.RecordStore`), and a complete record
for the same resolved config is reused unless ``force``. Ctrl-C leaves an ``interrupted`` record (a re-run redoes
that job only); a record that had to go to the rescue dir, or a run output the disk had no room for, ends the run
with one line naming the path that failed and where the record is.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import errno
import logging
import os
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kvbench.environment import environment
from kvbench.file_lock import exclusive
from kvbench.errors import DiskFullError, KvbenchError
from kvbench.eval import distributed
from kvbench.eval.component_ratios import component_ratios
from kvbench.eval.protocol import CompressionProtocol
from kvbench.models import describe_model, load_base_model, placed, private_copy
from kvbench.results import (RECORD_NAME, EnvPart, KvPart, MethodPart, ModelPart, OutputsPart, RecordRescuedError,
                             RecordStore, RunRecord, SuitePart, config_hash, find_complete_record, read_record,
                             stored_record_path, write_record)
from kvbench.sample_scores import copy_sidecar
from kvbench.suites import RunContext, TaskResult
from kvbench.tracking import Tracker
from kvbench.validation import RunPlan, check_destinations, validate

log = logging.getLogger(__name__)


def run(cfg: DictConfig, output_dir: str | os.PathLike, reuse_loaded: bool = False, job_num: int = 0,
        sweep_id: str | None = None, method_config: str | None = None) -> RunRecord:
    """Run one configuration and return its record (also written to ``output_dir/record.json``).

    ``reuse_loaded`` keeps the base model in memory for the next job of a sweep; ``job_num`` places the job
    (``job_device=round_robin``); ``sweep_id`` groups the sweep's W&B runs; ``method_config`` is the name of the
    method's config (``h2o_local``), the record's label. Under ``accelerate launch`` every rank evaluates its share
    and only rank 0 writes the record and logs (:mod:`kvbench.eval.distributed`). The config hash uses the
    method's parameters with their defaults resolved, so ``heavy_ratio=null`` (meaning 0.1) and 0.1 are one run."""
    output_dir = Path(output_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    check_destinations(cfg, output_dir)
    started = time.perf_counter()
    main = distributed.is_main_process()
    try:
        plan = validate(cfg, method_config=method_config)
    except KvbenchError as error:  # rejected before anything ran: the record says why (a sweep's table shows it)
        digest = config_hash(resolved)
        rejected = rejected_record(cfg, resolved, digest, output_dir, error, method_config)
        record_store(cfg, output_dir, digest, main).save(rejected)
        raise
    resolved["method"] = {"name": plan.method.name, **plan.method.params()}
    digest = config_hash(resolved)
    with config_lock(cfg, digest, main):  # a second sweep on this records dir waits, then skips what this one ran
        if not cfg.force and (existing := find_complete_record(cfg.records_dir, digest)):
            return reuse(existing, output_dir, main)
        return execute(cfg, plan, resolved, digest, output_dir, started, reuse_loaded=reuse_loaded, job_num=job_num,
                       sweep_id=sweep_id, main=main)


def config_lock(cfg: DictConfig, digest: str, main: bool):
    """The config's lock in the records dir (:mod:`kvbench.file_lock`); none on a data-parallel rank other than 0,
    which writes nothing and must not wait for rank 0."""
    if not main:
        return nullcontext()
    return exclusive(stored_record_path(cfg.records_dir, digest).with_suffix(".lock"),
                     f"another process is running config {digest}: this job waits, then reuses its record")


def execute(cfg: DictConfig, plan: RunPlan, resolved: dict, digest: str, output_dir: Path, started: float, *,
            reuse_loaded: bool, job_num: int, sweep_id: str | None, main: bool) -> RunRecord:
    """Run a validated config that has no complete record: the ``running`` record, the logger, the evaluation, and
    the record's end (``complete``, ``failed`` or ``interrupted``), whatever ends the run."""
    store = record_store(cfg, output_dir, digest, main)
    record = new_record(cfg, resolved, digest, plan, output_dir)
    store.save(record)
    tracker = Tracker(cfg.logger if main else OmegaConf.create({"mode": "disabled"}), resolved,
                      run_name=f"{cfg.model.name}-{plan.method.name}", run_id=record.run_id, group=sweep_id,
                      job_type=plan.method.name)
    record.outputs.wandb, record.outputs.wandb_dir = tracker.status, tracker.run_dir
    try:
        try:
            evaluate(cfg, plan, record, lambda scores=None: store.save(record, scores), tracker, output_dir, reuse_loaded,
                     job_num)
            record.status = "complete"
        except BaseException as error:  # record what failed, keep what was computed, then re-raise
            record.status, record.error = failure(error)
            raise
        finally:
            finish(record, store, tracker, started)
    except Exception as error:
        one_line = one_line_failure(error, store)
        if one_line is error:
            raise
        raise one_line from error
    if store.rescued:  # complete, but not where the skip rule and the sweep look: say where it is, exit non-zero
        raise RecordRescuedError(store.rescue_message())
    return record


def failure(error: BaseException) -> tuple[str, str]:
    """The record's ``(status, error)`` for a run ended by ``error``: Ctrl-C is ``interrupted`` (a re-run redoes the
    job, as it does a failed one), anything else ``failed``."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", "KeyboardInterrupt: interrupted (Ctrl-C); a re-run redoes this job"
    return "failed", f"{type(error).__name__}: {error}"


def finish(record: RunRecord, store: RecordStore, tracker: Tracker, started: float) -> None:
    """The run's last record write and the W&B run's end, whatever ended the run."""
    record.timing.wall_s = time.perf_counter() - started
    store.save(record)
    tracker.finish(record, exit_code=0 if record.status == "complete" else 1)
    if record.outputs.wandb != tracker.status:  # logging or finishing W&B failed: say so
        record.outputs.wandb = tracker.status
        store.save(record)


#: The errno of a write that failed for want of space (a full disk or tmpfs, a quota, a file-size limit).
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def one_line_failure(error: Exception, store: RecordStore) -> Exception:
    """What a failed run raises: ``error`` itself, or one line where the cause is the disk (a record that went to
    the rescue dir, or a run output that could not be written: the path that failed and where the record is)."""
    if store.rescued:
        return RecordRescuedError(f"{store.rescue_message()}; the run failed: {type(error).__name__}: {error}")
    if isinstance(error, OSError) and error.errno in NO_SPACE and store.written:
        return DiskFullError(f"could not write {error.filename or 'a run output'} ({error.strerror}); the run stopped "
                             f"and its record ({', '.join(map(str, store.written))}) keeps what was computed")
    return error


def evaluate(cfg: DictConfig, plan: RunPlan, record: RunRecord, save: Callable[..., object], tracker: Tracker,
             output_dir: Path, reuse_loaded: bool = False, job_num: int = 0) -> None:
    """Load the model, apply the method and run the suite through the protocol, filling ``record`` (``save``d
    after every task, with the per-sample scores so far): the model's shape, every task's scores, the KV bytes and
    the timings."""
    t0 = time.perf_counter()
    model, tokenizer, reference_config = load_and_apply(cfg, plan.method, reuse_loaded, job_num)
    record.timing.load_apply_s = time.perf_counter() - t0
    record.model = ModelPart(**describe_model(cfg.model.name, model, reference_config))
    protocol = CompressionProtocol(model, plan.method, reference_config)
    t0 = time.perf_counter()
    scores: list[dict] = []
    for result in plan.suite.run(plan.suite_plan, RunContext(protocol, tokenizer, cfg.model, output_dir, cfg.seed,
                                                                   cfg.get("engine"))):
        add_result(record, result, tracker)
        scores.extend(result.scores)
        save(scores)
    if record.efficiency.points:
        tracker.log_efficiency(record.efficiency.points)
    record.timing.eval_s = time.perf_counter() - t0
    if engine_backend(cfg) != "hf":  # the engine's figures are its own: kvbench's protocol measured nothing
        return
    protocol.stats = distributed.combined_stats(protocol.stats)
    components = component_ratios(protocol) if distributed.is_main_process() else None
    record.kv = KvPart(**protocol.stats.kv_summary(), components=components)
    record.timing = dataclasses.replace(record.timing, **protocol.stats.speed_summary())


def engine_backend(cfg: DictConfig) -> str:
    """``engine.backend`` (``hf`` for configs composed before the engine group existed)."""
    return (cfg.get("engine") or {}).get("backend", "hf")


def add_result(record: RunRecord, result: TaskResult, tracker: Tracker) -> None:
    """A suite's result into the record and W&B: its task's scores, and the efficiency measurements it carries."""
    if result.efficiency is not None:
        record.efficiency = result.efficiency
    if result.kv is not None:  # an engine row: the cache figures the engine reports
        record.kv = result.kv
    if result.task is not None:
        record.add_task(result.task, result.metrics, result.primary, result.higher_is_better, result.stderr,
                        result.n, result.interval)
        tracker.log_task(result.task, result.metrics, result.samples)


def reuse(existing: Path, output_dir: Path, main: bool) -> RunRecord:
    """The complete record of the same resolved config (and its per-sample scores), copied to the run dir instead of
    running again."""
    record = read_record(existing)
    if main:
        write_record(output_dir / RECORD_NAME, record)
        copy_sidecar(existing, output_dir / RECORD_NAME)
    log.info("skipping: a complete record for this config exists (%s); use force=true to re-run", existing)
    return record


def record_store(cfg: DictConfig, output_dir: Path, digest: str, main: bool) -> RecordStore:
    """The job's two record copies, the records dir's first: it is what the skip rule reads, so a job killed between
    the two writes is never complete in its run dir without being complete where a re-run looks. A data-parallel
    rank other than 0 keeps nothing."""
    if not main:
        return RecordStore()
    return RecordStore(stored_record_path(cfg.records_dir, digest), output_dir / RECORD_NAME)


def load_and_apply(cfg: DictConfig, method, reuse_loaded: bool = False, job_num: int = 0):
    """``(model after the method, tokenizer, the model's config before it)``; a kept model is never modified."""
    model_cfg = placed(cfg.model, cfg.get("job_device"), job_num, distributed.local_rank() if distributed.world_size() > 1 else None)
    model, tokenizer = load_base_model(model_cfg, keep_loaded=reuse_loaded)
    reference_config = copy.deepcopy(model.config)
    if method.changes_model and reuse_loaded:
        model = private_copy(model)
    return method.apply(model, tokenizer), tokenizer, reference_config


# -- the record of a run: a new one, or one validation rejected (the same typed parts) -----------------------------
def new_record(cfg: DictConfig, resolved: dict, digest: str, plan: RunPlan, output_dir: Path) -> RunRecord:
    """The ``running`` record of a validated run: its config, the method and its label, the suite, the machine."""
    method = plan.method
    return RunRecord(
        run_id=_new_run_id(), created_at=_now(), config_hash=digest, config=resolved,
        model=ModelPart(name=cfg.model.name),
        method=MethodPart(name=method.name, label=plan.label, label_params=plan.label_params, params=method.params(),
                          changed_params=method.changed_params(), simulated=bool(method.single_pass)),
        suite=suite_part(cfg.suite, plan.suite), env=EnvPart(**environment()), outputs=OutputsPart(dir=str(output_dir)))


def rejected_record(cfg: DictConfig, resolved: dict, digest: str, output_dir: Path, error: Exception,
                    method_config: str | None = None) -> RunRecord:
    """The ``failed`` record of a run that validation rejected: its config and the one-line reason. The method
    could not be built, so its label is its config's name and no parameter is known to differ."""
    method = resolved.get("method") or {}
    return RunRecord(
        run_id=_new_run_id(), created_at=_now(), status="failed", config_hash=digest, config=resolved,
        model=ModelPart(name=cfg.model.name),
        method=MethodPart(name=method.get("name"), label=method_config or method.get("name"),
                          params={k: v for k, v in method.items() if k != "name"}),
        suite=suite_part(cfg.suite), error=f"{type(error).__name__}: {error}", outputs=OutputsPart(dir=str(output_dir)))


def suite_part(suite: DictConfig, built=None) -> SuitePart:
    """The record's suite part; ``built`` (the validated suite) says per task whether the question was visible."""
    return SuitePart(name=suite.name, runner=suite.runner, tasks=list(suite.tasks), limit=suite.limit,
                     query_aware=bool(suite.get("query_aware", False)),
                     question_visible=built.question_visible() if built is not None else None)


def _new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
