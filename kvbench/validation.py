"""Everything about a run that can be checked without loading weights, checked before anything heavy.

:func:`validate` builds the method (its dataclass checks its own parameters), the suite (its ``validate``
reads task names, options and data files and returns the plan its ``run`` reuses), checks the model
source, lets the method check the model's config (not its weights), and names the method as the record and the
report will (a variant config's label needs only its config). Every failure is a
:class:`~kvbench.errors.KvbenchError` whose message names the value and the valid choices.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kvbench.compose import compose_config
from kvbench.config import WANDB_MODES, cache_root
from kvbench.engines import vllm_launcher as vllm_engine
from kvbench.engines.vllm_launcher import EngineUnavailableError
from kvbench.errors import ConfigError, KvbenchError, OfflineUnavailable
from kvbench.eval import distributed
from kvbench.methods import Method, build_method
from kvbench.models import JOB_DEVICES, check_model_source, load_config
from kvbench.suites import SUITES, Suite, build_suite
from kvbench.support import check_model_supported, check_supported

#: ``engine.backend`` values: kvbench's own protocol, or vLLM through its driver (:mod:`kvbench.engines`).
ENGINE_BACKENDS = ("hf", "vllm")


@dataclass
class RunPlan:
    """A validated run: the method object, the suite and the suite's plan, and the method's label in the record
    and the report (:func:`method_label`)."""

    method: Method
    suite: Suite
    suite_plan: Any
    label: str
    label_params: dict


def build_method_from(method_cfg) -> Method:
    """The method a ``method`` config node describes."""
    params = OmegaConf.to_container(method_cfg, resolve=True) if isinstance(method_cfg, DictConfig) else dict(method_cfg)
    return build_method(params.pop("name"), **params)


def method_label(method: Method, method_config: str | None) -> tuple[str, dict]:
    """``(label, params shown with it)``: a variant config (``h2o_local``) reports its own name and the
    parameters changed from *its* defaults (its config composed alone); otherwise the method's name and those
    changed from the method's."""
    if method_config and method_config != method.name:
        try:
            variant = build_method_from(compose_config([f"method={method_config}"]).method)
        except KvbenchError:
            variant = None
        if variant is not None and variant.name == method.name:
            return method_config, method.changed_params(variant)
    return method.name, method.changed_params()


def validate(cfg: DictConfig, unavailable: list[str] | None = None, method_config: str | None = None) -> RunPlan:
    """Check the whole run before the model loads; return what the run needs. ``method_config`` is the name of
    the method's config (``h2o_local``; Hydra's choice), for the label.

    With ``unavailable`` (a dry run), a check that needs the network while offline (a hub model's config, hub
    data: :class:`~kvbench.errors.OfflineUnavailable`) is appended there as a note instead of failing; the plan's
    ``suite_plan`` is then None."""
    if cfg.logger.mode not in WANDB_MODES:
        raise ConfigError(f"logger.mode={cfg.logger.mode!r} is not valid (choose one of: {', '.join(WANDB_MODES)})")
    if cfg.get("job_device") not in (None, *JOB_DEVICES):
        raise ConfigError(f"job_device={cfg.job_device!r} is not valid (choose one of: {', '.join(JOB_DEVICES)}, or null)")
    method = build_method_from(cfg.method)
    suite = build_suite(cfg.suite)
    if distributed.world_size() > 1 and not suite.supports_data_parallel:
        raise ConfigError(f"suite.runner={cfg.suite.runner} cannot be split over {distributed.world_size()} "
                          "data-parallel processes (lm_eval suites can); run it in one process, or spread a "
                          "sweep's jobs over devices with a launcher (README: Scaling out)")
    if suite.needs_cache and getattr(method, "single_pass", False):
        raise ConfigError(f"method={method.name} protocol=simulate is a masking simulation with no compressed cache, "
                          f"so suite.runner={cfg.suite.runner} has nothing to measure (set method.protocol=real)")
    if suite.compares_to_full and getattr(method, "changes_vocabulary", False):
        raise ConfigError(f"suite.runner={cfg.suite.runner} compares next-token distributions with full's over one "
                          f"vocabulary, and method={method.name} changes the tokenizer or vocabulary: use a task suite")
    check_engine_choice(cfg, method, suite, unavailable)
    check_method_on_model(method, cfg.model, unavailable)
    suite_plan = _checked(lambda: suite.validate(cfg.model), unavailable)
    if (cfg.get("engine") or {}).get("backend", "hf") != "hf":  # the engine's row: its config's name (vllm_fp8)
        return RunPlan(method, suite, suite_plan, cfg.engine.name, {})
    return RunPlan(method, suite, suite_plan, *method_label(method, method_config))


