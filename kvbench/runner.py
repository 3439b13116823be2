"""One kvbench run: validate → load model → apply method → evaluate suite → record → W&B.

Validation (:func:`validate`) runs before anything heavy is loaded and raises
:class:`KvbenchConfigError` subclasses whose message names the bad value and the valid
choices. A completed record for the same resolved config is reused unless ``force``.
Each task's metrics are written to the record as soon as the task finishes, so a
failure later in the run loses nothing already computed.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import os
import time
import uuid
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kvbench.config import SUITE_RUNNERS, WANDB_MODES
from kvbench.corpus import CorpusError
from kvbench.environment import environment
from kvbench.methods import MethodConfigError, build_method
from kvbench.models import ModelLoadError, check_model_source, load_config, load_model
from kvbench.results import RECORD_NAME, config_hash, find_complete_record, read_record, write_record

log = logging.getLogger(__name__)
TASKS_DIR = Path(__file__).parent / "eval" / "tasks"
# conf/ sits at the repository root (editable install, the documented setup).
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
#: Errors a user can fix by changing the config; the CLI prints them as one line.
USER_ERRORS = (MethodConfigError, ModelLoadError, CorpusError)


class SuiteConfigError(ValueError):
    """A suite setting is invalid; the message names the value and the valid choices."""


USER_ERRORS = USER_ERRORS + (SuiteConfigError,)


def _suite_errors() -> tuple:
    from kvbench.eval.longbench import LongBenchError
    from kvbench.eval.protocol import CacheNotWrittenError
    from kvbench.eval.synthetic import SyntheticError

    return (LongBenchError, SyntheticError, CacheNotWrittenError)


USER_ERRORS = USER_ERRORS + _suite_errors()

# Base models loaded in this process, reused across the jobs of a multirun sweep.
_LOADED: dict[str, tuple] = {}


# -- validation -----------------------------------------------------------------------------
def local_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def validate(cfg: DictConfig):
    """Check everything that can be checked without loading weights; return the method object."""
    suite = cfg.suite
    if suite.runner not in SUITE_RUNNERS:
        raise SuiteConfigError(f"suite.runner={suite.runner!r} is not valid (choose one of: {', '.join(SUITE_RUNNERS)})")
    if suite.limit is not None and suite.limit <= 0:
        raise SuiteConfigError(f"suite.limit={suite.limit} must be a positive number of examples per task (or null for all)")
    if suite.stream_chunk <= 0:
        raise SuiteConfigError(f"suite.stream_chunk={suite.stream_chunk} must be a positive number of tokens")
    if not suite.tasks:
        raise SuiteConfigError(f"suite={suite.name} lists no tasks")
    if cfg.logger.mode not in WANDB_MODES:
        raise SuiteConfigError(f"logger.mode={cfg.logger.mode!r} is not valid (choose one of: {', '.join(WANDB_MODES)})")
    if suite.runner == "lm_eval":
        _validate_lm_eval_tasks(list(suite.tasks))
    else:
        _suite_module(suite.runner).validate_suite(suite, cfg.model)
    method_cfg = OmegaConf.to_container(cfg.method, resolve=True)
    method = build_method(method_cfg.pop("name"), **method_cfg)
    check_model_source(cfg.model)
    method.check_model(load_config(cfg.model))
    return method


def _validate_lm_eval_tasks(tasks: list[str]) -> None:
    unknown = [t for t in tasks if t not in local_tasks()]
    if not unknown:
        return
    from lm_eval.tasks import TaskManager

    known = set(TaskManager(include_path=str(TASKS_DIR)).all_tasks)
    missing = [t for t in unknown if t not in known]
    if missing:
        raise SuiteConfigError(
            f"unknown task(s) {', '.join(missing)}: kvbench's offline tasks are {', '.join(local_tasks())}; "
            "any lm-eval task name also works (see `lm_eval ls tasks`)")


def _suite_module(runner: str):
    if runner == "longbench":
        from kvbench.eval import longbench

        return longbench
    from kvbench.eval import synthetic

    return synthetic


# -- model + method -------------------------------------------------------------------------
def prepare_model(cfg_or_overrides, reuse_loaded: bool = False, method=None):
    """``(model, tokenizer, method, reference_config, cfg)`` ready to evaluate.

    Accepts a composed config or a list of Hydra overrides (the lm-eval CLI path).
    ``reuse_loaded`` keeps the base model in memory for later jobs of a sweep; methods that
    change the model then work on a private copy.
    """
    cfg = cfg_or_overrides if isinstance(cfg_or_overrides, DictConfig) else compose_config(cfg_or_overrides)
    method = method if method is not None else validate(cfg)
    key = json.dumps(OmegaConf.to_container(cfg.model, resolve=True), sort_keys=True)
    if reuse_loaded and key in _LOADED:
        model, tokenizer = _LOADED[key]
    else:
        model, tokenizer = load_model(cfg.model)
        if reuse_loaded:
            _LOADED.clear()
            _LOADED[key] = (model, tokenizer)
    reference_config = copy.deepcopy(model.config)
    if _changes_model(method) and reuse_loaded:
        model = copy.deepcopy(model)
    model = method.apply(model, tokenizer)
    return model, tokenizer, method, reference_config, cfg


def _changes_model(method) -> bool:
    from kvbench.methods.base import Method

    return type(method).apply is not Method.apply


def compose_config(overrides: list[str]) -> DictConfig:
    """Compose kvbench's config outside a Hydra app (lm-eval CLI, tests)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from kvbench.config import register_configs

    register_configs()
    if GlobalHydra.instance().is_initialized():
        return compose("config", overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


# -- one run --------------------------------------------------------------------------------
def run(cfg: DictConfig, output_dir: str | os.PathLike, reuse_loaded: bool = False) -> dict:
    """Run one configuration and return its record (also written to ``output_dir/record.json``)."""
    output_dir = Path(output_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    digest = config_hash(resolved)
    stored = Path(cfg.records_dir) / f"{digest}.json"
    if not cfg.force and (existing := find_complete_record(cfg.records_dir, digest)):
        record = read_record(existing)
        write_record(output_dir / RECORD_NAME, record)
        log.info("skipping: a complete record for this config exists (%s); use force=true to re-run", existing)
        return record

    started = time.perf_counter()
    method = validate(cfg)
    record = _new_record(cfg, resolved, digest, method, output_dir)
    from kvbench.tracking import Tracker

    tracker = Tracker(cfg.logger, resolved, run_name=f"{cfg.model.name}-{method.name}", run_id=record["run_id"])
    record["outputs"]["wandb_dir"] = tracker.run_dir
    exit_code = 0
    try:
        t0 = time.perf_counter()
        model, tokenizer, method, reference_config, _ = prepare_model(cfg, reuse_loaded, method)
        record["timing"]["load_apply_s"] = time.perf_counter() - t0
        record["model"] = describe_model(cfg.model.name, model, reference_config)
        t0 = time.perf_counter()
        protocol = _evaluate(cfg, model, tokenizer, method, reference_config, record, output_dir, tracker,
                             checkpoint=lambda: _save(record, output_dir, stored))
        record["timing"]["eval_s"] = time.perf_counter() - t0
        summary = protocol.stats.summary()
        record["kv"] = {k: summary[k] for k in ("full_bytes", "stored_bytes", "ratio", "peak_stored_bytes", "peak_full_bytes")}
        if hasattr(method, "component_ratios") and protocol.longest_context:
            # combined: each component's ratio measured alone on the run's longest context, and their product
            record["kv"]["components"] = method.component_ratios(model, protocol.longest_context, reference_config)
        record["timing"].update({k: summary[k] for k in ("prefill_tok_s", "decode_tok_s", "decode_ms_per_token")})
        record["status"] = "complete"
    except BaseException as error:  # record what failed, keep what was computed, then re-raise
        record["status"] = "failed"
        record["error"] = f"{type(error).__name__}: {error}"
        exit_code = 1
        raise
    finally:
        record["timing"]["wall_s"] = time.perf_counter() - started
        _save(record, output_dir, stored)
        tracker.finish(record, exit_code=exit_code)
    return record


def _evaluate(cfg, model, tokenizer, method, reference_config, record, output_dir, tracker, checkpoint):
    from kvbench.eval.protocol import CompressionProtocol

    suite = cfg.suite
    if suite.runner == "lm_eval":
        from kvbench.eval.harness import evaluate_tasks
        from kvbench.eval.lm import KvbenchLM

        lm = KvbenchLM(model=model, tokenizer=tokenizer, method_obj=method, reference_config=reference_config,
                       max_length=cfg.model.max_length, stream_chunk=suite.stream_chunk)
        for task, metrics, primary in evaluate_tasks(lm, suite, cfg.seed, output_dir):
            _add_task(record, tracker, task, metrics, primary)
            checkpoint()
        return lm.protocol
    protocol = CompressionProtocol(model, method, reference_config)
    module = _suite_module(suite.runner)
    results = module.run_suite(protocol, tokenizer, cfg.model, suite, str(output_dir))
    for task, metrics in results.items():
        name = next(iter(metrics))
        _add_task(record, tracker, task, metrics, {"name": name, "higher_is_better": True})
    checkpoint()
    return protocol


def _add_task(record, tracker, task, metrics, primary):
    record["metrics"][task] = metrics
    record["primary_metrics"][task] = primary
    tracker.log_task(task, metrics)


def _save(record: dict, output_dir: Path, stored: Path) -> None:
    write_record(output_dir / RECORD_NAME, record)
    write_record(stored, record)


def _new_record(cfg, resolved, digest, method, output_dir) -> dict:
    return {
        "run_id": uuid.uuid4().hex[:12],
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "status": "running",
        "config_hash": digest,
        "config": resolved,
        "model": {"name": cfg.model.name},
        "method": {"name": method.name, "params": method.params(), "changed_params": method.changed_params()},
        "suite": {"name": cfg.suite.name, "tasks": list(cfg.suite.tasks), "limit": cfg.suite.limit},
        "metrics": {},
        "primary_metrics": {},
        "kv": {},
        "timing": {},
        "env": environment(),
        "error": None,
        "outputs": {"dir": str(output_dir)},
    }


def describe_model(name: str, model, reference_config) -> dict:
    text = reference_config.get_text_config() if hasattr(reference_config, "get_text_config") else reference_config
    n_heads = text.num_attention_heads
    return {
        "name": name,
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_layers": text.num_hidden_layers,
        "n_heads": n_heads,
        "n_kv_heads": getattr(text, "num_key_value_heads", None) or n_heads,
        "kv_heads_after_method": getattr(model.config.get_text_config(), "num_key_value_heads", None),
        "head_dim": getattr(text, "head_dim", None) or text.hidden_size // n_heads,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }
