"""Roll-up tables on hand-made records: intervals and n, significance against the paired full run, the
mean rank over every metric (perplexity included), labels of variants and of combined, plots, LaTeX."""

from __future__ import annotations

import pandas as pd
import pytest

from kvbench.report import collect, comparison_table, display_table, lock_warning, write_report
from kvbench.results import RunRecord, write_record
from kvbench.sample_scores import sidecar_path, write_sidecar
from kvbench.statistics import wilson_interval

QUICK = {"name": "quick", "tasks": ["mc", "ppl"], "limit": 12}


def _record(run_id, method, acc, ppl, stored=500, status="complete", label=None, label_params=None,
            acc_ci=(None, None), ppl_ci=(None, None), suite=None, n=12, params=None):
    return RunRecord(
        run_id=run_id, created_at=f"2026-01-01T00:00:{int(run_id):02d}", status=status, model={"name": "m"},
        method={"name": method, "label": label or method, "label_params": label_params or {},
                "params": params or {}, "changed_params": label_params or {}},
        suite=suite or QUICK, metrics={"mc": {"acc": acc}, "ppl": {"word_perplexity": ppl}},
        primary_metrics={"mc": {"name": "acc", "higher_is_better": True},
                         "ppl": {"name": "word_perplexity", "higher_is_better": False}},
        n_samples={"mc": n, "ppl": n}, intervals={k: list(v) for k, v in (("mc", acc_ci), ("ppl", ppl_ci)) if v[0] is not None},
        kv={"full_bytes": 1000, "stored_bytes": stored, "ratio": 1000 / stored}, timing={"decode_tok_s": 20.0},
        env={"device": "cpu (2 cores)", "load_avg_1m": 1.5})


def _scores(acc_hits, doc_ll, n=12) -> list[dict]:
    """Sidecar rows: ``mc`` right on the samples in ``acc_hits``; ``ppl`` one (log-likelihood, 10 words) per doc."""
    return ([{"task": "mc", "id": str(i), "score": float(i in acc_hits)} for i in range(n)]
            + [{"task": "ppl", "id": str(i), "loglikelihood": ll, "weight": 10.0} for i, ll in enumerate(doc_ll)])


def _roll_up_rows(md: str) -> str:
    """The roll-up table's rows of a markdown report (not its legend, not the paired tests below it)."""
    return "\n".join(line for line in md.split("## Paired tests")[0].splitlines() if line.startswith("|"))


FULL_LL = [-23.0 - i % 3 for i in range(12)]


@pytest.fixture
def sweep(tmp_path):
    records = [
        (_record("1", "full", 10 / 12, 10.0, 1000, acc_ci=(0.70, 0.90), ppl_ci=(9.0, 11.0)),
         _scores(range(10), FULL_LL)),
        (_record("2", "h2o", 0.0, 30.0, 200, acc_ci=(0.0, 0.0), ppl_ci=(25.0, 36.0)),  # worse on every sample
         _scores([], [ll - 10 for ll in FULL_LL])),
        (_record("3", "h2o", 9 / 12, 10.5, 200, label="h2o_local", label_params={"recent_ratio": 0.3},
                 acc_ci=(0.66, 0.88), ppl_ci=(9.5, 11.6)),  # one discordant sample, log-likelihoods either way
         _scores(range(9), [ll + (0.5 if i % 2 else -0.6) for i, ll in enumerate(FULL_LL)])),
        (_record("4", "combined", 8 / 12, 12.0, 50, label_params={"layers": None, "tokens_params": {"heavy_ratio": 0.2}},
                 acc_ci=(0.55, 0.65), ppl_ci=(11.2, 12.9)),  # acc 2 discordant pairs, perplexity worse on every doc
         _scores(range(8), [ll - 2 for ll in FULL_LL])),
        (_record("5", "minicache", 0.1, 99.0, 700, status="failed"), None),
    ]
    records[4][0].error = "MethodConfigError: method.gamma=1.5 must be in [0, 1]"
    for i, (record, scores) in enumerate(records):
        write_record(tmp_path / str(i) / "record.json", record)
        if scores is not None:
            write_sidecar(tmp_path / str(i) / "record.json", scores)
    return tmp_path


