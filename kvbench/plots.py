"""The report's plots: the Pareto chart of the roll-up (quality against the measured KV compression, one labelled
point per configuration) and the efficiency suite's figure (throughput vs batch, decode cost vs context, max batch).

Drawn with matplotlib's object API on an Agg canvas: no pyplot, so plotting never switches the caller's backend.
Labels are placed on the figure as it will be saved (same dpi), pushed apart until none overlap.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from kvbench.efficiency_report import format_number, max_batch_table, points_table


def _figure(rows: int, columns: int, width: float, height: float, dpi: int):
    """A figure of ``rows`` × ``columns`` panels on its own Agg canvas, and its axes (a 2-D array)."""
    fig = Figure(figsize=(width * columns, height * rows), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, columns, squeeze=False)


def plot_pareto(table: pd.DataFrame, path: Path, title: str = "") -> None:
    """One panel per task: the primary metric (with its 95% interval) against the measured KV compression
    ratio (log scale), one labelled point per method configuration; perplexity axes are logarithmic.
    ``table`` is :func:`kvbench.report.comparison_table`'s."""
    metrics = table.attrs.get("metrics", [])
    higher = table.attrs.get("higher_is_better", {})
    columns = min(3, max(1, len(metrics)))
    rows = math.ceil(len(metrics) / columns) if metrics else 1
    # drawn at the dpi it is saved at, so the label placement measured on screen is the one in the file
    fig, axes = _figure(rows, columns, 5.2, 4.2, dpi=130)
    labels = [(m if not p else f"{m}\n{p}") for m, p in zip(table["method"], table["params"])]
    tab10 = matplotlib.colormaps["tab10"]
    colors = {label: tab10(i % 10) for i, label in enumerate(dict.fromkeys(table["method"]))}
    for ax, column in zip(axes.flat, metrics):
        x, y = table["kv_ratio"].astype(float), table[column].astype(float)
        low = (y - table[f"{column}:low"].astype(float)).clip(lower=0).fillna(0)
        high = (table[f"{column}:high"].astype(float) - y).clip(lower=0).fillna(0)
        for i in range(len(table)):
            if pd.isna(y.iloc[i]):
                continue
            ax.errorbar(x.iloc[i], y.iloc[i], yerr=[[low.iloc[i]], [high.iloc[i]]], fmt="o", capsize=3,
                        color=colors[table["method"].iloc[i]])
        ax.set_xscale("log")
        if not higher.get(column, True) and (y.dropna() > 0).all():
            ax.set_yscale("log")
        ax.set_xlabel("KV compression (measured, ×, log scale)")
        ax.set_ylabel(f"{column} ({'higher' if higher.get(column, True) else 'lower'} is better)")
        ax.set_title(column.split("/")[0], fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.margins(x=0.25, y=0.2)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9, wrap=True)
    fig.tight_layout()
    for ax, column in zip(axes.flat, metrics):  # after the layout, so label boxes are where they will be drawn
        _label_points(ax, table["kv_ratio"].astype(float), table[column].astype(float), labels)
    fig.savefig(path, dpi=fig.dpi)


