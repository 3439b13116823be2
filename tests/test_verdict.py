"""Verdict lines from the paired test and the paper's direction: reproduces, does not reproduce, not testable."""

from __future__ import annotations

import pandas as pd

from kvbench.paper import PaperRow, paper_table, verdict_lines
from kvbench.verdict import verdict

COLUMN = "copa/acc"


def _ours(vs_full, diff, mde, p=0.01, n=100, method="h2o"):
    return pd.Series({"model": "m", "method": method, "params": "", COLUMN: 0.5, f"{COLUMN}:vs_full": vs_full,
                      f"{COLUMN}:diff": diff, f"{COLUMN}:mde": mde, f"{COLUMN}:p_holm": p, f"{COLUMN}:n_paired": n,
                      f"{COLUMN}:test": "exact McNemar"})


def test_a_significant_loss_in_the_papers_direction_reproduces_and_the_other_way_does_not():
    assert verdict(_ours("worse", -0.3, 0.1), COLUMN, -37.0, 0.01, True)[0] == "reproduces"
    assert verdict(_ours("better", 0.3, 0.1), COLUMN, -37.0, 0.01, True)[0] == "does not reproduce"


def test_nothing_found_is_not_testable_when_the_papers_gap_is_below_what_this_n_detects():
    found, why = verdict(_ours("same", -0.67, 1.0, p=0.125, n=6), COLUMN, -1.0, 0.01, True)
    assert found == "not testable at this n" and "below what this n can detect" in why and "n=6" in why
    # the paper's 37-point gap would have been found at this n (detectable from 20 points): it does not reproduce
    assert verdict(_ours("same", 0.0, 0.2), COLUMN, -37.0, 0.01, True)[0] == "does not reproduce"


def test_rows_without_scores_or_without_a_run_say_so():
    assert verdict(_ours("untestable", None, None), COLUMN, -1.0, 1, True)[0] == "not testable: no per-sample scores"
    assert verdict(None, COLUMN, -1.0, 1, True)[0] == "not run"


def test_the_paper_table_carries_a_verdict_per_claim_and_keeps_paper_only_rows():
    rows = [PaperRow("opt", "full", {}, "copa", "acc", 85.0, "T1", mini_params={}, mini_task="copa", scale=0.01),
            PaperRow("opt", "h2o", {}, "copa", "acc", 48.0, "T1", mini_params={}, mini_task="copa", scale=0.01),
            PaperRow("opt", "tova", {}, "copa", "acc", 80.0, "T1", mini_params={}, mini_task="copa", scale=0.01)]
    full = _ours(None, None, None, method="full")
    table = pd.DataFrame([full, _ours("worse", -0.3, 0.1)])
    table.attrs = {"metrics": [COLUMN], "higher_is_better": {COLUMN: True}}
    side, matched = paper_table(table, rows)
    assert matched == 2
    by_method = side.set_index("method")
    assert by_method.loc["h2o", "copa: verdict"] == "reproduces"
    assert by_method.loc["tova", "copa: verdict"] == "not run" and by_method.loc["tova", "model"] == ""  # paper-only
    lines = verdict_lines(side)
    assert "- `h2o` on `copa`: **reproduces**. paper Δ -37" in lines and "`tova` on `copa`: **not run**" in lines
