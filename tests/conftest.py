"""Shared fixtures: seeded tiny random Llama models (built per test) and the bundled SmolLM2 (loaded once)."""

from __future__ import annotations

import copy
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _one_thread_and_the_environment_collected_once():
    """The session's speed on two shared cores, without changing what a test checks:

    - torch computes on one thread: the tests' tiny models gain nothing from a second one, and when the two cores
      are shared (another test process, a sweep beside it) two threads that wait on each other make a tiny forward
      several times slower (0.98 s against 7.1 s for 2,048 tokens at load 18); tests compare runs of one process,
      so the thread count is the same on both sides of every comparison. ``KVBENCH_TEST_THREADS`` overrides it.
    - torch's ``get_pretty_env_info`` (lm-eval's ``simple_evaluate`` adds it to every result: ``pip list``, ``git``
      and more in subprocesses, 1-5 s a call) is collected once per session: the environment does not change
      between the tests of one session, and kvbench reads none of it (records take theirs from
      :mod:`kvbench.environment`).
    """
    import functools

    import torch
    import torch.utils.collect_env as collect_env

    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("KVBENCH_TEST_THREADS", "1")))
    real = collect_env.get_pretty_env_info
    collect_env.get_pretty_env_info = functools.cache(real)
    yield
    collect_env.get_pretty_env_info = real
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _kvbench_cache_dir(tmp_path, monkeypatch):
    """Task data, calibration projections and LongBench downloads of a test go to its own temp dir."""
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path / "kvbench-cache"))


@pytest.fixture
def tiny_gqa():
    """(model, tokenizer): 4 layers, 4 query heads, 2 KV heads, RoPE, float32, seed 0."""
    from kvbench.models import tiny_llama

    return tiny_llama("llama-gqa", seed=0)


@pytest.fixture
def tiny_mha():
    """(model, tokenizer): 4 layers, 4 query heads, 4 KV heads, RoPE, float32, seed 0."""
    from kvbench.models import tiny_llama

    return tiny_llama("llama-mha", seed=0)


@pytest.fixture(scope="session")
def family_model():
    """``family_model("gemma2")`` -> (model, tokenizer): the tiny random model of a support-matrix family
    (tests/families.py), built once per session and shared: copy it before changing it."""
    from tests.families import tiny_family

    return tiny_family


@pytest.fixture(scope="session")
def _smollm2_session():
    from kvbench.models import ModelConfig, load_model

    return load_model(ModelConfig())


@pytest.fixture
def smollm2(_smollm2_session):
    """(model, tokenizer) of the bundled SmolLM2-135M-Instruct; the model is a private copy per test."""
    model, tokenizer = _smollm2_session
    return copy.deepcopy(model), tokenizer


@pytest.fixture
def smollm2_shared(_smollm2_session):
    """The session's SmolLM2 (model, tokenizer) itself: for tests that do not modify the model."""
    return _smollm2_session


# -- helpers shared by the test modules (import them: ``from tests.conftest import random_ids``) ----------
def random_ids(n: int, seed: int = 0, vocab: int = 256):
    """``[1, n]`` seeded random token ids of the tiny models' byte vocabulary."""
    import torch

    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def method_from_config(*overrides: str):
    """The method a composed kvbench config describes, e.g. ``method_from_config("method=h2o_local")``."""
    from kvbench.compose import compose_config
    from kvbench.validation import build_method_from

    return build_method_from(compose_config(list(overrides)).method)


@pytest.fixture
def no_grad():
    """Run the test without autograd (use with ``pytestmark = pytest.mark.usefixtures("no_grad")``)."""
    import torch

    with torch.no_grad():
        yield


# -- LongBench fixtures (tests/eval/test_longbench.py, tests/suites/test_longbench.py) ---------------------
def longbench_record(i: int, **over) -> dict:
    """A small LongBench-format record whose answer is in its context."""
    base = {"input": f"Who wrote book {i}?", "context": f"Passage {i}: book {i} was written by Ann. " * 6,
            "answers": ["Ann"], "length": 40 + 3000 * i, "all_classes": None, "dataset": "hotpotqa",
            "language": "en", "_id": f"id{i}"}
    base.update(over)
    return base