def _label_points(ax, x, y, labels) -> None:
    """Labels beside their points (left of points in the right half, so nothing leaves the panel), pushed
    apart vertically in display space so none overlap."""
    points = [(xi, yi, label) for xi, yi, label in zip(x, y, labels) if not (pd.isna(xi) or pd.isna(yi))]
    if not points:
        return
    ax.figure.canvas.draw()
    bbox = ax.get_window_extent()
    renderer = ax.figure.canvas.get_renderer()
    placed = []  # display-space boxes labels must avoid: every marker, then the labels drawn so far
    for xi, yi, _ in points:
        px, py = ax.transData.transform((xi, yi))
        placed.append(Bbox.from_extents(px - 5, py - 5, px + 5, py + 5))
    for xi, yi, label in sorted(points, key=lambda p: p[1]):
        dx, dy = ax.transData.transform((xi, yi))
        left = dx > (bbox.x0 + bbox.x1) / 2
        side, lift = (-8 if left else 8), 0
        text = ax.annotate(label, (xi, yi), xytext=(side, lift), textcoords="offset pixels", fontsize=7,
                           va="center", ha="right" if left else "left",
                           arrowprops=dict(arrowstyle="-", lw=0.4, color="0.5"))
        box = _text_box(text, renderer)
        step = 0
        while any(box.overlaps(other) for other in placed) and step < 400:
            step += 1
            lift = 3 * ((step + 1) // 2) * (1 if step % 2 else -1)  # 3 px up, 3 down, 6 up, ...
            text.xyann = (side, lift)
            box = _text_box(text, renderer)
        placed.append(box)


def _text_box(annotation, renderer):
    """The display box of an annotation's text alone (its own extent includes the arrow)."""
    annotation.update_positions(renderer)
    return Text.get_window_extent(annotation, renderer)


def plot_efficiency(frame: pd.DataFrame, path: Path, title: str = "") -> bool:
    """Throughput vs batch (a panel per context), decode ms/step vs context, max batch per method; False if there
    is nothing to plot. ``frame`` is :func:`kvbench.records_frame.load_records`'."""
    points = points_table(frame)
    if points.empty:
        return False
    points = points[~points["out_of_memory"]]
    contexts = sorted(points["context"].unique())
    batches = max_batch_table(frame)
    panels = len(contexts) + 1 + (0 if batches.empty else 1)
    columns = min(3, panels)
    rows = math.ceil(panels / columns)
    fig, axes = _figure(rows, columns, 5.2, 4.0, dpi=110)
    methods = list(dict.fromkeys(points.sort_values("label", key=lambda s: s != "full")["method"]))
    tab20 = matplotlib.colormaps["tab20"]
    colors = {m: tab20(i % 20) for i, m in enumerate(methods)}
    flat = list(axes.flat)
    for ax, context in zip(flat, contexts):
        at = points[points["context"] == context]
        for method in methods:
            line = at[at["method"] == method].sort_values("batch")
            if not line.empty:
                ax.plot(line["batch"], line["throughput_tok_s"], "o-", color=colors[method], label=method,
                        lw=2.2 if method == "full" else 1.2)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(at["batch"].unique()), [str(b) for b in sorted(at["batch"].unique())])
        ax.set_xlabel("batch size")
        ax.set_ylabel("decode throughput (tok/s)")
        ax.set_title(f"throughput vs batch, context {context}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    ax = flat[len(contexts)]
    widest = points.groupby("context")["batch"].max().min()  # a batch every context measured
    at = points[points["batch"] == widest]
    for method in methods:
        line = at[at["method"] == method].sort_values("context")
        if not line.empty:
            ax.plot(line["context"], line["decode_ms_per_step"], "o-", color=colors[method], label=method,
                    lw=2.2 if method == "full" else 1.2)
    ax.set_xscale("log", base=2)
    ax.set_xticks(contexts, [str(c) for c in contexts])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("decode ms/step (lower is better)")
    ax.set_title(f"decode cost vs context, batch {widest}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if not batches.empty:
        _plot_max_batch(flat[len(contexts) + 1], batches, colors)
    for ax in flat[panels:]:
        ax.axis("off")
    handles, labels = flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9, wrap=True)
    fig.tight_layout(rect=(0, 0.04 + 0.02 * math.ceil(len(labels) / 5), 1, 0.97))
    fig.savefig(path, dpi=fig.dpi)
    return True


def _plot_max_batch(ax, batches: pd.DataFrame, colors: dict) -> None:
    """A bar per method: its max batch, and that batch ÷ full's."""
    shown = batches.drop_duplicates("method", keep="last")
    bars = ax.barh(shown["method"], shown["batch"], color=[colors.get(m, "0.5") for m in shown["method"]])
    ax.bar_label(bars, labels=[f"{b} ({format_number(r, '.2g')}x)" if r is not None and not pd.isna(r) else str(b)
                               for b, r in zip(shown["batch"], shown["batch_vs_full"])], fontsize=7, padding=2)
    ax.margins(x=0.25)
    ax.set_xlabel(f"max batch ({', '.join(sorted(set(shown['source'])))}, "
                  f"{format_number(shown['budget_gb'].iloc[0])} GiB, context {shown['context'].iloc[0]})")
    ax.set_title("max batch per method", fontsize=10)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(alpha=0.3, axis="x", which="both")
