"""suite=efficiency: a grid of (batch, context) points on one seeded prose workload, the record's ``efficiency``
field, the max batch (derived on CPU, searched by bisection on CUDA: tested here with a fake OOM), and one-line
errors for bad options before any model loads."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from kvbench import models, runner
from kvbench.compose import compose_config
from kvbench.errors import KvbenchError
from kvbench.eval import efficiency as eff
from kvbench.results import read_record

GRID = ["suite=efficiency", "suite.options.batch_sizes=[1,2]", "suite.options.context_lengths=[24,48]",
        "suite.options.new_tokens=3", "suite.options.repeats=2", "suite.options.warmup=0"]


def _run(tmp_path, *overrides, method="full", output="run"):
    cfg = compose_config(["model=tiny_llama", f"method={method}", "logger=none", *GRID,
                          f"records_dir={tmp_path / 'records'}", f"reports_dir={tmp_path / 'reports'}", *overrides])
    return runner.run(cfg, tmp_path / output)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """full and h2o on the same grid with a 4 MiB budget (the tiny model's weights are 0.7 MiB)."""
    tmp = tmp_path_factory.mktemp("efficiency")
    return {m: _run(tmp, "suite.options.memory_budget_gb=0.004", method=m, output=m) for m in ("full", "h2o")}


def test_every_point_of_the_grid_is_measured_with_medians_and_their_range(records):
    record = records["full"]
    points = record.efficiency["points"]
    assert [(p["context_length"], p["batch_size"]) for p in points] == [(24, 1), (24, 2), (48, 1), (48, 2)]
    for p in points:
        assert p["new_tokens"] == 3 and p["repeats"] == 2
        for name in ("ttft_s", "decode_ms_per_step", "throughput_tok_s"):
            assert 0 < p[f"{name}_min"] <= p[name] <= p[f"{name}_max"]
        # throughput is B·new_tokens over the decode time, decode ms/step that time over new_tokens
        assert p["throughput_tok_s_min"] == pytest.approx(
            p["batch_size"] * 1000 / p["decode_ms_per_step_max"], rel=1e-9)
        assert p["memory_source"] == "rss_high_water" and p["peak_memory_bytes"] > 0
    assert set(record.metrics) == {"ctx24_b1", "ctx24_b2", "ctx48_b1", "ctx48_b2", "max_batch"}
    assert record.primary_metrics["ctx48_b2"] == {"name": "throughput_tok_s", "higher_is_better": True}


def test_the_suite_yields_its_measurements_as_a_new_part_with_every_result(tiny_gqa, tmp_path):
    from kvbench.eval.protocol import CompressionProtocol
    from kvbench.methods import build_method
    from kvbench.suites import RunContext, build_suite

    model, tokenizer = tiny_gqa
    cfg = compose_config(["model=tiny_llama", "logger=none", *GRID, "suite.options.repeats=1",
                          "suite.options.memory_budget_gb=0.004"])
    suite = build_suite(cfg.suite)
    protocol = CompressionProtocol(model, build_method("full"))
    results = list(suite.run(suite.validate(cfg.model), RunContext(protocol, tokenizer, cfg.model, tmp_path)))
    parts = [r.efficiency for r in results]
    assert [r.task for r in results] == ["ctx24_b1", "ctx24_b2", "ctx48_b1", "ctx48_b2", "max_batch"]
    assert [len(p.points) for p in parts] == [1, 2, 3, 4, 4]  # each result: every point measured so far
    assert len({id(p) for p in parts}) == len({id(p.points) for p in parts}) == 5  # nothing shared between them
    assert [p.max_batch for p in parts[:-1]] == [None] * 4 and parts[-1].max_batch["source"] == "derived"
    assert parts[0].workload["new_tokens"] == 3 and parts[0].memory_source == "rss_high_water"


def test_full_cache_bytes_are_the_formula_and_grow_with_batch_and_decoded_tokens(records):
    by_key = {(p["context_length"], p["batch_size"]): p for p in records["full"].efficiency["points"]}
    per_token = 2 * 4 * 2 * 16 * 4  # 2 (K, V) · 4 layers · 2 KV heads · head dim 16 · float32
    for (length, batch), p in by_key.items():
        # full's preallocated cache holds its reserved capacity from the prefill on: the context (its last token is
        # fed after compression) + the 3 decoded tokens; nbytes counts what is allocated, so the ratio is below 1
        assert p["kv_bytes"] == p["kv_bytes_peak"] == batch * (length - 1 + 3) * per_token
        assert p["kv_ratio"] == pytest.approx((length - 1) / (length - 1 + 3))


def test_every_point_carries_its_roofline_floor_and_the_multiple_of_it(records):
    for method, record in records.items():
        machine = record.efficiency["roofline"]
        assert machine["bandwidth_bytes_s"] > 0 and machine["matmul_flop_s"] > 0 and machine["weight_bytes"] > 0
        for p in record.efficiency["points"]:
            assert p["step_bytes"] == machine["weight_bytes"] + p["kv_bytes"]
            floor = max(1000 * p["step_bytes"] / machine["bandwidth_bytes_s"],
                        1000 * p["step_flops"] / machine["matmul_flop_s"])
            assert p["floor_ms_per_step"] == pytest.approx(floor) and p["floor_bound"] in ("memory", "compute")
            assert p["floor_multiple"] == pytest.approx(p["decode_ms_per_step"] / floor)
    # h2o keeps a fifth of the cache: its step reads fewer bytes and does less attention than full's
    for a, b in zip(records["full"].efficiency["points"], records["h2o"].efficiency["points"]):
        assert b["step_bytes"] < a["step_bytes"] and b["step_flops"] < a["step_flops"]
    assert records["full"].efficiency["roofline"] == records["h2o"].efficiency["roofline"]  # measured once


def test_h2o_keeps_a_fifth_and_its_max_batch_grows_by_its_compression_ratio(records):
    full, h2o = (records[m].efficiency for m in ("full", "h2o"))
    for a, b in zip(full["points"], h2o["points"]):
        n = b["context_length"] - 1
        kept = 2 * math.floor(0.1 * n)  # 10% heavy + 10% recent per (layer, KV head)
        # per kept token and KV head: 16-dim fp32 keys and values (128 bytes) + an int32 position and fp32 score
        assert b["kv_bytes"] == b["batch_size"] * 4 * 2 * kept * 136
        assert b["kv_ratio"] == pytest.approx(n * 128 / (kept * 136))
        assert a["kv_bytes"] / b["kv_bytes"] == pytest.approx(b["kv_ratio"] * (n + 3) / n)  # full reserves n + 3
    full_max, h2o_max = full["max_batch"], h2o["max_batch"]
    assert full_max["source"] == h2o_max["source"] == "derived" and full_max["context_length"] == 48
    # derived: weights + B · (cache bytes per sequence after the last decode step) within the budget
    widest = full["points"][-1]
    per_seq = widest["kv_bytes_peak"] / widest["batch_size"]
    assert full_max["batch"] == math.floor((0.004 * 2**30 - full["model_bytes"]) / per_seq) > 50
    # the acceptance: max batch ÷ full's max batch within 10% of the measured compression ratio
    assert h2o_max["batch"] / full_max["batch"] == pytest.approx(h2o["points"][-1]["kv_ratio"], rel=0.1)


def test_the_workload_is_seeded_prose_cut_to_exact_lengths_and_batches_are_prefixes(tiny_gqa):
    _, tokenizer = tiny_gqa
    rows = eff.prose_workload(tokenizer, 4, 100, seed=0)
    assert [len(r) for r in rows] == [100] * 4
    assert eff.prose_workload(tokenizer, 2, 100, seed=0) == rows[:2]  # batch 2 is the first rows of batch 4
    assert eff.prose_workload(tokenizer, 4, 100, seed=1) != rows
    assert len({tuple(r) for r in rows}) == 4
    text = tokenizer.decode(rows[0])
    assert sum(c.isalpha() or c.isspace() for c in text) > 0.7 * len(text)  # prose, not noise


# -- max batch by search: the bisection, with a fake out-of-memory error -------------------------------------
@pytest.mark.parametrize("limit", [1, 2, 3, 37, 64, 100, 4095])
def test_largest_fitting_finds_the_largest_batch_that_fits(limit):
    found, tried = eff.largest_fitting(lambda b: b <= limit, cap=4096)
    assert found == limit
    assert len(tried) <= 2 * math.ceil(math.log2(limit + 1)) + 1  # doubling, then bisection
    assert limit + 1 in tried  # the first batch that does not fit was tried: the answer is proven, not assumed


def test_largest_fitting_is_zero_when_one_sequence_does_not_fit_and_stops_at_the_cap():
    assert eff.largest_fitting(lambda b: False)[0] == 0
    assert eff.largest_fitting(lambda b: True, cap=100) == (100, [1, 2, 4, 8, 16, 32, 64, 100])


class FakeOOM(RuntimeError):
    pass


def test_search_catches_out_of_memory_frees_and_bisects(tiny_gqa, monkeypatch):
    from kvbench.eval.protocol import CompressionProtocol
    from kvbench.methods import build_method

    model, tokenizer = tiny_gqa
    protocol = CompressionProtocol(model, build_method("full"))
    calls, freed = [], []

    def fake_run(protocol_, ids, new_tokens):
        calls.append(ids.shape[0])
        if ids.shape[0] > 21:
            raise FakeOOM("CUDA out of memory (fake)")
        return {}

    monkeypatch.setattr(eff, "run_once", fake_run)
    monkeypatch.setattr(eff, "free_memory", lambda device: freed.append(device))
    rows = eff.prose_workload(tokenizer, 3, 16)
    found = eff.search_max_batch(protocol, rows, 2, budget_gb=1.0, cap=1024, oom=(FakeOOM,))
    assert found["batch"] == 21 and found["source"] == "search" and found["context_length"] == 16
    assert found["tried"] == calls == [1, 2, 4, 8, 16, 32, 24, 20, 22, 21]
    assert len(freed) == len(calls)  # memory freed after every try, failed or not
    monkeypatch.setattr(eff, "run_once", lambda *a: (_ for _ in ()).throw(ValueError("a real bug")))
    with pytest.raises(ValueError):  # only out-of-memory means "does not fit": anything else propagates
        eff.search_max_batch(protocol, rows, 2, budget_gb=1.0, oom=(FakeOOM,))


# -- bad input: one line, before the model loads ------------------------------------------------------------
@pytest.mark.parametrize("override, expected", [
    ("suite.options.batch_sizes=[0,4]", "suite.options.batch_sizes=[0, 4] must be a non-empty list of integers >= 1"),
    ("suite.options.batch_sizes=[]", "suite.options.batch_sizes=[] must be a non-empty list of integers >= 1"),
    ("suite.options.context_lengths=[-512]", "suite.options.context_lengths=[-512] must be a non-empty list of integers >= 2"),
    ("suite.options.context_lengths=[512,4096]", "suite.options.context_lengths [4096] exceed model.max_length=2048"),
    ("suite.options.new_tokens=0", "suite.options.new_tokens=0 must be an integer >= 1"),
    ("suite.options.repeats=0", "suite.options.repeats=0 must be an integer >= 1"),
    ("suite.options.warmup=-1", "suite.options.warmup=-1 must be an integer >= 0"),
    ("suite.options.memory_budget_gb=0", "suite.options.memory_budget_gb=0.0 must be a positive number of GiB"),
    ("suite.options.memory_budget_gb=0.0001", "suite.options.memory_budget_gb=0.0001 is smaller than model=tiny_llama "
                                              "itself (0.00 GiB of weights in float32)"),
    ("suite.tasks=[throughput]", "suite.tasks=['throughput']: the efficiency suite has one task"),
    ("suite.query_aware=true", "suite.query_aware=true needs prompts with a question kept apart"),
    ("method=h2o_simulated", "method=h2o protocol=simulate is a masking simulation with no compressed cache"),
])
def test_bad_options_are_one_line_before_the_model_loads(tmp_path, monkeypatch, override, expected):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded before the error"))
    with pytest.raises(KvbenchError) as error:
        if override.startswith("method="):
            _run(tmp_path, method=override.removeprefix("method="))
        else:
            _run(tmp_path, override)
    assert expected in str(error.value) and "\n" not in str(error.value)
    assert read_record(tmp_path / "run" / "record.json").status == "failed"


def test_the_cli_prints_a_bad_efficiency_option_as_one_line(run_cli, tmp_path):
    result = run_cli(["model=tiny_llama", "logger=none", "suite=efficiency", "suite.options.context_lengths=[0]",
                      f"records_dir={tmp_path / 'r'}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == ("kvbench: error: suite.options.context_lengths=[0] must be a non-empty list of "
                                     "integers >= 2")


def test_wandb_gets_a_table_of_the_points_and_a_throughput_plot_per_context(tmp_path, monkeypatch):
    from kvbench.tracking import read_offline_run

    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path / "cache"))
    record = _run(tmp_path, "logger=wandb_offline", f"logger.dir={tmp_path}", "suite.options.repeats=1")
    assert record.outputs["wandb"] == "offline"
    (run_dir,) = Path(tmp_path).glob("wandb/offline-run-*")
    history = {k: v for row in read_offline_run(run_dir)["history"] for k, v in row.items()}
    assert history["efficiency/points.nrows"] == 4  # one row per point (W&B flattens a logged table's fields)
    assert history["efficiency/throughput_ctx24_table.nrows"] == history["efficiency/throughput_ctx48_table.nrows"] == 2
    assert "ctx48_b2/throughput_tok_s" in history