def write_jsonl(path, rows) -> None:
    import json

    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def run_suite(suite_cfg, model, tokenizer, model_cfg, output_dir, method: str = "full"):
    """``({task: metrics}, protocol)``: validate the suite, then run it through the protocol, as the runner does."""
    from kvbench.eval.protocol import CompressionProtocol
    from kvbench.methods import build_method
    from kvbench.suites import RunContext, build_suite

    suite = build_suite(suite_cfg)
    plan = suite.validate(model_cfg)
    protocol = CompressionProtocol(model, build_method(method))
    results = list(suite.run(plan, RunContext(protocol, tokenizer, model_cfg, output_dir)))
    return {r.task: r.metrics for r in results}, protocol


# -- token-eviction helpers (tests/methods/test_{h2o,streaming_llm,snapkv,pyramidkv,tova,knorm}.py) --------
def applied(model, name: str, **params):
    """``(method, a copy of model after method.apply)``; ``model`` itself stays the plain reference."""
    from kvbench.methods import build_method

    method = build_method(name, **params)
    return method, method.apply(copy.deepcopy(model))


def reduced_cache(cache):
    """A plain ``DynamicCache`` holding exactly the keys/values an evicting cache kept (per layer and KV head)."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[(layer.keys.clone(), layer.values.clone()) for layer in cache.layers])


def reference_logits(model, cache, new_ids, positions_from: str = "logical", stepwise: bool = False):
    """Logits of ``new_ids`` on a hand-built reduced copy of ``cache``, at explicit positions (the tokens seen
    so far, or -- to show the check can fail -- the stored length). ``stepwise`` feeds one token at a time
    (no mask is built: layers may then hold different numbers of tokens)."""
    import torch

    start = cache.get_seq_length() if positions_from == "logical" else cache.layers[0].stored_tokens()
    reduced = reduced_cache(cache)
    n = new_ids.shape[1]
    if not stepwise:
        return model(input_ids=new_ids, cache=reduced, position_ids=torch.arange(start, start + n)[None]).logits
    return torch.cat([model(input_ids=new_ids[:, i:i + 1], cache=reduced, position_ids=torch.tensor([[start + i]])).logits
                      for i in range(n)], dim=1)


def assert_protocol_matches_full(model, method, applied_model, n_context: int = 40):
    """Scores, streamed log-probs and greedy generations through the protocol equal ``full``'s."""
    import pytest as _pytest

    from kvbench.eval.protocol import CompressionProtocol
    from kvbench.methods import build_method

    context = random_ids(n_context)[0].tolist()
    continuations = [random_ids(5, seed=s)[0].tolist() for s in (1, 2)]
    full = CompressionProtocol(model, build_method("full"))
    ours = CompressionProtocol(applied_model, method)
    expected, got = full.score_continuations(context, continuations), ours.score_continuations(context, continuations)
    assert [g[1] for g in got] == [e[1] for e in expected]
    assert [g[0] for g in got] == _pytest.approx([e[0] for e in expected], abs=1e-5)
    assert ours.stream_logprob(context, continuations[0], chunk=2) == _pytest.approx(
        full.stream_logprob(context, continuations[0], chunk=2), abs=1e-5)
    query = continuations[1]
    for query_aware in (False, True):
        assert ours.generate(context, 8, query=query, query_aware=query_aware) == full.generate(
            context, 8, query=query, query_aware=query_aware)


def lm_eval_results(model, tokenizer, method, tasks=("kvbench_passkey", "kvbench_recall_mc"), limit: int = 2,
                    query_aware: bool = False) -> dict:
    """``simple_evaluate`` results of the kvbench lm-eval model in-process (``method`` already applied to ``model``)."""
    from lm_eval import simple_evaluate

    from kvbench.eval.lm import KvbenchLM
    from kvbench.suites.lm_eval import task_manager

    lm = KvbenchLM(model=model, tokenizer=tokenizer, method_obj=method, max_length=2048, query_aware=query_aware)
    out = simple_evaluate(model=lm, tasks=list(tasks), limit=limit, task_manager=task_manager(list(tasks)),
                          bootstrap_iters=0, random_seed=0, log_samples=True)
    return {"results": out["results"], "samples": out["samples"]}