def test_cells_carry_value_interval_and_n_and_a_paired_test_against_full(sweep):
    table = comparison_table(sweep).set_index("method")
    h2o = table.loc["h2o"]
    low, high = wilson_interval(0, 12)
    assert (h2o["mc/acc"], h2o["mc/acc:low"], h2o["mc/acc:high"], h2o["mc/acc:n"]) == (0.0, low, high, 12)
    assert low == 0 < high  # a proportion's interval is never [0, 0]
    assert h2o["mc/acc:vs_full"] == "worse" and h2o["ppl/word_perplexity:vs_full"] == "worse"
    assert h2o["mc/acc:test"] == "exact McNemar" and h2o["mc/acc:p_value"] == pytest.approx(2 * 0.5 ** 10)
    # Holm over 3 rows x 2 metrics: two perplexity p-values (2/4096) rank first, so this third one is multiplied by 4
    assert h2o["mc/acc:p_holm"] == pytest.approx(4 * 2 * 0.5 ** 10)
    assert table.loc["h2o_local", "mc/acc:vs_full"] == "same"  # one discordant pair: not marked
    assert table.loc["h2o_local", "mc/acc:mde"] == pytest.approx(0.5)  # at least 6 of 12 discordant pairs needed
    assert table.loc["combined", "ppl/word_perplexity:vs_full"] == "worse"  # every document lost log-likelihood
    assert table.loc["combined", "mc/acc:vs_full"] == "same"
    assert pd.isna(table.loc["full", "mc/acc:vs_full"])
    shown = display_table(comparison_table(sweep)).set_index("method")
    assert list(shown.columns[3:5]) == ["mc/acc (↑, n=12)", "ppl/word_perplexity (↓, n=12)"]  # the suite's order
    assert shown.loc["h2o", "mc/acc (↑, n=12)"] == f"0 [{low:.3g}, {high:.3g}] ▼"
    assert shown.loc["h2o_local", "mc/acc (↑, n=12)"].endswith("]")  # not significant: no mark


def test_zero_of_six_against_four_of_six_is_not_marked_and_says_what_it_could_detect(tmp_path):
    # the paper_h2o_lm_eval_mini case: full 4/6, the method 0/6; the old interval rule marked it worse
    for i, (method, hits) in enumerate((("full", range(4)), ("h2o", ()))):
        path = tmp_path / method / "record.json"
        write_record(path, _record(str(i + 1), method, len(hits) / 6, 10.0, n=6, acc_ci=(len(hits) / 6,) * 2))
        write_sidecar(path, _scores(hits, FULL_LL[:6], n=6))
    h2o = comparison_table(tmp_path).set_index("method").loc["h2o"]
    assert h2o["mc/acc:vs_full"] == "same" and h2o["mc/acc:p_value"] == pytest.approx(0.125)
    assert h2o["mc/acc:mde"] == pytest.approx(1.0)  # at n = 6 only 0/6 against 6/6 is detectable
    md = write_report(tmp_path, "small", tmp_path / "reports", formats=("md",))["md"].read_text()
    assert "▼" not in _roll_up_rows(md) and "|Δ| ≥ 1" in md


def test_a_percentage_column_reports_a_row_of_zeros_in_points_like_the_others(tmp_path):
    # RULER's string_match_all is x100; a method that scores 0 on every sample cannot tell the unit by itself
    for i, (method, hits) in enumerate((("full", range(4)), ("h2o", ()))):
        path = tmp_path / method / "record.json"
        write_record(path, _record(str(i + 1), method, 100 * len(hits) / 6, 10.0, n=6))
        write_sidecar(path, _scores(hits, FULL_LL[:6], n=6))
    h2o = comparison_table(tmp_path).set_index("method").loc["h2o"]
    low, high = wilson_interval(0, 6)
    assert (h2o["mc/acc:low"], h2o["mc/acc:high"]) == (0.0, pytest.approx(100 * high))
    assert h2o["mc/acc:diff"] == pytest.approx(-400 / 6) and h2o["mc/acc:diff_low"] == pytest.approx(-400 / 6)


def test_a_record_without_per_sample_scores_is_not_testable_never_compared_by_intervals(sweep):
    sidecar_path(sweep / "0" / "record.json").unlink()  # full's sidecar deleted
    table = comparison_table(sweep).set_index("method")
    assert set(table.loc[["h2o", "h2o_local", "combined"], "mc/acc:vs_full"]) == {"untestable"}
    assert table.loc["h2o", "mc/acc:test"] == "not testable: no per-sample scores"
    md = write_report(sweep, "old", sweep / "reports", formats=("md",))["md"].read_text()
    assert "not testable: no per-sample scores" in md and "▼" not in _roll_up_rows(md)


