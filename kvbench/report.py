"""Roll-up of run records into a comparison table (markdown, CSV, LaTeX) and a Pareto plot (:mod:`kvbench.plots`).

One row per method configuration: its label (a variant config reports its own name, ``h2o_local``) and the
parameters changed from that config's defaults in a short form (``heavy_ratio=0.2``); per task, the
primary metric with its 95% interval and ``n`` (bootstrapped over samples by the suite; Wilson for a proportion),
marked ``▼``/``▲`` when a *paired* test on the same samples finds it significantly worse/better than the ``full``
run of the same workload (model, suite, tasks, limit), Holm-corrected across the table (:mod:`kvbench.paired`,
:mod:`kvbench.statistics`); a second table lists each test, the difference from full with its interval, and the
minimum detectable effect where nothing was found. ``mean_rank`` summarises every primary metric, perplexities
included: per task the rows are ranked (1 = best, in the metric's own direction; ties share the average
rank), and the ranks are averaged. ``kv_ratio`` is the compression measured on the run's own sequences
(uncompressed bytes / bytes the cache held); ``kv_ratio_expected`` (``combined`` only) the product of each
component's ratio measured alone. Decode speed is reported with the device and machine load it ran on.
Failed runs are listed last with their error and no numbers. Records of the efficiency suite add a section
(throughput, TTFT and decode latency per point, max batch, the papers' claims: :mod:`kvbench.efficiency_report`)
and a plot. With a paper's CSV, a table of ours beside the paper's numbers (:mod:`kvbench.paper`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kvbench import divergence_report, efficiency_report
from kvbench.errors import KvbenchError
from kvbench.paired import HOLM_NOTE, add_paired_tests, tests_markdown
from kvbench.paper import display, paper_table, read_paper, task_legend, unmatched_warning, verdict_lines
from kvbench.plots import plot_efficiency, plot_pareto
from kvbench.provenance import provenance
from kvbench.records_frame import QUESTION_VISIBLE_NOTE, load_records
from kvbench.results import short_params

ID_COLUMNS = ["model", "method", "params"]
#: A row is compared with the ``full`` record that ran the same workload.
PAIRING = ["model", "suite", "tasks", "limit", "query_aware"]
FORMATS = ("md", "csv", "png", "tex")


class ReportError(KvbenchError):
    """Nothing to report (no readable record)."""


def collect(root: str | Path) -> tuple[pd.DataFrame, list[tuple[Path, str]]]:
    """Every readable record under ``root`` as a frame, and the record files that could not be read
    (corrupt, or another schema version) with the reason. No readable record is a :class:`ReportError`."""
    if not Path(root).is_dir():
        raise ReportError(f"{root} is not a directory")
    skipped: list[tuple[Path, str]] = []
    frame = load_records(root, skipped)
    if frame.empty:
        reasons = f" ({len(skipped)} unreadable: {skipped[0][1]})" if skipped else ""
        raise ReportError(f"no readable kvbench record under {root}{reasons}")
    return frame, skipped


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """``task/metric`` columns in the suites' own task order (not alphabetical)."""
    order: list[str] = []
    for tasks in frame["tasks"]:
        for task in json.loads(tasks or "[]") or []:
            if task not in order:
                order.append(task)
    columns = [c for c in frame.columns if "/" in c and ":" not in c]

    def position(column: str) -> tuple[int, str]:
        task = column.split("/")[0]
        base = next((i for i, t in enumerate(order) if task == t or task.startswith(f"{t}_")), len(order))
        return base, column

    return sorted(columns, key=position)


