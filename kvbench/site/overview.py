"""The overview page's data: the roll-up table as rows for the browser's sortable, filterable, paged table, and one
Pareto figure per task (quality against the measured compression ratio, one point per configuration).

The numbers and the verdict marks come from the roll-up (:func:`kvbench.report.comparison_table`), never
recomputed here: a mark is the table's ``<column>:verdict`` (else ``:vs_full``); where the roll-up carries the
paired test's columns (:mod:`kvbench.paired`: ``:test``, ``:p_value``, ``:p_holm``, ``:n_paired``/``:n``, ``:mde``) they become the mark's tooltip.
A cell is ``[sort value, text, tooltip, mark]``; the page writes the text with ``textContent`` (kvbench/site/static).
"""

from __future__ import annotations

import html
import math

import pandas as pd

from kvbench.report import Rollup

MARKS = ("worse", "better")


def blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def number(value, digits: str = ".3g") -> str:
    if blank(value):
        return ""
    value = float(value)
    return format(value, digits) if abs(value) < 1e4 else format(value, ".3e")


def run_href(run_id: str, root: str = "") -> str:
    return f"{root}runs/{run_id}.html"


def _column_value(row, column: str, *suffixes: str):
    """The first of ``<column><suffix>`` then the bare ``<suffix>`` (without its colon) present in ``row``."""
    for suffix in suffixes:
        for key in (f"{column}{suffix}", suffix.lstrip(":")):
            if key in row and not blank(row[key]):
                return row[key]
    return None


def verdict(row, column: str) -> tuple[str | None, str | None]:
    """``(mark, tooltip)`` of a metric cell, as the roll-up states it."""
    mark = _column_value(row, column, ":verdict", ":vs_full")
    mark = mark if mark in MARKS else None
    test = _column_value(row, column, ":test")
    if test is None:
        return mark, None
    p_value = _column_value(row, column, ":p_value")
    p_holm = _column_value(row, column, ":p_holm")
    n = _column_value(row, column, ":n_paired", ":n")
    mde = _column_value(row, column, ":mde")
    parts = [f"{test}", f"p = {number(p_value)}" if p_value is not None else None,
             f"Holm p = {number(p_holm)}" if p_holm is not None else None,
             f"n = {int(n)}" if n is not None else None, f"mde = {number(mde)}" if mde is not None else None]
    return mark, ", ".join(p for p in parts if p)


def _metric_cell(row, column: str) -> list:
    value = row[column]
    if blank(value):
        return [None, "", None, None]
    text = number(value)
    if not blank(row.get(f"{column}:low")):
        text += f" [{number(row[f'{column}:low'])}, {number(row[f'{column}:high'])}]"
    mark, tip = verdict(row, column)
    return [float(value), text, tip, mark]


def _plain(value, digits: str = ".3g") -> list:
    if blank(value):
        return [None, "", None, None]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value), number(value, digits), None, None]
    return [str(value), str(value), None, None]


def _error(text) -> list:
    """A failed run's error: its first line (160 characters) in the cell, the whole of it in the tooltip."""
    if blank(text):
        return [None, "", None, None]
    first = str(text).splitlines()[0] if str(text).strip() else str(text)
    return [first, first if len(first) <= 160 else first[:160] + "…", str(text), None]


def overview(rollup: Rollup) -> dict:
    """``{columns, rows}``: one row per record, in the roll-up's order, each with the link to its run page."""
    table = rollup.table
    records = {row["run_id"]: row for row in rollup.frame[["run_id", "suite", "query_aware", "status"]].to_dict("records")}
    metrics = table.attrs.get("metrics", [])
    higher = table.attrs.get("higher_is_better", {})
    extra = [c for c in ("mean_rank", "kv_ratio", "kv_ratio_longest", "kv_ratio_expected", "decode_tok_s", "error")
             if c in table]
    columns = [{"key": k, "title": k} for k in ("method", "params", "model", "suite", "protocol", "status")]
    columns += [{"key": m, "title": f"{m} {'↑' if higher.get(m, True) else '↓'}",
                 "tip": "higher is better" if higher.get(m, True) else "lower is better"} for m in metrics]
    columns += [{"key": c, "title": c, "wrap": c == "error"} for c in extra]
    rows = []
    for run_id, row in zip(table.attrs["run_ids"], table.to_dict("records")):  # dicts: iterrows copies attrs per row
        record = records[run_id]
        protocol = "query-aware" if record["query_aware"] else "query-agnostic"
        ids = [row["method"], row["params"], row["model"], record["suite"], protocol, record["status"]]
        cells = [_plain(v) for v in ids]
        cells += [_metric_cell(row, m) for m in metrics]
        cells += [_error(row[c]) if c == "error" else _plain(row[c], ".2f" if c == "mean_rank" else ".3g") for c in extra]
        rows.append({"id": run_id, "href": run_href(run_id),
                     "f": {"model": str(row["model"]), "method": str(row["method"]), "suite": str(record["suite"]),
                           "protocol": protocol}, "c": cells})
    return {"columns": columns, "rows": rows}


def pareto_figures(rollup: Rollup) -> list[dict]:
    """Per task: a Plotly figure of the primary metric against ``kv_ratio``, one trace per method label, each point's
    hover text naming the configuration and its ``customdata`` the run page."""
    table = rollup.table.assign(_run=list(rollup.table.attrs["run_ids"]))
    plotted = table[table["kv_ratio"].notna()]
    higher = table.attrs.get("higher_is_better", {})
    figures = []
    for index, column in enumerate(table.attrs.get("metrics", [])):
        points = plotted[plotted[column].notna()]
        if points.empty:
            continue
        traces = []
        for label, group in points.groupby("method", sort=True):
            traces.append({
                "type": "scatter", "mode": "markers", "name": html.escape(str(label)), "x": group["kv_ratio"].tolist(),
                "y": group[column].tolist(), "customdata": [run_href(r) for r in group["_run"]],
                "hovertext": [html.escape(f"{m} {p}".strip() + f" · {model}")
                              for m, p, model in zip(group["method"], group["params"], group["model"])],
                "hovertemplate": "%{hovertext}<br>KV ratio %{x:.3g}, score %{y:.4g}<extra></extra>",
                "marker": {"size": 10}})
        direction = "higher is better" if higher.get(column, True) else "lower is better"
        figures.append({"id": f"pareto-{index}", "data": traces, "layout": {
            "title": {"text": html.escape(f"{column} ({direction})")},
            "xaxis": {"title": {"text": "KV ratio (uncompressed / stored bytes, measured)"}, "type": "log",
                      "automargin": True},
            "yaxis": {"title": {"text": html.escape(column)}, "automargin": True, "exponentformat": "e"},
            "hovermode": "closest",
            "margin": {"t": 50, "l": 20, "r": 20, "b": 20}}})
    return figures