def test_mean_rank_includes_the_perplexity_column_in_its_own_direction(sweep):
    table = comparison_table(sweep).set_index("method")
    # acc ranks (higher first): full 1, h2o_local 2, combined 3, h2o 4; ppl ranks (lower first): full 1,
    # h2o_local 2, combined 3, h2o 4 -> perplexity counts, and lower perplexity ranks better
    assert table.loc["full", "mean_rank"] == 1.0 and table.loc["h2o", "mean_rank"] == 4.0
    assert pd.isna(table.loc["minicache", "mean_rank"])


def test_variants_and_combined_are_labelled_by_their_own_name_and_short_params(sweep):
    table = comparison_table(sweep)
    labels = dict(zip(table["method"], table["params"]))
    assert labels["h2o_local"] == "recent_ratio=0.3"
    assert labels["combined"] == "layers=null tokens.heavy_ratio=0.2"  # never a Python dict
    assert labels["full"] == "" and "{" not in "".join(labels.values())


def test_failed_runs_are_listed_last_with_their_error_and_no_numbers(sweep):
    table = comparison_table(sweep)
    assert list(table["method"]) == ["full", "combined", "h2o", "h2o_local", "minicache"]
    failed = table.iloc[-1]
    assert failed["error"] == "MethodConfigError: method.gamma=1.5 must be in [0, 1]"
    assert pd.isna(failed["mc/acc"]) and pd.isna(failed["kv_ratio"]) and pd.isna(failed["mean_rank"])


def test_kv_vs_full_pairing_uses_the_full_run_of_the_same_workload(tmp_path):
    short = {"name": "quick", "tasks": ["mc", "ppl"], "limit": 2}
    for name, record, hits, n in (("a", _record("1", "full", 1.0, 10, 1000), range(12), 12),
                                  ("b", _record("2", "full", 0.0, 10, 60, suite=short, n=2), (), 2),
                                  ("c", _record("3", "h2o", 1.0, 10, 9, suite=short, n=2), (0, 1), 2)):
        write_record(tmp_path / name / "record.json", record)
        write_sidecar(tmp_path / name / "record.json", _scores(hits, FULL_LL[:n], n=n))
    table = comparison_table(tmp_path).set_index(["method", "params"])
    # paired with the limit-2 full run (0/2), not the limit-12 one (12/12): two samples, both gained
    assert table.loc[("h2o", ""), "mc/acc:n_paired"] == 2 and table.loc[("h2o", ""), "mc/acc:diff"] == 1.0


def test_write_report_writes_markdown_csv_latex_and_a_titled_pareto_plot(sweep, tmp_path):
    paths = write_report(sweep, "demo", tmp_path / "reports", formats=("md", "csv", "png", "tex"))
    md = paths["md"].read_text()
    assert "model m; suite quick; limit 12; device cpu (2 cores)" in md and "| h2o_local " in md
    csv = pd.read_csv(paths["csv"])
    assert list(csv["method"]) == ["full", "combined", "h2o", "h2o_local", "minicache"]
    tex = paths["tex"].read_text()
    assert r"\begin{tabular}" in tex and r"$\blacktriangledown$" in tex and "h2o\\_local" in tex
    assert paths["png"].stat().st_size > 10_000


def test_a_table_mixing_records_from_different_lock_files_carries_a_warning(tmp_path, capsys):
    for i, digest in enumerate(["a" * 64, "a" * 64, "b" * 64]):
        record = _record(str(i + 1), "full" if i == 0 else "h2o", 0.5, 10.0, params={"x": i},
                         label_params={"x": i})
        record.env = {"lock_sha256": digest}
        write_record(tmp_path / "mixed" / str(i) / "record.json", record)
    frame, _ = collect(tmp_path / "mixed")
    message = lock_warning(frame)
    assert message.startswith("warning: this table mixes records from 2 different lock files")
    paths = write_report(tmp_path / "mixed", "mixed", tmp_path / "reports")
    assert message in paths["md"].read_text() and message in capsys.readouterr().err


