"""One kvbench run: validate → record → logger → model + method → suite → record (ARCHITECTURE.md).

Everything that needs no weights is checked first (:mod:`kvbench.validation`). The record is written
before anything else starts, rewritten atomically after every task (a failure later loses nothing already
computed), and a complete record for the same resolved config is reused unless ``force``.
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
from kvbench.eval.component_ratios import component_ratios
from kvbench.eval.protocol import CompressionProtocol
from kvbench.models import describe_model, load_base_model, private_copy
from kvbench.results import RECORD_NAME, RunRecord, config_hash, find_complete_record, read_record, write_record
from kvbench.suites import RunContext
from kvbench.tracking import Tracker
from kvbench.validation import RunPlan, validate

log = logging.getLogger(__name__)


def run(cfg: DictConfig, output_dir: str | os.PathLike, reuse_loaded: bool = False) -> RunRecord:
    """Run one configuration and return its record (also written to ``output_dir/record.json``).

    ``reuse_loaded`` keeps the base model in memory for the next job of a sweep."""
    output_dir = Path(output_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    digest = config_hash(resolved)
    if not cfg.force and (existing := find_complete_record(cfg.records_dir, digest)):
        record = read_record(existing)
        write_record(output_dir / RECORD_NAME, record)
        log.info("skipping: a complete record for this config exists (%s); use force=true to re-run", existing)
        return record

    started = time.perf_counter()
    plan = validate(cfg)
    record = new_record(cfg, resolved, digest, plan, output_dir)
    stored = Path(cfg.records_dir) / f"{digest}.json"

    def save() -> None:
        write_record(output_dir / RECORD_NAME, record)
        write_record(stored, record)

    save()
    tracker = Tracker(cfg.logger, resolved, run_name=f"{cfg.model.name}-{plan.method.name}", run_id=record.run_id)
    record.outputs["wandb_dir"] = tracker.run_dir
    exit_code = 0
    try:
        t0 = time.perf_counter()
        model, tokenizer, reference_config = load_and_apply(cfg, plan.method, reuse_loaded)
        record.timing["load_apply_s"] = time.perf_counter() - t0
        record.model = describe_model(cfg.model.name, model, reference_config)
        protocol = CompressionProtocol(model, plan.method, reference_config)
        context = RunContext(protocol, tokenizer, cfg.model, output_dir, cfg.seed)
        t0 = time.perf_counter()
        for result in plan.suite.run(plan.suite_plan, context):
            record.add_task(result.task, result.metrics, result.primary, result.higher_is_better, result.stderr,
                            result.n)
            tracker.log_task(result.task, result.metrics)
            save()
        record.timing["eval_s"] = time.perf_counter() - t0
        record.kv = protocol.stats.kv_summary()
        if (components := component_ratios(protocol)) is not None:
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
    return record


def load_and_apply(cfg: DictConfig, method, reuse_loaded: bool = False):
    """``(model after the method, tokenizer, the model's config before it)``; a kept model is never modified."""
    model, tokenizer = load_base_model(cfg.model, keep_loaded=reuse_loaded)
    reference_config = copy.deepcopy(model.config)
    if method.changes_model and reuse_loaded:
        model = private_copy(model)
    return method.apply(model, tokenizer), tokenizer, reference_config


def new_record(cfg: DictConfig, resolved: dict, digest: str, plan: RunPlan, output_dir: Path) -> RunRecord:
    method, suite = plan.method, cfg.suite
    return RunRecord(
        run_id=uuid.uuid4().hex[:12],
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        config_hash=digest, config=resolved, model={"name": cfg.model.name},
        method={"name": method.name, "params": method.params(), "changed_params": method.changed_params()},
        suite={"name": suite.name, "runner": suite.runner, "tasks": list(suite.tasks), "limit": suite.limit,
               "query_aware": bool(suite.get("query_aware", False))},
        env=environment(), outputs={"dir": str(output_dir)},
    )
