"""Hydra composition: every schema in Hydra's ConfigStore, and composing a config outside a Hydra app.

Schemas: ``config_schema`` (the root :class:`~kvbench.config.RunConfig`), ``schema/model/model``,
``schema/logger/logger``, ``schema/method/<name>`` for every registered method (the method dataclass)
and ``schema/suite/<runner>`` for every registered suite (its ``Config``). A YAML names its schema in
its defaults list, so registering a method or a suite is all it takes to make its YAML composable.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from kvbench.config import CONF_DIR, LoggerConfig, ModelConfig, RunConfig
from kvbench.methods import METHODS
from kvbench.suites import SUITES


def register_configs() -> None:
    """Put every schema into Hydra's ConfigStore (idempotent; picks up methods and suites registered later)."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=RunConfig)
    cs.store(group="schema/model", name="model", node=ModelConfig)
    cs.store(group="schema/logger", name="logger", node=LoggerConfig)
    for name, cls in METHODS.items():
        cs.store(group="schema/method", name=name, node=cls)
    for runner, suite in SUITES.items():
        cs.store(group="schema/suite", name=runner, node=suite.Config)


def compose_config(overrides: list[str]) -> DictConfig:
    """Compose kvbench's config from Hydra overrides outside a Hydra app (lm-eval's CLI, tests, scripts)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    if GlobalHydra.instance().is_initialized():
        return compose("config", overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))
