"""A new method and a new suite are one module each: defined and registered here, run through `kvbench`.

Nothing outside this file is edited: the method is a dataclass on the evicting-layer base, the suite a
class with its own options; registering both (and offering them as config-group options, which a YAML in
conf/ would otherwise do) makes `kvbench method=toy_recent suite=toy` work end to end, and puts them
through the checks every registered method and suite gets (tests/contracts.py): the byte contract, the
efficiency experiment that runs every method, a config of each.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import torch
from hydra.core.config_store import ConfigStore

from kvbench.cache.base import EvictingLayer, KVCache
from kvbench.config import SuiteConfig
from kvbench.errors import SuiteConfigError
from kvbench.methods import METHODS, Method
from kvbench.methods import register as register_method
from kvbench.results import read_record
from kvbench.suites import SUITES, RunContext, Suite, TaskResult
from kvbench.suites import register as register_suite
from tests.contracts import (assert_cache_counts_every_tensor, assert_method_has_its_config, assert_suite_has_a_config,
                             assert_sweeps_every_method, byte_contract_cases)


class RecentLayer(EvictingLayer):
    def __init__(self, keep: int):
        super().__init__()
        self.budget = keep

    def compress(self):
        if self.stored_tokens() > self.budget:
            n = self.stored_tokens()
            self.keep(torch.arange(n - self.budget, n).expand(*self.keys.shape[:2], self.budget))


class RecentCache(KVCache):
    def __init__(self, layers: int, keep: int):
        super().__init__(layers=[RecentLayer(keep) for _ in range(layers)])

    def compress(self):
        for layer in self.layers:
            layer.compress()


@dataclass
class ToyRecent(Method):
    """Keep the last ``keep`` tokens of the context (a toy: StreamingLLM without sinks)."""

    name: str = "toy_recent"
    keep: int = 8

    def new_cache(self, model):
        return RecentCache(model.config.num_hidden_layers, self.keep)


@dataclass
class ToyOptions:
    prompts: int = 2


@dataclass
class ToyConfig(SuiteConfig):
    name: str = "toy"
    runner: str = "toy_echo"
    tasks: list = field(default_factory=lambda: ["echo"])
    options: ToyOptions = field(default_factory=ToyOptions)


class ToyEcho(Suite):
    """Generate 3 tokens after each of ``prompts`` fixed prompts; the score is the tokens generated."""

    runner = "toy_echo"
    Config = ToyConfig
    Options = ToyOptions

    def validate(self, model_cfg=None):
        if self.options.prompts <= 0:
            raise SuiteConfigError(f"suite.options.prompts={self.options.prompts} must be positive")
        return [list(range(10 + i, 40 + i)) for i in range(self.options.prompts)]

    def run(self, plan, context: RunContext) -> Iterator[TaskResult]:
        generated = [len(context.protocol.generate(ids, 3)) for ids in plan]
        yield TaskResult("echo", {"tokens": sum(generated)}, primary="tokens", n=len(plan))


@pytest.fixture
def toy_extensions(monkeypatch):
    register_method(ToyRecent)
    register_suite(ToyEcho)
    store = ConfigStore.instance()
    store.store(group="method", name="toy_recent", node=ToyRecent)
    store.store(group="suite", name="toy", node=ToyConfig)
    yield
    METHODS.pop("toy_recent", None)
    SUITES.pop("toy_echo", None)
    for path in ("method/toy_recent.yaml", "suite/toy.yaml", "schema/method/toy_recent.yaml",
                 "schema/suite/toy_echo.yaml"):
        *groups, name = path.split("/")
        node = store.repo
        for group in groups:
            node = node.get(group, {})
        node.pop(name, None)


def test_a_toy_method_and_a_toy_suite_run_through_the_kvbench_cli(toy_extensions, tmp_path, monkeypatch):
    from kvbench import cli

    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "argv", ["kvbench", "model=tiny_llama", "method=toy_recent", "method.keep=6", "suite=toy",
                                      "suite.options.prompts=3", "logger=none", f"records_dir={tmp_path / 'records'}",
                                      f"hydra.run.dir={tmp_path / 'run'}"])
    cli.main()
    record = read_record(tmp_path / "run" / "record.json")
    assert record.status == "complete" and record.method["changed_params"] == {"keep": 6}
    assert record.metrics == {"echo": {"tokens": 9}} and record.n_samples == {"echo": 3}
    assert record.suite["runner"] == "toy_echo"
    # the toy cache kept 6 of the 29 prefilled tokens (the 30th is fed after compression); per kept token and
    # head it holds 16-dim fp32 keys and values (128 bytes) plus an int32 position (4 bytes)
    assert record.kv["ratio"] == pytest.approx((29 * 128) / (6 * 132))


def test_the_toy_method_is_a_byte_contract_case_and_its_cache_counts_every_tensor(toy_extensions):
    assert ("toy_recent", {}) in byte_contract_cases({})
    cache = assert_cache_counts_every_tensor("toy_recent", {})
    assert cache.stored_tokens(0) == 8 + 10  # it kept 8 of the 40 prefilled tokens, then appended 10 decoded ones


def test_the_efficiency_experiment_sweeps_the_toy_method_and_each_toy_has_a_config(toy_extensions):
    built = assert_sweeps_every_method("efficiency_quick")
    assert isinstance(built["toy_recent"], ToyRecent)
    assert assert_method_has_its_config("toy_recent").keep == 8
    assert assert_suite_has_a_config("toy_echo") == ["toy"]


def test_a_toy_suite_option_error_is_one_line_before_the_model_loads(toy_extensions, tmp_path, monkeypatch, capsys):
    from kvbench import cli, models

    monkeypatch.setattr(models, "load_model", lambda *a: pytest.fail("the model was loaded"))
    monkeypatch.setattr(sys, "argv", ["kvbench", "model=tiny_llama", "suite=toy", "suite.options.prompts=0",
                                      "logger=none", f"records_dir={tmp_path / 'records'}",
                                      f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == "kvbench: error: suite.options.prompts=0 must be positive"