def assert_lm_eval_matches_full(model, tokenizer, name: str, **params):
    """Through ``lm_eval`` (kvbench's model, in-process): the same metrics and per-request responses as ``full``."""
    import pytest as _pytest

    method, scored = applied(model, name, **params)
    ours = lm_eval_results(scored, tokenizer, method)
    reference = lm_eval_results(model, tokenizer, applied(model, "full")[0])
    for task, metrics in reference["results"].items():
        for metric, value in metrics.items():
            if isinstance(value, float):
                assert ours["results"][task][metric] == _pytest.approx(value, abs=1e-6), (task, metric)
        got, want = (_responses(r["samples"][task]) for r in (ours, reference))
        assert len(got) == len(want) > 0, task
        for a, b in zip(got, want):
            if isinstance(a, str):
                assert a == b, task
            else:
                assert a[1] == b[1] and a[0] == _pytest.approx(b[0], abs=1e-5), task


def _responses(samples) -> list:
    """Per-request responses in request order: generated strings, or (log-likelihood, greedy) pairs."""
    out = []
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        for resp in sample["resps"]:
            out.append(tuple(resp[0]) if isinstance(resp[0], (tuple, list)) else resp[0])
    return out


# -- console scripts in-process (tests/test_bad_input.py, tests/test_cli.py) -------------------------------
class CliResult:
    """What a console script did: ``returncode``, ``stdout`` and ``stderr`` (as ``subprocess.run`` returns)."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """``run_cli(args, cwd, prog="kvbench", **env)``: the console script's entry point called in this process
    (``kvbench``: :func:`kvbench.cli.main`; ``kvbench-report``: :func:`kvbench.cli.report_main`; ``lm_eval``:
    lm-eval's ``cli_evaluate`` with kvbench's model registered as the ``.pth`` hook registers it) with ``sys.argv``,
    the working directory and the environment set as a shell would, its exit code taken from ``SystemExit``. A
    process per call costs 10-25 s of imports (torch, transformers, lm-eval, Hydra) on two cores; what a separate
    process alone shows (``--help`` importing nothing heavy, signals, launchers) stays in the subprocess tests.
    Hydra's logging setup is undone after each call, so later tests log as before."""
    import logging
    import sys

    from kvbench import cli

    def lm_eval_main():
        from lm_eval.__main__ import cli_evaluate

        from kvbench.lm_eval_plugin import register

        register()  # what kvbench_lm_eval.pth does in a process of its own (tests/test_cli.py runs that one)
        cli_evaluate()

    entry = {"kvbench": cli.main, "kvbench-report": lambda: cli.report_main(sys.argv[1:]), "lm_eval": lm_eval_main}

    def run(args, cwd, prog: str = "kvbench", **env) -> CliResult:
        root, kvbench_log, lm_eval_log = logging.getLogger(), logging.getLogger("kvbench"), logging.getLogger("lm_eval")
        saved = (root.handlers[:], root.level, kvbench_log.handlers[:], kvbench_log.level, kvbench_log.propagate)
        saved_lm_eval = (lm_eval_log.handlers[:], lm_eval_log.level, lm_eval_log.propagate)
        capsys.readouterr()
        with monkeypatch.context() as patch:
            patch.chdir(cwd)
            patch.setattr(sys, "argv", [prog, *map(str, args)])
            for key, value in env.items():
                patch.setenv(key, str(value))
            code = 0
            try:
                entry[prog]()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            finally:
                from hydra.core.global_hydra import GlobalHydra

                GlobalHydra.instance().clear()
                root.handlers[:], kvbench_log.handlers[:] = saved[0], saved[2]
                root.setLevel(saved[1])
                kvbench_log.setLevel(saved[3])
                kvbench_log.propagate = saved[4]
                if prog == "lm_eval":  # its handler holds this test's captured stderr: the next call makes its own
                    import lm_eval.utils

                    lm_eval_log.handlers[:], lm_eval_log.propagate = saved_lm_eval[0], saved_lm_eval[2]
                    lm_eval_log.setLevel(saved_lm_eval[1])
                    lm_eval.utils._LOGGING_CONFIGURED = False
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return run
