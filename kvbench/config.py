"""Structured configs (Hydra schemas) and validation that runs before any model is loaded.

Every config group has a dataclass schema registered in Hydra's ConfigStore under
``schema/<group>/<name>``; each YAML in ``conf/<group>/`` starts with
``defaults: [/schema/<group>/<name>@_here_, _self_]`` so a typo or a wrong type fails
when the config is composed. Method schemas are the method dataclasses themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore

from kvbench.methods import METHODS
from kvbench.models import ModelConfig


@dataclass
class SuiteConfig:
    """Hydra schema of ``conf/suite/*.yaml``: which tasks to run, and how many examples."""

    name: str = "quick"
    #: Who runs the tasks: ``lm_eval`` (lm-eval tasks), ``longbench`` or ``ruler`` (kvbench's own protocols).
    runner: str = "lm_eval"
    #: lm-eval task names: kvbench's offline tasks (``kvbench_*``) or any task lm-eval knows.
    tasks: List[str] = field(default_factory=list)
    #: Examples per task (None = all). Must be positive.
    limit: Optional[int] = None
    num_fewshot: Optional[int] = None
    #: Generation cap for generate_until tasks (None = the task's own).
    max_gen_toks: Optional[int] = None
    #: Tokens per chunk when streaming text for perplexity (loglikelihood_rolling); 1 = exact decoding.
    stream_chunk: int = 512
    #: Extra suite-specific settings (e.g. LongBench ``data_dir``, RULER lengths).
    options: dict = field(default_factory=dict)


@dataclass
class LoggerConfig:
    """Hydra schema of ``conf/logger/*.yaml``: Weights & Biases mode."""

    name: str = "wandb_offline"
    #: ``offline`` (default, no account needed), ``online``, or ``disabled``.
    mode: str = "offline"
    project: str = "kvbench"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    #: Local directory W&B writes to (offline runs can be synced later with ``wandb sync``).
    dir: str = "outputs"


WANDB_MODES = ("offline", "online", "disabled")
SUITE_RUNNERS = ("lm_eval", "longbench", "ruler")


@dataclass
class RunConfig:
    """The root config (``conf/config.yaml``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    method: Any = None
    suite: SuiteConfig = field(default_factory=SuiteConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0
    #: Re-run a job even if a complete record with the same resolved config exists.
    force: bool = False
    #: Where every run's record is also stored as ``<config_hash>.json`` (used to skip finished jobs).
    records_dir: str = "outputs/records"
    #: Where roll-up tables and plots go, and the name of a sweep's table.
    reports_dir: str = "reports"
    report_name: Optional[str] = None


def suite_options(suite_cfg, schema, error: type[Exception], what: str) -> dict:
    """``suite.options`` as a plain dict, after rejecting keys the ``schema`` dataclass does not have."""
    import dataclasses

    raw = dict(getattr(suite_cfg, "options", None) or {})
    valid = [f.name for f in dataclasses.fields(schema)]
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise error(f"suite.options has unknown key(s) {', '.join(unknown)} for {what} (valid: {', '.join(valid)})")
    return raw


def register_configs() -> None:
    """Put every schema into Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=RunConfig)
    cs.store(group="schema/model", name="model", node=ModelConfig)
    cs.store(group="schema/suite", name="suite", node=SuiteConfig)
    cs.store(group="schema/logger", name="logger", node=LoggerConfig)
    for name, cls in METHODS.items():
        cs.store(group="schema/method", name=name, node=cls)


def method_params(method_cfg: Any) -> dict:
    """A method config node as plain ``(name, params)``."""
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(method_cfg, resolve=True) if not isinstance(method_cfg, dict) else dict(method_cfg)
    name = container.pop("name")
    return name, container
