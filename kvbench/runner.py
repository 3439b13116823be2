"""One kvbench run: validate → record → logger → model + method → suite → record (ARCHITECTURE.md).

Everything that needs no weights is checked first (:mod:`kvbench.validation`), the places the run writes
to included; a run rejected there still leaves a ``failed`` record saying why. The record is written
before the logger starts, rewritten atomically after every task (a failure later loses nothing already
computed; a failed write falls back, see :class:`~kvbench.results.RecordStore`), and a complete record
for the same resolved config is reused unless ``force``.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import os
import time
import uuid
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kvbench.environment import environment
from kvbench.eval import distributed
from kvbench.eval.component_ratios import component_ratios
from kvbench.eval.protocol import CompressionProtocol
from kvbench.models import describe_model, load_base_model, placed, private_copy
from kvbench.errors import KvbenchError
from kvbench.results import (RECORD_NAME, RecordStore, RunRecord, config_hash, find_complete_record, read_record,
                             stored_record_path, write_record)
from kvbench.suites import RunContext
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
        plan = validate(cfg)
    except KvbenchError as error:  # rejected before anything ran: the record says why (a sweep's table shows it)
        digest = config_hash(resolved)
        record_store(cfg, output_dir, digest, main).save(rejected_record(cfg, resolved, digest, output_dir, error))
        raise
    resolved["method"] = {"name": plan.method.name, **plan.method.params()}
    digest = config_hash(resolved)
    if not cfg.force and (existing := find_complete_record(cfg.records_dir, digest)):
        record = read_record(existing)
        if main:
            write_record(output_dir / RECORD_NAME, record)
        log.info("skipping: a complete record for this config exists (%s); use force=true to re-run", existing)
        return record
    store = record_store(cfg, output_dir, digest, main)
    record = new_record(cfg, resolved, digest, plan, output_dir, method_config)

    def save() -> None:
        store.save(record)

    save()
    tracker = Tracker(cfg.logger if main else OmegaConf.create({"mode": "disabled"}), resolved,
                      run_name=f"{cfg.model.name}-{plan.method.name}", run_id=record.run_id, group=sweep_id,
                      job_type=plan.method.name)
    record.outputs.update(wandb=tracker.status, wandb_dir=tracker.run_dir)
    exit_code = 0
    try:
        t0 = time.perf_counter()
        model, tokenizer, reference_config = load_and_apply(cfg, plan.method, reuse_loaded, job_num)
        record.timing["load_apply_s"] = time.perf_counter() - t0
        record.model = describe_model(cfg.model.name, model, reference_config)
        protocol = CompressionProtocol(model, plan.method, reference_config)
        context = RunContext(protocol, tokenizer, cfg.model, output_dir, cfg.seed)
        t0 = time.perf_counter()
        record.efficiency = context.efficiency  # filled in place by the efficiency suite, saved with every task
        for result in plan.suite.run(plan.suite_plan, context):
            record.add_task(result.task, result.metrics, result.primary, result.higher_is_better, result.stderr,
                            result.n, result.interval)
            tracker.log_task(result.task, result.metrics, result.samples)
            save()
        if record.efficiency.get("points"):
            tracker.log_efficiency(record.efficiency["points"])
        record.timing["eval_s"] = time.perf_counter() - t0
        protocol.stats = distributed.combined_stats(protocol.stats)
        record.kv = protocol.stats.kv_summary()
        if main and (components := component_ratios(protocol)) is not None:
            record.kv["components"] = components
        record.timing.update(protocol.stats.speed_summary())
        record.status = "complete"
    except BaseException as error:  # record what failed, keep what was computed, then re-raise
        record.status = "failed"
        record.error = f"{type(error).__name__}: {error}"
        exit_code = 1
        raise
    finally:
        record.timing["wall_s"] = time.perf_counter() - started
        save()
        tracker.finish(record, exit_code=exit_code)
        if record.outputs.get("wandb") != tracker.status:  # logging or finishing W&B failed: say so
            record.outputs["wandb"] = tracker.status
            save()
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


def rejected_record(cfg: DictConfig, resolved: dict, digest: str, output_dir: Path, error: Exception) -> RunRecord:
    """The ``failed`` record of a run that validation rejected: its config and the one-line reason."""
    method = resolved.get("method") or {}
    return RunRecord(
        run_id=uuid.uuid4().hex[:12], created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        status="failed", config_hash=digest, config=resolved, model={"name": cfg.model.name},
        method={"name": method.get("name"), "params": {k: v for k, v in method.items() if k != "name"},
                "changed_params": {}},
        suite={"name": cfg.suite.name, "runner": cfg.suite.runner, "tasks": list(cfg.suite.tasks), "limit": cfg.suite.limit},
        error=f"{type(error).__name__}: {error}", outputs={"dir": str(output_dir)},
    )


def method_label(method, method_config: str | None) -> tuple[str, dict]:
    """``(label, params shown with it)``: a variant config (``h2o_local``) reports its own name and the
    parameters changed from *its* defaults; otherwise the method's name and those changed from the method's."""
    if method_config and method_config != method.name:
        from kvbench.compose import compose_config
        from kvbench.validation import build_method_from

        try:
            variant = build_method_from(compose_config([f"method={method_config}"]).method)
        except KvbenchError:
            variant = None
        if variant is not None and variant.name == method.name:
            return method_config, method.changed_params(variant)
    return method.name, method.changed_params()


def dry_run(cfg: DictConfig, method_config: str | None = None) -> str:
    """``dry_run=true``: every check :func:`validate` makes (no weights loaded, nothing run) and one line saying
    what the job would run; checks that need the network while offline are named as not checked."""
    from kvbench.results import short_params

    unavailable: list[str] = []
    plan = validate(cfg, unavailable)
    method, suite = plan.method, cfg.suite
    label, changed = method_label(method, method_config)
    params = short_params(changed)
    shots = dict(suite.get("num_fewshot_per_task") or {})
    fewshot = (f" num_fewshot={suite.get('num_fewshot')}" if suite.get("num_fewshot") is not None else "") + (
        " " + " ".join(f"num_fewshot[{k}]={v}" for k, v in shots.items()) if shots else "")
    line = (f"model={cfg.model.name} method={label}{' ' + params if params else ''}"
            f"{' (simulated)' if method.single_pass else ''} suite={suite.name} tasks=[{', '.join(suite.tasks)}]"
            f"{fewshot} limit={suite.limit}{' query_aware' if suite.get('query_aware') else ''}")
    if unavailable:
        return f"{line}: ok, except not checked offline: " + "; ".join(unavailable)
    return f"{line}: ok"


def new_record(cfg: DictConfig, resolved: dict, digest: str, plan: RunPlan, output_dir: Path,
               method_config: str | None = None) -> RunRecord:
    method, suite = plan.method, cfg.suite
    label, label_params = method_label(method, method_config)
    return RunRecord(
        run_id=uuid.uuid4().hex[:12],
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        config_hash=digest, config=resolved, model={"name": cfg.model.name},
        method={"name": method.name, "label": label, "label_params": label_params, "params": method.params(),
                "changed_params": method.changed_params(), **({"simulated": True} if method.single_pass else {})},
        suite={"name": suite.name, "runner": suite.runner, "tasks": list(suite.tasks), "limit": suite.limit,
               "query_aware": bool(suite.get("query_aware", False))},
        env=environment(), outputs={"dir": str(output_dir)},
    )
