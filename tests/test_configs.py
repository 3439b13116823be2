"""Every YAML in kvbench/conf composes against its schema, and what it describes can be built."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from kvbench.compose import compose_config
from kvbench.config import CONF_DIR
from kvbench.methods import METHODS
from kvbench.suites import SUITES, build_suite
from kvbench.validation import build_method_from


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("name", _options("model"))
def test_every_model_config_composes(name):
    cfg = compose_config([f"model={name}"])
    assert cfg.model.name == name and cfg.model.pretrained and cfg.model.max_length > 0


@pytest.mark.parametrize("name", _options("method"))
def test_every_method_config_composes_into_a_registered_method(name):
    method = build_method_from(compose_config([f"method={name}"]).method)
    assert method.name in METHODS


@pytest.mark.parametrize("name", _options("suite"))
def test_every_suite_config_composes_into_a_registered_suite(name):
    cfg = compose_config([f"suite={name}"]).suite
    assert cfg.name == name and cfg.runner in SUITES
    assert type(build_suite(cfg)).Config is OmegaConf.get_type(cfg)  # typed by its own suite's schema


@pytest.mark.parametrize("name", _options("logger"))
def test_every_logger_config_composes(name):
    assert compose_config([f"logger={name}"]).logger.name == name


@pytest.mark.parametrize("name", _options("experiment"))
def test_every_experiment_composes_and_every_job_of_its_sweep_builds(name):
    compose_config([f"experiment={name}"])
    sweep = OmegaConf.select(OmegaConf.load(CONF_DIR / "experiment" / f"{name}.yaml"), "hydra.sweeper.params") or {}
    jobs = [[]]
    for key, values in sweep.items():
        jobs = [job + [f"{key}={value}"] for job in jobs for value in str(values).split(",")]
    for job in jobs:
        job_cfg = compose_config([f"experiment={name}", *job])
        build_method_from(job_cfg.method)
        build_suite(job_cfg.suite)
