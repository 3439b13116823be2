"""The contracts every registered method and suite meets, as checks that take a name from the registries.

Tests derive their cases from :data:`kvbench.methods.METHODS` and :data:`kvbench.suites.SUITES`, never from a
hand-kept list, so a new method or suite is checked without editing any other file; tests/test_extension_points.py
runs the same checks on a toy method and a toy suite registered from the test module alone.
"""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from kvbench.cache import cache_nbytes
from kvbench.cache.base import KVCache
from kvbench.compose import compose_config, experiment_jobs, sweep_jobs
from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import METHODS, Method, build_method
from kvbench.models import tiny_llama
from kvbench.suites import SUITES, build_suite
from kvbench.validation import build_method_from
from tests.conftest import random_ids


# -- methods: the cache holds exactly the bytes it reports ---------------------------------------------------
def held_tensors(obj, seen=None) -> dict[int, torch.Tensor]:
    """Every tensor reachable from ``obj`` through attributes, lists, tuples and dicts (by identity)."""
    seen = set() if seen is None else seen
    found: dict[int, torch.Tensor] = {}
    if id(obj) in seen:
        return found
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        found[id(obj)] = obj
    elif isinstance(obj, (list, tuple, set)):
        for item in obj:
            found.update(held_tensors(item, seen))
    elif isinstance(obj, dict):
        for item in obj.values():
            found.update(held_tensors(item, seen))
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        for item in vars(obj).values():
            found.update(held_tensors(item, seen))
    return found


def byte_contract_cases(params: dict[str, list[dict]]) -> list[tuple[str, dict]]:
    """``(method, parameters)`` for every registered method: each parameter set ``params`` lists for it (settings
    that fit the tiny model, variants worth covering), else its defaults. A name in ``params`` that is not a
    registered method is an error, so the table cannot go stale."""
    stale = sorted(set(params) - set(METHODS))
    if stale:
        raise KeyError(f"byte-contract parameters for unregistered method(s): {', '.join(stale)}")
    return [(name, dict(p)) for name in sorted(METHODS) for p in params.get(name, [{}])]


def assert_cache_counts_every_tensor(name: str, params: dict) -> KVCache:
    """Prefill 40 tokens and decode 10 through the protocol on the tiny GQA model; the cache's ``nbytes()`` must be
    the bytes of every tensor reachable from it. A method declaring ``cache_contract_exempt`` is skipped, saying why."""
    reason = METHODS[name].cache_contract_exempt
    if reason is not None:
        pytest.skip(f"method={name} is exempt from the cache contract: {reason}")
    model, tokenizer = tiny_llama("llama-gqa", seed=0)
    method = build_method(name, **params)
    converted = method.apply(copy.deepcopy(model), tokenizer)
    protocol = CompressionProtocol(converted, method, model.config)
    ids = random_ids(50)[0].tolist()
    cache = protocol.prefill(ids[:40])
    with torch.no_grad():
        for token in ids[40:]:  # decode steps: retention, eviction and merging of new tokens
            protocol.forward(cache, [token])
    assert isinstance(cache, KVCache), f"method={name}: new_cache() returned a {type(cache).__name__}, not a KVCache"
    tensors = held_tensors(cache)
    assert tensors, "the cache holds no tensor"
    assert cache.nbytes() == sum(t.element_size() * t.nelement() for t in tensors.values())
    assert cache_nbytes(cache) == cache.nbytes()
    return cache


# -- methods and suites: a config of each, and every method in the experiments that promise all --------------
def assert_method_has_its_config(name: str) -> Method:
    """``method=<name>`` composes (conf/method/<name>.yaml, or a config stored under that name) into that method."""
    method = build_method_from(compose_config([f"method={name}"]).method)
    assert method.name == name, f"method={name} composes into method {method.name!r}"
    return method


def suite_configs() -> dict[str, list[str]]:
    """``{runner: the configs of the suite group that run it}``, each checked to be typed by its suite's schema."""
    found: dict[str, list[str]] = {}
    for (job,) in sweep_jobs(["suite=glob(*)"]):
        cfg = compose_config([job]).suite
        assert cfg.runner in SUITES, f"{job} runs suite.runner={cfg.runner!r}, which is not registered"
        assert OmegaConf.get_type(cfg) is SUITES[cfg.runner].Config, f"{job} is not typed by its suite's Config"
        assert type(build_suite(cfg)) is SUITES[cfg.runner]
        found.setdefault(cfg.runner, []).append(job.removeprefix("suite="))
    return found


def assert_suite_has_a_config(runner: str, configs: dict[str, list[str]] | None = None) -> list[str]:
    """Some config of the ``suite`` group runs the suite registered as ``runner``; returns those configs."""
    mine = (suite_configs() if configs is None else configs).get(runner, [])
    assert mine, f"no config in the suite group runs suite.runner={runner} (add conf/suite/<name>.yaml)"
    return mine


def assert_sweeps_every_method(experiment: str) -> dict[str, Method]:
    """Every registered method is a job of ``experiment``'s sweep: each job composes with the experiment and
    builds its method. Returns ``{job's method config: method}``."""
    built = {}
    for job in experiment_jobs(experiment):
        cfg = compose_config([f"experiment={experiment}", *job])
        built[_method_choice(job)] = build_method_from(cfg.method)
    missing = sorted(set(METHODS) - {method.name for method in built.values()})
    assert not missing, f"experiment={experiment} runs no job of method(s) {', '.join(missing)}"
    return built


def _method_choice(job: list[str]) -> str:
    return next((o.split("=", 1)[1] for o in job if o.startswith("method=")), "(the experiment's default)")