def comparison_table(root: str | Path | pd.DataFrame) -> pd.DataFrame:
    """The table as numbers: per metric column its value, ``:low``/``:high`` (95% interval; Wilson for binary
    scores), ``:n`` and the paired test against full (:mod:`kvbench.paired`: ``:vs_full`` = ``worse``/``better``/
    ``same``/``untestable``/blank, ``:test``, ``:p_value``, ``:p_holm``, ``:diff``..., ``:mde``); then ``mean_rank``,
    the KV ratios, decode speed."""
    frame = (root if isinstance(root, pd.DataFrame) else collect(root)[0]).copy()
    higher = frame.attrs.get("higher_is_better", {})
    metrics = metric_columns(frame)
    failed = frame["status"] != "complete"
    table = pd.DataFrame({"model": frame["model"], "method": frame["label"],
                          "params": frame["label_params"].map(_short)})
    table.insert(3, "question_visible", frame["question_visible"])  # every row: was the question compressed with it
    keys = _pairing_keys(frame)
    full = frame[(frame["method"] == "full") & ~failed].assign(_key=keys).sort_values("created_at")
    full_by_key = full.groupby("_key").last()
    for column in metrics:
        value = frame[column].where(~failed)
        table[column] = value
        table[f"{column}:low"] = frame.get(f"{column}:low")
        table[f"{column}:high"] = frame.get(f"{column}:high")
        table[f"{column}:n"] = frame.get(f"{column}:n")
    comparisons = add_paired_tests(table, frame, keys, full_by_key, metrics, higher)
    ranks = pd.DataFrame({c: table[c].rank(ascending=not higher.get(c, True), method="average") for c in metrics})
    table["mean_rank"] = ranks.mean(axis=1, skipna=True).where(~failed)
    table["kv_ratio"] = frame["kv_ratio"].where(~failed)
    if frame["kv_expected_ratio"].notna().any():  # composite methods: measured vs expected on the same tokens
        table["kv_ratio_longest"] = frame["kv_longest_ratio"].where(~failed)
        table["kv_ratio_expected"] = frame["kv_expected_ratio"].where(~failed)
    table["decode_tok_s"] = frame["decode_tok_s"].where(~failed)
    if failed.any():
        table["error"] = frame["error"].where(failed, None)
    table["_failed"], table["_baseline_last"] = failed.values, (frame["method"] != "full").values
    order = ["_failed", "model", "question_visible", "_baseline_last", "method", "params"]
    table = table.sort_values(order, kind="stable")
    # run_ids: the record behind each row, in the table's order (the site links each row to its run page); an Index,
    # which pandas copies in one step wherever it copies attrs (a list would be deep-copied item by item, per row)
    table.attrs = {"higher_is_better": higher, "metrics": metrics, "comparisons": comparisons,
                   "run_ids": pd.Index(frame.loc[table.index, "run_id"])}
    return table.drop(columns=["_failed", "_baseline_last"]).reset_index(drop=True)


def _pairing_keys(frame: pd.DataFrame) -> pd.Series:
    return pd.Series(["|".join(map(str, row)) for row in frame[PAIRING].itertuples(index=False)], index=frame.index)


def lock_warning(frame: pd.DataFrame) -> str | None:
    """A warning when the complete records come from different lock files (package sets)."""
    digests = sorted(frame.loc[frame["status"] == "complete", "lock_sha256"].dropna().unique())
    if len(digests) < 2:
        return None
    return (f"warning: this table mixes records from {len(digests)} different lock files "
            f"(sha256 {', '.join(d[:12] for d in digests)}): its figures may come from different package versions")


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as text cells: ``value [low, high]`` with ``▼``/``▲`` against full, blanks where nothing applies."""
    metrics = table.attrs.get("metrics", [])
    higher = table.attrs.get("higher_is_better", {})
    shown = table[[*ID_COLUMNS, "question_visible"]].copy()
    for column in metrics:
        ns = table[f"{column}:n"].dropna().unique()
        title = f"{column} ({'↑' if higher.get(column, True) else '↓'}{', n=' + str(int(ns[0])) if len(ns) == 1 else ''})"
        shown[title] = [_cell(row, column, len(ns) > 1) for _, row in table.iterrows()]
    for column in ("mean_rank", "kv_ratio", "kv_ratio_longest", "kv_ratio_expected", "decode_tok_s"):
        if column in table:
            shown[column] = table[column].map(lambda v: "" if pd.isna(v) else f"{v:.3g}" if column != "mean_rank" else f"{v:.2f}")
    if "error" in table:
        shown["error"] = table["error"].fillna("").map(_short_error)
    return shown


def _short_error(error, limit: int = 300) -> str:
    """An error as one table cell of at most ``limit`` characters (a record may carry a huge one and keeps it whole)."""
    text = str(error).replace("\n", " ")
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters; the record has all)"


def skipped_note(skipped: list[tuple[Path, str]]) -> str:
    """The table's line on the record files it could not read (corrupt, another schema version, unknown fields)."""
    if not skipped:
        return ""
    listed = "; ".join(f"`{path}` ({_short_error(reason)})" for path, reason in skipped)
    return f"**Skipped {len(skipped)} unreadable record file(s):** {listed}\n\n"


