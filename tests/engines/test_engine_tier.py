"""The engine tier (``make test-engine``, marker ``engine``): vLLM itself, in the engine environment, on the
bundled model. Skipped, with the reason, where ``.venv-vllm`` is absent (``make engine-env`` builds it); not in
``make test`` (each test starts vLLM: tens of seconds on a CPU)."""

import json

import pytest

from kvbench.engines import vllm_launcher as vllm

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def engine_env():
    try:
        return vllm.engine_python()
    except vllm.EngineUnavailableError as error:
        pytest.skip(f"no engine environment: {error}")


def test_vllm_greedy_matches_kvbench_full_on_quick_prompts(engine_env, tmp_path):
    from kvbench.engines import identity

    out = tmp_path / "identity.md"
    assert identity.main(["passkey=4", "prose=2", "new_tokens=8", f"out={out}"]) == 0, out.read_text()


def test_efficiency_through_vllm_fills_the_same_record_fields(engine_env, run_cli, tmp_path):
    run_dir = tmp_path / "run"
    done = run_cli(["engine=vllm", "suite=efficiency", "suite.options.batch_sizes=[1,2]",
                    "suite.options.context_lengths=[64]", "suite.options.new_tokens=4", "suite.options.repeats=1",
                    "suite.options.warmup=0", "suite.options.memory_budget_gb=2", f"hydra.run.dir={run_dir}",
                    f"records_dir={tmp_path / 'records'}", "logger=none"], tmp_path)
    assert done.returncode == 0, done.stderr
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "complete" and record["method"]["label"] == "vllm"
    points = record["efficiency"]["points"]
    assert [(p["context_length"], p["batch_size"]) for p in points] == [(64, 1), (64, 2)]
    assert all(p["throughput_tok_s"] > 0 and p["ttft_s"] > 0 and p["kv_source"] == "engine" for p in points)
    assert record["efficiency"]["max_batch"]["source"] == "engine_blocks"
    assert record["efficiency"]["workload"]["engine"]["name"] == "vllm"


def test_quick_suite_through_lm_evals_vllm_model_agrees_with_kvbench_full(engine_env, run_cli, tmp_path):
    records = {}
    for engine in ("hf", "vllm"):
        run_dir = tmp_path / engine
        done = run_cli([f"engine={engine}", "suite=quick", "suite.limit=4", f"hydra.run.dir={run_dir}",
                        f"records_dir={tmp_path / 'records'}", "logger=none"], tmp_path)
        assert done.returncode == 0, done.stderr
        records[engine] = json.loads((run_dir / "record.json").read_text())
    ours, engine = records["hf"], records["vllm"]
    assert engine["status"] == "complete" and engine["method"]["label"] == "vllm"
    assert engine["kv"]["source"] == "engine" and engine["kv"]["ratio"] == pytest.approx(1.0, abs=0.01)
    assert engine["metrics"]["kvbench_passkey_short"]["acc"] == ours["metrics"]["kvbench_passkey_short"]["acc"]
    assert engine["metrics"]["kvbench_prose_ppl"]["word_perplexity"] == pytest.approx(
        ours["metrics"]["kvbench_prose_ppl"]["word_perplexity"], rel=1e-3)