@pytest.mark.parametrize("name", ["efficiency_quick", *(pytest.param(name, marks=pytest.mark.slow) for name in
                                                       ("efficiency_h2o", "efficiency_minicache", "efficiency_svd_gqa"))])
def test_the_efficiency_experiments_compose_and_every_job_validates(name, monkeypatch):
    """Every job of each experiment passes the suite's checks against its model config (the hub models' weights are
    estimated, not loaded: a 7B model in fp16 is ~12.6 GiB, within each experiment's budget; the bundled model's are
    read once per model config, not once per job)."""
    from omegaconf import OmegaConf

    from kvbench.compose import experiment_jobs
    from kvbench.suites import build_suite
    from kvbench.validation import build_method_from

    real, known = models.estimated_model_nbytes, {}

    def estimated(cfg):
        if not cfg.pretrained.startswith("package:"):
            return 6_738_415_616 * 2
        key = OmegaConf.to_yaml(cfg)
        if key not in known:
            known[key] = real(cfg)
        return known[key]

    monkeypatch.setattr(models, "estimated_model_nbytes", estimated)
    jobs = experiment_jobs(name)
    assert ["method=full"] in jobs
    for job in jobs:
        cfg = compose_config([f"experiment={name}", *job])
        build_method_from(cfg.method)
        plan = build_suite(cfg.suite).validate(cfg.model)
        assert cfg.suite.runner == "efficiency" and plan["points"]
        assert cfg.suite.options.memory_budget_gb is not None


def test_efficiency_quick_runs_every_registered_method_on_the_bundled_model():
    """Derived from the registry: a new method (its conf/method/<name>.yaml) joins the sweep without an edit."""
    from tests.contracts import assert_sweeps_every_method

    built = assert_sweeps_every_method("efficiency_quick")
    assert "h2o_simulated" not in built  # a masking simulation keeps no compressed cache: nothing to measure
    assert compose_config(["experiment=efficiency_quick"]).model.name == "smollm2_135m"


def test_a_registered_method_without_a_config_fails_the_every_method_check(monkeypatch):
    from dataclasses import dataclass

    from kvbench.methods import METHODS, Method
    from tests.contracts import assert_sweeps_every_method

    @dataclass
    class Orphan(Method):
        name: str = "orphan"

    monkeypatch.setitem(METHODS, "orphan", Orphan)
    with pytest.raises(AssertionError, match=r"experiment=efficiency_quick runs no job of method\(s\) orphan"):
        assert_sweeps_every_method("efficiency_quick")