def check_method_on_model(method: Method, model_cfg: DictConfig, unavailable: list[str] | None = None):
    """Everything a method and a model must agree on before the weights load, on every entry point (``kvbench``,
    its dry run, ``lm_eval --model kvbench``): the model's source exists, the method supports the model config's
    family, and -- from the model's config alone -- its architecture and shapes. Returns that config (None when a
    dry run could not fetch it offline; noted in ``unavailable``)."""
    check_model_source(model_cfg)
    check_supported(method, model_cfg.get("family"))  # the model config's family: checked offline too
    config = _checked(lambda: load_config(model_cfg), unavailable)
    if config is not None:
        check_model_supported(method, config)
        method.check_model(config)
    return config


def check_engine_choice(cfg: DictConfig, method: Method, suite: Suite, unavailable: list[str] | None) -> None:
    """``engine``: a known backend, one the suite runs through, serving the uncompressed model (its only
    compression is its own ``kv_cache_dtype``), and its environment present (a dry run notes a missing one)."""
    engine = cfg.get("engine")
    if engine is None or engine.backend == "hf":
        return
    if engine.backend not in ENGINE_BACKENDS:
        raise ConfigError(f"engine.backend={engine.backend!r} is not one of {', '.join(ENGINE_BACKENDS)}")
    if engine.backend not in suite.engines:
        runners = sorted(runner for runner, cls in SUITES.items() if engine.backend in cls.engines)
        raise ConfigError(f"engine={engine.name} runs the suites with runner {', '.join(runners)} here, not suite.runner="
                          f"{cfg.suite.runner} (use engine=hf, the default)")
    if method.name != "full":
        raise ConfigError(f"engine={engine.name} serves the uncompressed model, so method={method.name} cannot run "
                          "through it: use method=full (the engine's own compression is engine.kv_cache_dtype)")
    try:
        vllm_engine.check_engine(engine)
    except EngineUnavailableError as error:
        if unavailable is None:
            raise
        unavailable.append(str(error))


def _checked(check, unavailable: list[str] | None):
    try:
        return check()
    except OfflineUnavailable as error:
        if unavailable is None:
            raise
        unavailable.append(str(error))
        return None


def check_writable(path, what: str) -> None:
    """``path`` (a directory, created later if missing) can be written; else one line naming it.

    Nothing is created: the nearest existing ancestor must be a directory that takes a file."""
    target = Path(path).expanduser()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what}={str(path)!r} is not writable: {existing} is a file, not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".kvbench-write-check-"):
            pass
    except OSError as error:
        raise ConfigError(f"{what}={str(path)!r} is not writable ({error.strerror or type(error).__name__} in "
                          f"{existing}); choose a directory you can write to") from None


def check_destinations(cfg: DictConfig, output_dir) -> None:
    """Every place the run writes to, checked before anything is computed."""
    check_writable(output_dir, "the run dir (hydra.run.dir)")
    check_writable(cfg.records_dir, "records_dir")
    check_writable(cfg.reports_dir, "reports_dir")
    check_writable(cache_root(), "the cache dir (KVBENCH_CACHE_DIR)")
