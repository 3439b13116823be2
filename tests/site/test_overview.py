"""The overview's data: verdict marks and their tooltips read from the roll-up's columns, never recomputed."""

from __future__ import annotations

from kvbench.report import roll_up
from kvbench.site.overview import overview


def test_verdict_tooltips_come_from_the_rollups_test_columns(records_dir):
    rollup = roll_up(records_dir)
    plain = overview(rollup)
    marks = [cell for row in plain["rows"] for cell in row["c"] if cell[3]]
    assert marks and all(cell[2] is None for cell in marks)  # the mark alone: the roll-up has no test columns
    column = "mc/acc"
    rollup.table[f"{column}:verdict"] = rollup.table[f"{column}:vs_full"]
    rollup.table[f"{column}:test"] = "wilcoxon"
    rollup.table[f"{column}:p_value"] = 0.0123
    rollup.table[f"{column}:n_paired"] = 12
    tipped = overview(rollup)
    position = [c["key"] for c in tipped["columns"]].index(column)
    cells = [row["c"][position] for row in tipped["rows"] if row["c"][position][3]]
    assert cells and all(cell[2] == "wilcoxon, p = 0.0123, n = 12" for cell in cells)
