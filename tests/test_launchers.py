"""Beyond one process: Hydra's launchers keep kvbench's guarantees, and data-parallel equals one process.

The launcher tests run the real `kvbench` (or `torchrun -m kvbench`) in a subprocess on the tiny model: a process
(or several) is what they test, so they are in the slow tier (`make test-slow`). The Slurm presets compose
in-process, in the fast tier.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvbench.results import read_record

ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_SILENT="true", TOKENIZERS_PARALLELISM="false")
BIN = Path(sys.executable).parent
JOB = ["model=tiny_llama", "suite.limit=1", "suite.tasks=[kvbench_recall_mc]"]


def _sweep(tmp_path, name, *launcher, logger="none"):
    out = tmp_path / name
    args = [BIN / "kvbench", "-m", *launcher, *JOB, "method=full,h2o,minicache", f"logger={logger}",
            f"logger.dir={out}", f"records_dir={out / 'records'}", f"reports_dir={out / 'reports'}",
            f"hydra.sweep.dir={out / 'sweep'}", "report_name=t"]
    result = subprocess.run(args, cwd=tmp_path, env=ENV | {"KVBENCH_CACHE_DIR": str(tmp_path / "cache")},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = {p.parent.name: read_record(p) for p in (out / "sweep").glob("*/record.json")}
    return out, records


def _measured(records):
    return {job: (r.status, r.metrics, r.kv["stored_bytes"], r.kv["full_bytes"]) for job, r in records.items()}


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory):
    """The reference: the same sweep through Hydra's basic launcher (one job after another)."""
    root = tmp_path_factory.mktemp("basic")
    return _sweep(root, "basic")[1]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [["hydra/launcher=submitit_local"], ["hydra/launcher=workers", "hydra.launcher.n_jobs=2"]],
                         ids=["submitit_local", "joblib"])
def test_launchers_give_the_basic_launchers_records_table_and_grouped_wandb_runs(tmp_path, launcher, basic_sweep):
    from kvbench.tracking import read_offline_run

    basic = basic_sweep
    out, parallel = _sweep(tmp_path, "parallel", *launcher, logger="wandb_offline")
    assert _measured(parallel) == _measured(basic) and len(basic) == 3
    table = (out / "reports" / "t.md").read_text()  # the roll-up, written by the submitting process
    assert all(f"| {m} " in table for m in ("full", "h2o", "minicache"))
    runs = [read_offline_run(d) for d in sorted((out / "wandb").glob("offline-run-*"))]
    assert len(runs) == 4  # three jobs and the sweep's roll-up
    assert {r["run"]["group"] for r in runs} == {"sweep"}  # the sweep's id (its directory's name)
    assert sorted(r["run"]["job_type"] for r in runs) == ["full", "h2o", "minicache", "rollup"]
    jobs = [r for r in runs if r["run"]["job_type"] != "rollup"]
    logged = [{key.split(".")[0] for row in r["history"] for key in row} for r in jobs]
    assert all("kvbench_recall_mc/samples" in keys for keys in logged)  # per-sample tables (wandb.Table)
    rollup = next(r for r in runs if r["run"]["job_type"] == "rollup")
    assert {"rollup/table", "rollup/pareto"} <= {key.split(".")[0] for row in rollup["history"] for key in row}


@pytest.mark.slow
def test_a_killed_joblib_sweep_redoes_nothing_that_finished(tmp_path):
    out = tmp_path / "run"
    args = [BIN / "kvbench", "-m", "hydra/launcher=workers", "hydra.launcher.n_jobs=1", *JOB,
            "method=full,h2o,minicache,h2o_local", "logger=none", f"records_dir={out / 'records'}",
            f"reports_dir={out / 'reports'}", f"hydra.sweep.dir={out / 'sweep'}"]
    env = ENV | {"KVBENCH_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    first_job = out / "sweep" / "0_full" / "record.json"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if first_job.exists() and read_record(first_job).status == "complete":
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers
    proc.wait(timeout=30)
    finished = {p.parent.name: read_record(p).run_id for p in (out / "sweep").glob("*/record.json")
                if read_record(p).status == "complete"}
    assert "0_full" in finished
    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    after = {p.parent.name: read_record(p) for p in (out / "sweep").glob("*/record.json")}
    assert len(after) == 4 and all(r.status == "complete" for r in after.values())
    assert {job: after[job].run_id for job in finished} == finished  # reused, not redone
    assert not list(out.rglob(".*.tmp"))


@pytest.mark.slow
def test_data_parallel_over_two_cpu_processes_equals_one_process(tmp_path):
    job = ["model=tiny_llama", "method=h2o", "logger=none", "suite.limit=4",
           "suite.tasks=[kvbench_recall_mc,kvbench_prose_ppl,kvbench_passkey]"]
    env = ENV | {"KVBENCH_CACHE_DIR": str(tmp_path / "cache")}
    one = subprocess.run([BIN / "kvbench", *job, f"records_dir={tmp_path / 'r1'}", f"hydra.run.dir={tmp_path / 'one'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([BIN / "torchrun", "--nproc_per_node", "2", "-m", "kvbench", *job,
                          f"records_dir={tmp_path / 'r2'}", f"hydra.run.dir={tmp_path / 'two'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = read_record(tmp_path / "one" / "record.json"), read_record(tmp_path / "two" / "record.json")
    assert b.status == "complete" and b.metrics == a.metrics and b.n_samples == a.n_samples
    assert b.kv == a.kv  # bytes summed over the ranks: the same requests, measured once each
    # really split: each rank generated for 2 of the 4 passkey requests (one process: 4 of 4)
    assert "kvbench generate_until: 100%|██████████| 2/2" in two.stderr and "| 4/4" in one.stderr


@pytest.mark.slow
def test_data_parallel_on_a_suite_that_cannot_be_split_is_one_line(tmp_path):
    result = subprocess.run([BIN / "torchrun", "--nproc_per_node", "2", "-m", "kvbench", "model=tiny_llama",
                             "suite=ruler", "logger=none", f"records_dir={tmp_path / 'r'}", f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=tmp_path, env=ENV | {"KVBENCH_CACHE_DIR": str(tmp_path / "cache")},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("kvbench: error:")]
    assert errors == ["kvbench: error: suite.runner=ruler cannot be split over 2 data-parallel processes (lm_eval "
                      "suites can); run it in one process, or spread a sweep's jobs over devices with a launcher "
                      "(README: Scaling out)"]


def test_slurm_presets_compose_with_the_intended_settings():
    from kvbench.compose import compose_config

    one = compose_config(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], with_hydra=True).hydra.launcher
    assert (one.partition, one.gpus_per_node, one.cpus_per_task, one.mem_gb, one.timeout_min, one.array_parallelism) == (
        "gpu", 1, 8, 64, 720, 16)
    assert one._target_.endswith("SlurmLauncher")
    eight = compose_config(["hydra/launcher=slurm_8gpu"], with_hydra=True).hydra.launcher
    assert (eight.gpus_per_node, eight.timeout_min) == (8, 720)
    workers = compose_config(["hydra/launcher=workers"], with_hydra=True).hydra.launcher
    assert workers.n_jobs == 2 and workers._target_.endswith("JoblibLauncher")


def test_cfg_hydra_shows_the_slurm_settings(run_cli, tmp_path):
    result = run_cli(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra", "-p", "hydra.launcher"],
                     tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "partition: gpu" in result.stdout and "gpus_per_node: 1" in result.stdout and "timeout_min: 720" in result.stdout