def _cell(row, column: str, with_n: bool) -> str:
    value = row[column]
    if pd.isna(value):
        return ""
    text = _fmt(value)
    if not pd.isna(row.get(f"{column}:low")):
        text += f" [{_fmt(row[f'{column}:low'])}, {_fmt(row[f'{column}:high'])}]"
    if with_n and not pd.isna(row.get(f"{column}:n")):
        text += f" n={int(row[f'{column}:n'])}"
    return text + {"worse": " ▼", "better": " ▲"}.get(row.get(f"{column}:vs_full"), "")


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.2e}"


def context_line(frame: pd.DataFrame) -> str:
    """Where the numbers come from: model, suite, limit, and the device and load decode speed was measured on."""
    done = frame[frame["status"] == "complete"]
    parts = []
    for column, name in (("model", "model"), ("suite", "suite"), ("limit", "limit"), ("device", "device")):
        values = sorted({str(v) for v in done[column].dropna()}) if column in done else []
        if values:
            parts.append(f"{name} {', '.join(values)}")
    loads = done["load_avg_1m"].dropna() if "load_avg_1m" in done else pd.Series(dtype=float)
    if not loads.empty:
        parts.append(f"1-min load average {loads.min():.1f}-{loads.max():.1f} at the runs' ends")
    return "; ".join(parts)


@dataclass
class Rollup:
    """A directory's records rolled up once: the flat records, the unreadable files, the comparison table (numbers)
    and its display form (text cells), the line saying where the numbers come from, and the lock-file warning."""

    root: str | Path
    frame: pd.DataFrame
    skipped: list[tuple[Path, str]]
    table: pd.DataFrame
    shown: pd.DataFrame
    context: str
    warning: str | None


def roll_up(root: str | Path) -> Rollup:
    """Every readable record under ``root`` rolled up; no readable record is a :class:`ReportError`."""
    frame, skipped = collect(root)
    table = comparison_table(frame)
    return Rollup(root, frame, skipped, table, display_table(table), context_line(frame), lock_warning(frame))


