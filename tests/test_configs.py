"""Every YAML in kvbench/conf composes against its schema, what it describes can be built, and every registered
method and suite has a config (the cases come from the registries)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from kvbench.compose import compose_config, experiment_jobs
from kvbench.config import CONF_DIR
from kvbench.errors import ConfigError
from kvbench.methods import METHODS
from kvbench.suites import SUITES, build_suite
from kvbench.validation import build_method_from
from tests.contracts import assert_method_has_its_config, assert_suite_has_a_config, suite_configs


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


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_has_its_own_config(name):
    assert_method_has_its_config(name)


def test_every_registered_suite_has_a_config_typed_by_its_schema():
    configs = suite_configs()  # every config of the suite group, composed once
    for runner in SUITES:
        assert_suite_has_a_config(runner, configs)


@pytest.mark.parametrize("name", _options("experiment"))
def test_every_experiment_composes_and_every_job_of_its_sweep_builds(name):
    compose_config([f"experiment={name}"])
    for job in experiment_jobs(name):  # the sweep as Hydra expands it (a glob over a config group included)
        job_cfg = compose_config([f"experiment={name}", *job])
        build_method_from(job_cfg.method)
        build_suite(job_cfg.suite)


def test_a_glob_sweep_expands_over_the_config_group_as_hydra_does_and_every_job_is_checked():
    from kvbench.compose import check_overrides, sweep_jobs

    jobs = sweep_jobs(["method=glob(*_simulated)", "seed=1,2"])
    assert jobs == [["method=h2o_local_simulated", "seed=1"], ["method=h2o_local_simulated", "seed=2"],
                    ["method=h2o_simulated", "seed=1"], ["method=h2o_simulated", "seed=2"]]
    check_overrides(["method=glob(*_simulated)", "seed=1,2"])  # a glob on the command line is checked, not a crash
    with pytest.raises(ConfigError, match="method.heavy_ratoi: method=h2o has no setting 'heavy_ratoi'"):
        check_overrides(["method=glob(*_simulated)", "method.heavy_ratoi=0.1"])
