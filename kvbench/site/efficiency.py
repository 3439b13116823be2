"""The efficiency page's data: throughput against batch, decode ms/step against context (Plotly figures), the max
batch per method, and the roofline where the records carry one. The tables are the report's own
(:mod:`kvbench.efficiency_report`); this module only shapes them for the page.
"""

from __future__ import annotations

import html
import json

import pandas as pd

from kvbench.efficiency_report import efficiency_frame, max_batch_table, points_table
from kvbench.site.overview import blank, number


def _lines(points: pd.DataFrame, x: str, y: str, group: list[str], name) -> list[dict]:
    traces = []
    for key, rows in points.sort_values(x).groupby(group, sort=True):
        traces.append({"type": "scatter", "mode": "lines+markers", "name": html.escape(name(key)),
                       "x": rows[x].tolist(), "y": rows[y].tolist(),
                       "hovertemplate": f"{html.escape(name(key))}<br>{x} %{{x}}, {y} %{{y:.4g}}<extra></extra>"})
    return traces


def _layout(title: str, x: str, y: str, log_x: bool = False) -> dict:
    return {"title": {"text": title}, "xaxis": {"title": {"text": x}, "type": "log" if log_x else "linear", "automargin": True},
            "yaxis": {"title": {"text": y}, "automargin": True}, "hovermode": "closest", "margin": {"t": 50, "l": 20, "r": 20, "b": 20}}


def figures(frame: pd.DataFrame) -> list[dict]:
    """Throughput vs batch (one line per method and context) and decode ms/step vs context (one line per method, at
    the smallest batch measured): the two plots of the efficiency suite (issue 11)."""
    points = points_table(frame)
    if points.empty:
        return []
    measured = points[~points["out_of_memory"]]
    out = []
    if not measured.empty:
        out.append({"id": "throughput", "data": _lines(measured, "batch", "throughput_tok_s", ["method", "context"],
                                                       lambda k: f"{k[0]} @ {k[1]} tokens"),
                    "layout": _layout("Throughput against batch", "batch", "tokens / s", log_x=True)})
        smallest = measured[measured["batch"] == measured.groupby("method")["batch"].transform("min")]
        out.append({"id": "decode", "data": _lines(smallest, "context", "decode_ms_per_step", ["method"],
                                                   lambda k: str(k[0])),
                    "layout": _layout("Decode ms/step against context (smallest batch)", "context tokens",
                                      "ms / step", log_x=True)})
    return out


def as_rows(table: pd.DataFrame) -> dict:
    """A frame as ``{columns, rows}`` of text cells, for the page's static tables."""
    cells = [[number(v) if isinstance(v, float) else "" if blank(v) else str(v) for v in row]
             for row in table.itertuples(index=False)]
    return {"columns": [str(c) for c in table.columns], "rows": cells}


def max_batch(frame: pd.DataFrame) -> dict | None:
    table = max_batch_table(frame)
    return None if table.empty else as_rows(table.drop(columns=["label"]))


def roofline(frame: pd.DataFrame) -> dict | None:
    """Every point field named ``roofline*`` (recorded by the efficiency suite where it models the device's roofline),
    one row per point; None where no record has one."""
    rows = []
    for _, record in efficiency_frame(frame).iterrows():
        for point in json.loads(record["efficiency"]).get("points", []):
            fields = {k: v for k, v in point.items() if "roofline" in k}
            if fields:
                rows.append({"model": record["model"], "method": record["label"],
                             "context": point.get("context_length"), "batch": point.get("batch_size"), **fields})
    return as_rows(pd.DataFrame(rows)) if rows else None
