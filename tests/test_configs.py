"""Every YAML in conf/ composes against its schema, and what it describes can be built.

Self-contained on purpose: ``.ci/check_wheel.sh`` runs this file against the installed wheel from outside the
checkout, so every config the wheel ships is proven to compose there too.
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from kvbench.compose import check_launcher, compose_config, experiment_jobs
from kvbench.config import CONF_DIR, find_conf_dir
from kvbench.errors import ConfigError, KvbenchError
from kvbench.methods import METHODS
from kvbench.suites import SUITES, build_suite
from kvbench.validation import build_method_from

#: Every config group under conf/ (beside the root config.yaml); a YAML outside them fails the last test.
GROUPS = ("model", "method", "suite", "logger", "engine", "arm", "experiment", "hydra/launcher", "hydra/job_logging")


def _options(group: str) -> list[str]:
    """Every option of a group, nested ones included (``method=budget128/h2o``)."""
    root = CONF_DIR / group
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def test_every_yaml_under_conf_is_an_option_of_a_tested_group():
    tested = {CONF_DIR / "config.yaml"}
    tested |= {CONF_DIR / group / f"{name}.yaml" for group in GROUPS for name in _options(group)}
    untested = sorted(str(p.relative_to(CONF_DIR)) for p in CONF_DIR.rglob("*.yaml") if p not in tested)
    assert not untested, f"YAMLs in no tested group (add the group to GROUPS and a test): {untested}"
    assert all(_options(group) for group in GROUPS)


def test_conf_dir_is_the_wheels_copy_else_the_checkouts_top_level_conf(tmp_path):
    checkout, package = tmp_path / "checkout", tmp_path / "checkout" / "kvbench"
    package.mkdir(parents=True)
    with pytest.raises(KvbenchError, match="neither .*kvbench/conf .* nor .*checkout/conf"):
        find_conf_dir(package)
    (checkout / "conf").mkdir()
    (checkout / "conf" / "config.yaml").touch()
    with pytest.raises(KvbenchError):  # a conf/ outside a checkout (no pyproject.toml beside it) is not ours
        find_conf_dir(package)
    (checkout / "pyproject.toml").touch()
    assert find_conf_dir(package) == checkout / "conf"
    (package / "conf").mkdir()
    (package / "conf" / "config.yaml").touch()
    assert find_conf_dir(package) == package / "conf"


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


@pytest.mark.parametrize("name", _options("engine"))
def test_every_engine_config_composes(name):
    engine = compose_config([f"engine={name}"]).engine
    assert engine.name == name and engine.backend in ("hf", "vllm")


@pytest.mark.parametrize("name", _options("arm"))
def test_every_arm_config_picks_a_registered_method_and_an_engine(name):
    cfg = compose_config([f"+arm={name}"])
    assert build_method_from(cfg.method).name in METHODS
    assert cfg.engine.backend == "hf" or cfg.method.name == "full"  # an engine serves the uncompressed model


@pytest.mark.parametrize("name", _options("hydra/launcher"))
def test_every_launcher_config_composes_into_a_hydra_launcher(name):
    launcher = compose_config([f"hydra/launcher={name}"], with_hydra=True).hydra.launcher
    assert launcher._target_.startswith("hydra_plugins.")
    check_launcher(launcher)


@pytest.mark.parametrize("name", _options("hydra/job_logging"))
def test_every_job_logging_config_composes(name):
    assert compose_config([f"hydra/job_logging={name}"], with_hydra=True).hydra.job_logging.handlers


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


def _task_answer_budget(task: str) -> int | None:
    """``generation_kwargs.max_gen_toks`` of a kvbench lm-eval task YAML (None: not one, or no budget)."""
    import re
    from pathlib import Path

    import kvbench.eval

    path = Path(kvbench.eval.__file__).parent / "tasks" / f"{task}.yaml"
    found = re.search(r"^\s+max_gen_toks:\s*(\d+)", path.read_text(), re.MULTILINE) if path.exists() else None
    return int(found.group(1)) if found else None


@pytest.mark.parametrize("name", _options("experiment"))
def test_no_experiment_cuts_a_kvbench_task_answer_shorter_than_the_task_budgets(name):
    """``suite.max_gen_toks`` overrides every task's own budget; below it, a correct answer is cut before it is
    complete (the MiniCache start-layer sweep's 8 tokens cut "The pass key is 60415" after "604": 0/6 for every
    method, ``full`` included; reports/minicache_passkey.md)."""
    for job in experiment_jobs(name) or [[]]:
        suite = compose_config([f"experiment={name}", *job]).suite
        if suite.get("runner") != "lm_eval" or not suite.get("max_gen_toks"):
            continue
        for task in suite.tasks:
            budget = _task_answer_budget(task)
            assert budget is None or suite.max_gen_toks >= budget, (
                f"experiment={name}: suite.max_gen_toks={suite.max_gen_toks} cuts {task}'s answers "
                f"(its own budget is {budget} tokens)")
