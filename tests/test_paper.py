"""A paper's numbers beside ours (kvbench-report DIR --paper CSV) and the dry run of the paper experiments."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from kvbench import models, results
from kvbench.cli import report_main
from kvbench.compose import compose_config
from kvbench.config import CONF_DIR
from kvbench.dry_run import dry_run
from kvbench.paper import PaperError, read_paper
from kvbench.report import write_report

ROOT = Path(__file__).resolve().parents[1]
HEADER = "model,method,params,mini_params,task,mini_task,metric,value,source,scale\n"


def _record(run_id, method, label_params=None, model="smollm2_135m", label=None, **metrics):
    return results.RunRecord(
        run_id=run_id, created_at=f"2026-01-01T00:00:0{run_id}", status="complete", model={"name": model},
        method={"name": method, "label": label or method, "label_params": label_params or {}, "params": {}},
        suite={"name": "quick", "tasks": list(metrics)}, metrics={t: {"acc": v} for t, v in metrics.items()},
        primary_metrics={t: {"name": "acc", "higher_is_better": True} for t in metrics},
        kv={"full_bytes": 100, "stored_bytes": 50, "ratio": 2.0}, timing={"decode_tok_s": 10.0})


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    for i, (method, params, acc) in enumerate([("full", {}, 0.9), ("h2o", {"protocol": "simulate"}, 0.8),
                                               ("h2o", {}, 0.6), ("h2o", {"heavy_ratio": 0.3}, 0.7)]):
        results.write_record(root / f"{i}" / "record.json", _record(str(i), method, params, recall=acc))
    return root


def _csv(tmp_path, body, header=HEADER):
    path = tmp_path / "paper.csv"
    path.write_text(header + body)
    return path


def test_rows_match_on_method_and_the_parameters_the_paper_names_and_paper_only_rows_stay(sweep, tmp_path, capsys):
    paper = _csv(tmp_path, "opt_30b,full,,-,copa,recall,acc,85.0,Table 1,0.01\n"
                           "opt_30b,h2o,protocol=simulate,protocol=simulate,copa,recall,acc,84.0,Table 1,0.01\n"
                           "opt_30b,h2o_local,protocol=simulate,protocol=simulate,copa,recall,acc,48.0,Table 1,0.01\n"
                           "opt_30b,h2o,protocol=simulate,,piqa,,acc,78.45,Table 1,0.01\n")
    paths = write_report(sweep, "t", tmp_path / "reports", ("md",), paper=paper)
    side = pd.read_csv(paths["paper_csv"]).fillna({"params": "", "model": ""})
    assert len(side) == 5
    rows = {(m, p): r for m, p, r in zip(side["method"], side["params"], side.to_dict("records"))}
    assert rows[("full", "")]["copa: ours"] == pytest.approx(90.0)  # ours in the paper's unit (scale 0.01)
    assert rows[("full", "")]["copa: Δ"] == pytest.approx(5.0) and rows[("full", "")]["paper model"] == "opt_30b"
    simulated = rows[("h2o", "protocol=simulate")]
    assert simulated["copa: paper"] == 84.0 and simulated["copa: Δ"] == pytest.approx(-4.0)
    assert simulated["piqa: paper"] == 78.45 and pd.isna(simulated["piqa: ours"])  # no stand-in task: the paper's alone
    # real eviction (the paper names `protocol`, so its default `real` must match) has no paper row: ours only
    assert rows[("h2o", "")]["copa: ours"] == pytest.approx(60.0) and pd.isna(rows[("h2o", "")]["copa: paper"])
    # heavy_ratio is never named by the paper file (ignored), but protocol=real != simulate: no paper row
    assert pd.isna(rows[("h2o", "heavy_ratio=0.3")]["copa: paper"])
    assert rows[("h2o_local", "protocol=simulate")]["model"] == ""  # paper-only, visible
    assert rows[("h2o_local", "protocol=simulate")]["copa: paper"] == 48.0
    assert pd.isna(rows[("h2o", "")]["paper params"])  # no paper row
    assert simulated["paper params"] == "protocol=simulate"
    assert "warning" not in capsys.readouterr().err
    assert "ours = `recall/acc`, ours ÷ 0.01" in paths["paper_md"].read_text()


def test_a_run_of_the_papers_model_matches_on_params_not_mini_params(tmp_path):
    root = tmp_path / "sweep"
    results.write_record(root / "a" / "record.json", _record("1", "svd_gqa", {"kv_heads": 16}, model="llama2_7b", wikitext=7.0))
    results.write_record(root / "b" / "record.json", _record("2", "svd_gqa", {}, model="llama2_7b", wikitext=9.0))
    paper = _csv(tmp_path, "llama2_7b,svd_gqa,kv_heads=16,-,wikitext,ppl,word_perplexity,7.08,PAPERS.md,1\n")
    side = pd.read_csv(write_report(root, "t", tmp_path / "r", ("md",), paper=paper)["paper_csv"]).astype(object).fillna("")
    assert sorted(zip(side["params"], side["wikitext: paper"].astype(str))) == [("", ""), ("kv_heads=16", "7.08")]


def test_no_match_is_a_warning_naming_the_unmatched_paper_rows(sweep, tmp_path, capsys):
    paper = _csv(tmp_path, "opt_30b,snapkv,budget_tokens=128,,copa,,acc,50.0,Table 1,1\n")
    paths = write_report(sweep, "t", tmp_path / "reports", ("md",), paper=paper)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"kvbench-report: warning: no row of {paper} matches a run under {sweep}")
    assert "unmatched paper rows snapkv budget_tokens=128" in err[0]
    assert paths["paper_md"].exists()  # the paper-only table is still written


@pytest.mark.parametrize("body, header, message", [
    ("x,full,,copa,acc,1,T,1\n", "model,method,params,task,metric,value,source,colour\n",
     "unknown column 'colour' (valid: model, method, params, task, metric, value, source, mini_method, mini_params"),
    ("x,full,,copa,1,T\n", "model,method,params,task,value,source\n", "missing column(s) metric"),
    ("x,full,,copa,acc,high,T\n", "model,method,params,task,metric,value,source\n", "line 2: value 'high'"),
    ("x,full,kv_heads,copa,acc,1,T\n", "model,method,params,task,metric,value,source\n", "'kv_heads' is not key=value"),
])
def test_a_bad_paper_csv_is_one_line_from_kvbench_report(sweep, tmp_path, capsys, body, header, message):
    paper = _csv(tmp_path, body, header)
    with pytest.raises(SystemExit) as exit_:
        report_main([str(sweep), "--paper", str(paper), "--reports-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and message in err[0] and err[0].startswith("kvbench-report: error: ")
    assert not (tmp_path / "r").exists()  # nothing written before the CSV is known good


def test_every_committed_paper_csv_reads():
    csvs = sorted((ROOT / "experiments").glob("*/paper_*.csv"))
    assert len(csvs) >= 6
    for path in csvs:
        assert read_paper(path)


# -- the paper experiments: each composes, each dry-runs without loading weights --------------------------------
PAPER_EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("paper_*.yaml"))


def test_every_paper_experiment_has_a_mini_twin_and_a_paper_csv():
    full = [name for name in PAPER_EXPERIMENTS if not name.endswith("_mini")]
    assert len(full) >= 6 and all(f"{name}_mini" in PAPER_EXPERIMENTS for name in full)
    for name in PAPER_EXPERIMENTS:
        cfg = compose_config([f"experiment={name}"])
        assert cfg.paper and (ROOT / cfg.paper).is_file(), name
        assert cfg.report_name == name
        read_paper(ROOT / cfg.paper)


@pytest.mark.parametrize("name", [name for name in PAPER_EXPERIMENTS if name.endswith("_mini")])
def test_each_mini_compares_its_stand_in_in_the_papers_unit(name):
    # RULER and LongBench score x100, as the papers print; lm-eval's accuracies are fractions and need scale 0.01
    cfg = compose_config([f"experiment={name}"])
    percent_suite = cfg.suite.runner in ("ruler", "longbench")
    for row in read_paper(ROOT / cfg.paper):
        if not row.mini_task or "perplexity" in row.metric or row.value <= 1:
            continue
        assert row.scale == (1.0 if percent_suite else 0.01), (name, row.line, row.mini_task, row.scale)


def _sweep_jobs(name: str) -> list[list[str]]:
    """The overrides of every job an experiment's sweep would launch (Hydra's basic sweeper: the product)."""
    import itertools

    from omegaconf import OmegaConf

    params = OmegaConf.load(CONF_DIR / "experiment" / f"{name}.yaml").hydra.sweeper.params
    axes = [[f"{key}={value.strip()}" for value in str(values).split(",")] for key, values in params.items()]
    return [list(job) for job in itertools.product(*axes)]


@pytest.mark.parametrize("name", [name if name.endswith("_mini") else pytest.param(name, marks=pytest.mark.slow)
                                  for name in PAPER_EXPERIMENTS])  # the full-size sweeps: the slow tier
def test_every_job_of_every_paper_experiment_passes_the_dry_run_without_loading(name, monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a dry run loaded the model"))
    jobs = _sweep_jobs(name)
    assert jobs
    for job in jobs:
        method = next((o.split("=", 1)[1] for o in job if o.startswith("method=")), None)
        line = dry_run(compose_config([f"experiment={name}", *job]), method)
        assert ": ok" in line, line
        if name.endswith("_mini"):  # a miniature needs nothing from the network: every check ran
            assert "not checked offline" not in line, line


def test_the_dry_run_flag_prints_every_job_of_a_sweep_and_runs_nothing(run_cli, tmp_path):
    name = "paper_h2o_lm_eval_mini"
    result = run_cli([f"experiment={name}", "dry_run=true", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                      f"records_dir={tmp_path / 'records'}"], ROOT, KVBENCH_CACHE_DIR=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [line for line in result.stdout.splitlines() if line.startswith("kvbench: dry run job ")]
    assert len(jobs) == len(_sweep_jobs(name)) == 5 and all(line.endswith(": ok") for line in jobs)
    assert "method=h2o_simulated (simulated)" in result.stdout
    assert f"kvbench: dry run: {len(jobs)} jobs validated, nothing loaded or run" in result.stdout
    assert not list(tmp_path.rglob("record.json"))  # nothing ran, nothing recorded
