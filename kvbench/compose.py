"""Hydra composition: every schema in Hydra's ConfigStore, and composing a config outside a Hydra app.

Schemas: ``config_schema`` (the root :class:`~kvbench.config.RunConfig`), ``schema/model/model``,
``schema/logger/logger``, ``schema/engine/engine``, ``schema/method/<name>`` for every registered method (the method dataclass)
and ``schema/suite/<runner>`` for every registered suite (its ``Config``). A YAML names its schema in
its defaults list, so registering a method or a suite is all it takes to make its YAML composable.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

from kvbench.config import CONF_DIR, EngineConfig, LoggerConfig, ModelConfig, RunConfig
from kvbench.errors import ConfigError
from kvbench.methods import METHODS
from kvbench.cache.decode_budget import PARAMETERS as DECODE_PARAMETERS
from kvbench.methods.base import methods_with, no_decode_budget, renamed_parameter
from kvbench.suites import SUITES


def register_configs() -> None:
    """Put every schema into Hydra's ConfigStore (idempotent; picks up methods and suites registered later)."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=RunConfig)
    cs.store(group="schema/model", name="model", node=ModelConfig)
    cs.store(group="schema/logger", name="logger", node=LoggerConfig)
    cs.store(group="schema/engine", name="engine", node=EngineConfig)
    for name, cls in METHODS.items():
        cs.store(group="schema/method", name=name, node=cls)
    for runner, suite in SUITES.items():
        cs.store(group="schema/suite", name=runner, node=suite.Config)


def compose_config(overrides: list[str], explain_errors: bool = True, with_hydra: bool = False) -> DictConfig:
    """Compose kvbench's config from Hydra overrides outside a Hydra app (lm-eval's CLI, tests, scripts).

    A composition error (unknown option, typo, wrong type) raises :class:`~kvbench.errors.ConfigError`
    with one line naming the value and the valid choices (Hydra's own error is its ``__cause__``)."""
    register_configs()
    try:
        with hydra_initialized():
            return compose("config", overrides=list(overrides), return_hydra_config=with_hydra)
    except HydraException as error:
        if not explain_errors:
            raise
        raise ConfigError(explain(error, list(overrides))) from error


@contextmanager
def hydra_initialized() -> Iterator[GlobalHydra]:
    """Hydra initialised on kvbench's configs: the running app's (or a test's), else for this block only."""
    if GlobalHydra.instance().is_initialized():
        yield GlobalHydra.instance()
        return
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield GlobalHydra.instance()


def overrides_parser() -> OverridesParser:
    """Hydra's override parser, able to expand ``glob(...)`` over a config group's options (call it within
    :func:`hydra_initialized`)."""
    return OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """Every job a sweep describes, each as its list of overrides: the product of the swept keys, as Hydra's basic
    sweeper expands them (``key=a,b``, ``range(...)``, ``glob(...)`` over a config group's options)."""
    register_configs()
    with hydra_initialized():
        parsed = overrides_parser().parse_overrides(list(overrides))
        choices = [[f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()] if o.is_sweep_override()
                   else [o.input_line] for o in parsed]
    return [list(job) for job in itertools.product(*choices)]


def experiment_jobs(experiment: str) -> list[list[str]]:
    """The overrides of every job ``experiment=<experiment>`` runs: its ``hydra.sweeper.params`` expanded (one
    empty job when it sweeps nothing)."""
    params = OmegaConf.select(compose_config([f"experiment={experiment}"], with_hydra=True), "hydra.sweeper.params")
    return sweep_jobs([f"{key}={value}" for key, value in (params or {}).items()])


# -- one line for every composition error ----------------------------------------------------------------
def check_overrides(overrides: list[str]) -> None:
    """Compose every job the overrides describe (sweeps expanded one key at a time) and raise
    :class:`~kvbench.errors.ConfigError` with one line for the first that Hydra rejects. Hydra's own
    overrides (``hydra/launcher=...``, ``hydra.launcher.n_jobs=...``) are checked with the first job."""
    register_configs()
    with hydra_initialized():
        parser = overrides_parser()
        parsed = []
        for text in overrides:
            try:
                (override,) = parser.parse_overrides([text])
            except OverrideParseException as error:
                raise ConfigError(f"cannot parse the override {text!r}: {str(error).splitlines()[0]} "
                                  "(Hydra override syntax: key=value, +key=value, key=a,b for a sweep)") from None
            parsed.append(override)
        swept = [list(o.sweep_string_iterator()) if o.is_sweep_override() else [] for o in parsed]
        base = [f"{o.get_key_element()}={values[0]}" if values else o.input_line for o, values in zip(parsed, swept)]
        check_launcher(compose_config(base, with_hydra=True).hydra.launcher)
        for i, (override, values) in enumerate(zip(parsed, swept)):
            for value in values[1:]:
                compose_config([*base[:i], f"{override.get_key_element()}={value}", *base[i + 1:]])


def check_launcher(launcher) -> None:
    """Parallelism settings of Hydra's launchers must be positive (joblib reads n_jobs <= 0 as 'all but ...')."""
    for key, what in (("n_jobs", "parallel workers"), ("array_parallelism", "jobs running at once")):
        value = launcher.get(key) if hasattr(launcher, "get") else None
        if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
            raise ConfigError(f"hydra.launcher.{key}={value} must be a positive number of {what}")


def explain(error: Exception, overrides: list[str]) -> str:
    """Hydra's multi-line composition error as kvbench's one line: the bad value and the valid choices."""
    text = str(error)
    missing = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if isinstance(error, MissingConfigException) and missing:
        group, name = missing.groups()
        options = [line.strip() for line in text.split("Config search path:")[0].splitlines() if line.startswith("\t")]
        return f"{group}={name} is not a kvbench {group} config (choose one of: {', '.join(options)})"
    override = re.search(r"Could not override '([^']+)'", text)
    if override:
        key = override.group(1)
        parent, _, leaf = key.rpartition(".")
        keys, name = _keys_at(parent, [o for o in overrides if not o.lstrip("+~").startswith(key + "=")])
        where = f"{parent}={name}" if parent in ("method", "model", "suite", "logger") and name else parent or "the config"
        if parent == "method" and renamed_parameter(name, leaf):
            return renamed_parameter(name, leaf)
        if parent == "method" and leaf == "protocol":
            return (f"{key}: {where} has no masking simulation (protocol=simulate exists for: "
                    f"{', '.join(methods_with('protocol'))}; {name or 'this method'} runs real compression only)")
        if parent == "method" and leaf in DECODE_PARAMETERS and name in METHODS.discover():
            return f"{key}: {no_decode_budget(name, leaf)}"
        return f"{key}: {where} has no setting {leaf!r} (valid: {', '.join(k for k in keys if k != 'name') or 'none'})"
    merging = re.search(r"Error merging override (\S+)", text)
    if merging and error.__cause__ is not None:
        reason = str(error.__cause__).splitlines()[0]
        return f"{merging.group(1)}: {reason}"
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(
        ("full_key", "object_type", "reference_type", "Config search path", "provider=", "See https"))]
    return "; ".join(lines) or type(error).__name__


def _keys_at(path: str, overrides: list[str]) -> tuple[list[str], str | None]:
    """The keys of the config node at ``path`` (and its config's ``name``), composed without the bad override."""
    try:
        node = compose_config(overrides, explain_errors=False)
        node = OmegaConf.select(node, path) if path else node
    except Exception:
        return [], None
    if node is None or not OmegaConf.is_dict(node):
        return [], None
    return sorted(str(k) for k in node.keys()), node.get("name") if "name" in node else None