def test_every_report_opens_with_its_provenance(tmp_path):
    record = _record("1", "full", 0.5, 10.0)
    record.config = {"model": {"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "dtype": "float32"}}
    record.model = {"name": "m", "dtype": "float32"}
    record.env = {"git_commit": "abc1234", "git_dirty": True, "lock_sha256": "f" * 64, "torch_threads": 2,
                  "cpu_model": "AMD EPYC", "load_avg_1m": 3.5, "device": "cpu (2 cores)"}
    write_record(tmp_path / "runs" / "a" / "record.json", record)
    md = write_report(tmp_path / "runs", "p", tmp_path / "reports", formats=("md",),
                      command="kvbench-report runs --name p")["md"].read_text()
    line = next(line for line in md.splitlines() if line.startswith("Provenance: "))
    for part in ("command `kvbench-report runs --name p`", f"records under `{tmp_path / 'runs'}`",
                 "kvbench commit abc1234 (dirty)", f"lock sha256 {'f' * 16}", "torch threads 2", "CPU AMD EPYC", "1-min load 3.5-3.5",
                 "weights GGUF Q4_1, dequantised to float32", "n per task 12"):
        assert part in line


def test_a_continuous_metric_at_zero_in_full_is_not_a_proportion(tmp_path):
    # fidelity's KL: full scores exactly 0 on every prompt; that column is continuous (no Wilson, no McNemar)
    suite = {"name": "fidelity", "tasks": ["prose"], "limit": None}
    for i, (method, kl) in enumerate((("full", [0.0] * 12), ("kivi", [0.1 + 0.01 * j for j in range(12)]))):
        record = RunRecord(run_id=str(i + 1), created_at=f"2026-01-01T00:00:0{i}", status="complete",
                           model={"name": "m"}, method={"name": method, "label": method}, suite=suite,
                           metrics={"prose": {"kl": sum(kl) / 12}},
                           primary_metrics={"prose": {"name": "kl", "higher_is_better": False}},
                           n_samples={"prose": 12}, intervals={"prose": [min(kl), max(kl)]})
        write_record(tmp_path / method / "record.json", record)
        write_sidecar(tmp_path / method / "record.json",
                      [{"task": "prose", "id": str(j), "score": v} for j, v in enumerate(kl)])
    table = comparison_table(tmp_path).set_index("method")
    assert (table.loc["full", "prose/kl:low"], table.loc["full", "prose/kl:high"]) == (0.0, 0.0)
    assert table.loc["kivi", "prose/kl:test"] == "sign-flip permutation"
    assert table.loc["kivi", "prose/kl:vs_full"] == "worse"  # 12 of 12 prompts diverge: p = 2/4096


def test_every_row_says_whether_the_question_was_visible_at_compression_time(tmp_path):
    ruler = {"name": "ruler", "tasks": ["mc", "ppl"], "limit": 12}
    for name, record in (
            ("a", _record("1", "full", 1.0, 10, suite=ruler | {"question_visible": {"mc": "no", "ppl": "no"}})),
            ("b", _record("2", "snapkv", 1.0, 10, suite=ruler | {"query_aware": True,
                                                                  "question_visible": {"mc": "yes", "ppl": "yes"}})),
            ("c", _record("3", "h2o", 1.0, 10, suite=QUICK | {"question_visible": {"mc": "no", "ppl": "whole prompt"}})),
            ("d", _record("4", "tova", 1.0, 10))):  # a record older than the field
        write_record(tmp_path / name / "record.json", record)
    table = comparison_table(tmp_path).set_index("method")
    assert table["question_visible"].to_dict() == {"full": "no", "snapkv": "yes", "h2o": "mc: no; ppl: whole prompt",
                                                   "tova": "not recorded"}
    md = write_report(tmp_path, "r", tmp_path / "out", formats=("md",))["md"].read_text()
    assert "`question_visible`: whether the question was visible at compression time" in md
    snapkv_row = next(line for line in _roll_up_rows(md).splitlines() if "| snapkv " in line)
    assert "| yes " in snapkv_row
def test_an_engine_row_serving_full_is_compared_with_kvbenchs_full_not_taken_for_it(tmp_path):
    # engine=vllm runs method=full through vLLM: its row is the engine's (label vllm), paired against kvbench's full
    engine = _record("2", "full", 4 / 6, 10.0, n=6, label="vllm")
    engine.config = {"engine": {"backend": "vllm", "name": "vllm"}}
    for name, record, hits in (("full", _record("1", "full", 4 / 6, 10.0, n=6), range(4)), ("vllm", engine, range(4))):
        write_record(tmp_path / name / "record.json", record)
        write_sidecar(tmp_path / name / "record.json", _scores(hits, FULL_LL[:6], n=6))
    table = comparison_table(tmp_path).set_index("method")
    assert set(table.index) == {"full", "vllm"}
    assert table.loc["vllm", "mc/acc:vs_full"] == "same" and table.loc["vllm", "mc/acc:p_value"] == pytest.approx(1.0)
