"""The overview's data: verdict marks and their tooltips read from the roll-up's columns, never recomputed."""

from __future__ import annotations

from kvbench.report import roll_up
from kvbench.site.overview import overview


def test_verdict_tooltips_come_from_the_rollups_test_columns(records_dir):
    rollup = roll_up(records_dir)
    column = "mc/acc"
    position = [c["key"] for c in overview(rollup)["columns"]].index(column)
    cells = [row["c"][position] for row in overview(rollup)["rows"]]
    # records without per-sample sidecars: no mark, and the tooltip says why no test was run
    assert not any(cell[3] for cell in cells)
    assert any(cell[2] and cell[2].startswith("not testable: no per-sample scores") for cell in cells)
    compressed = rollup.table["method"] != "full"
    rollup.table.loc[compressed, f"{column}:vs_full"] = "worse"
    rollup.table[f"{column}:test"] = "wilcoxon"
    rollup.table[f"{column}:p_value"] = 0.0123
    rollup.table[f"{column}:n_paired"] = 12
    tipped = [row["c"][position] for row in overview(rollup)["rows"]]
    marked = [cell for cell in tipped if cell[3]]
    assert marked and all(cell[3] == "worse" and cell[2] == "wilcoxon, p = 0.0123, n = 12" for cell in marked)