def write_report(root: str | Path | Rollup, name: str, reports_dir: str | Path = "outputs/reports",
                 formats: tuple[str, ...] = ("md", "csv", "png"), paper: str | Path | None = None,
                 command: str | None = None) -> dict[str, Path]:
    """Write ``<reports_dir>/<name>.<format>`` for each of ``formats`` (md, csv, png, tex); return the paths.
    ``root`` is a directory of records (or its :class:`Rollup`, already built). Unreadable record files are named
    in a warning and skipped; no readable record is a :class:`ReportError`. With ``paper`` (a paper CSV,
    :mod:`kvbench.paper`) also ``<name>_paper.md`` and ``.csv``: ours | paper | Δ, and the generated verdicts. Every
    markdown file opens with its provenance (:mod:`kvbench.provenance`; ``command``: the command as run, by default
    this process's)."""
    rows = read_paper(paper) if paper is not None else None  # a bad CSV fails before anything is written
    rollup = root if isinstance(root, Rollup) else roll_up(root)
    frame, table, shown, context, warning = rollup.frame, rollup.table, rollup.shown, rollup.context, rollup.warning
    for path, reason in rollup.skipped:
        print(f"kvbench-report: warning: skipped {path}: {reason}", file=sys.stderr)
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    origin = provenance(frame, rollup.root, command)
    paths: dict[str, Path] = {}
    if "csv" in formats:
        paths["csv"] = reports_dir / f"{name}.csv"
        table.to_csv(paths["csv"], index=False)
    if "md" in formats:
        paths["md"] = reports_dir / f"{name}.md"
        header = (f"# {name}\n\n{context}.\n\n{origin}\n\n"
                  "Each metric cell is the primary metric with its 95% interval (bootstrap over the task's samples); "
                  "↑/↓ in the header: higher/lower is better; intervals of proportions are Wilson intervals. "
                  f"{QUESTION_VISIBLE_NOTE}. "
                  + HOLM_NOTE.format(m=table.attrs.get("comparisons", 0)) + " `mean_rank`: the rows ranked per task "
                  "(1 = best, perplexities lowest-first, ties averaged), averaged over every task. `kv_ratio`: "
                  "uncompressed bytes / bytes the cache held, measured on the run's own sequences"
                  + ("; for composite methods, `kv_ratio_longest` is the ratio on the run's longest context and "
                     "`kv_ratio_expected` the product of each component's ratio measured alone on that same context "
                     "(compare these two: ratios that depend on length, e.g. KIVI's residual, differ from the "
                     "run-wide `kv_ratio`)" if "kv_ratio_expected" in table else "") + efficiency_report.engine_kv_note(frame) + ".\n\n"
                  + (f"**{warning}**\n\n" if warning else "") + skipped_note(rollup.skipped))
        paths["md"].write_text(header + shown.to_markdown(index=False) + "\n" + tests_markdown(table), encoding="utf-8")
    efficiency = efficiency_report.markdown(frame)
    if "md" in formats:  # the optional sections: efficiency points, divergence from full along generated answers
        with paths["md"].open("a", encoding="utf-8") as handle:
            handle.write("".join("\n" + part for part in (efficiency, divergence_report.markdown(frame)) if part))
    if efficiency and "csv" in formats:
        paths["efficiency_csv"] = reports_dir / f"{name}_efficiency.csv"
        efficiency_report.points_table(frame).to_csv(paths["efficiency_csv"], index=False)
    if efficiency and "png" in formats:
        paths["efficiency_png"] = reports_dir / f"{name}_efficiency.png"
        plot_efficiency(frame, paths["efficiency_png"], title=context)
    if "tex" in formats:
        paths["tex"] = reports_dir / f"{name}.tex"
        paths["tex"].write_text(shown.to_latex(index=False, escape=True, column_format="l" * len(shown.columns))
                                .replace("▼", r"$\blacktriangledown$").replace("▲", r"$\blacktriangle$")
                                .replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$"), encoding="utf-8")
    plotted = table[table["kv_ratio"].notna()]
    if "png" in formats and len(plotted) > 1:
        paths["png"] = reports_dir / f"{name}.png"
        plot_pareto(plotted, paths["png"], title=context)
    if rows is not None:
        paths.update(write_paper_report(table, rows, paper, rollup.root, reports_dir, name, f"{context}.\n\n{origin}"))
    if warning:
        print(f"kvbench-report: {warning}", file=sys.stderr)
    return paths


def write_paper_report(table: pd.DataFrame, rows, paper, root, reports_dir: Path, name: str,
                       context: str) -> dict[str, Path]:
    """``<name>_paper.md`` / ``.csv``: each roll-up row beside the paper row it reproduces (ours | paper | Δ),
    paper rows nothing matched last; a warning naming the paper rows when nothing matches at all."""
    side, matched = paper_table(table, rows)
    if not matched:
        print(f"kvbench-report: {unmatched_warning(rows, table, paper, root)}", file=sys.stderr)
    paths = {"paper_csv": reports_dir / f"{name}_paper.csv", "paper_md": reports_dir / f"{name}_paper.md"}
    side.to_csv(paths["paper_csv"], index=False)
    header = (f"# {name}: ours beside the paper\n\nOurs: {context}\n\nPaper: `{paper}`.\n\n"
              "Each task: ours | paper | Δ (ours − paper, in the paper's unit). A row of ours matches a paper row on "
              "the method label and every parameter the paper file names; rows with a blank `model` are paper-only "
              "(no run reproduces them); rows with a blank `paper model` have no paper number.\n\n"
              f"{task_legend(rows, table)}\n\n")
    verdicts = verdict_lines(side)
    paths["paper_md"].write_text(header + display(side).to_markdown(index=False) + "\n"
                                 + (f"\n## Verdicts\n\nGenerated from the paired test of each row against our `full` "
                                    f"and the paper's direction (kvbench.verdict):\n\n{verdicts}\n" if verdicts else ""),
                                 encoding="utf-8")
    return paths


def _short(params) -> str:
    if isinstance(params, str):
        params = json.loads(params or "{}")
    return short_params(params or {})
