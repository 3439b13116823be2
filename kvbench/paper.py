"""A paper's numbers beside ours: read ``experiments/<paper>/paper_<table>.csv``, match it to a roll-up, render.

The CSV (a header row, columns in any order) holds what the paper printed, one number per row:

* ``model``, ``method``, ``params``, ``task``, ``metric``, ``value``, ``source`` (required): the paper's model (the
  kvbench model config that loads it, ``llama2_7b``, where there is one), the kvbench method label that reproduces the row (a method or variant config name, as the report shows it), its
  parameters in the report's form (``kv_heads=16 recovery=lora``, changed from that config's defaults; blank for
  none; ``key=default`` names a parameter that must be at its default), the paper's task and metric, the number as printed, and where it is printed (``Table 2``).
* ``mini_method``, ``mini_params``, ``mini_task`` (optional): the stand-ins a run on another model (the
  experiment's ``_mini`` twin on the bundled model) uses: its method label (blank: the same), its parameters
  (``-`` for the config's defaults), its offline task. A blank ``mini_params`` cell: nothing stands in for this row.
* ``scale`` (optional, default 1): paper unit → kvbench unit (``0.01`` where the paper prints percentages of a
  metric kvbench reports as a fraction). Ours is shown in the paper's unit.
* ``note`` (optional): free text.

Matching. A row of the roll-up matches a paper row when the method labels are equal and they agree on every
parameter the CSV names anywhere for that method (a parameter the CSV never names, e.g. ``lora.steps``, sizes
the run and is ignored; one the paper row leaves out must be at its default): on the paper's ``params`` when the
run's model is the paper row's ``model``, else on its ``mini_method`` and ``mini_params``. A task column matches on the
paper's ``task`` or ``mini_task``; ``decode_tok_s`` and ``kv_ratio`` match the report's columns of that name.
Paper rows nothing matched stay in the table as paper-only rows.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kvbench.errors import KvbenchError
from kvbench.verdict import verdict

REQUIRED = ("model", "method", "params", "task", "metric", "value", "source")
OPTIONAL = ("mini_method", "mini_params", "mini_task", "scale", "note")
#: Report columns a paper task may name directly (efficiency and compression numbers).
DIRECT_COLUMNS = ("decode_tok_s", "kv_ratio")


class PaperError(KvbenchError):
    """A paper CSV cannot be read; the message names the file, the row and the value."""


@dataclass
class PaperRow:
    model: str
    method: str
    params: dict
    task: str
    metric: str
    value: float
    source: str
    mini_params: dict | None = None
    mini_task: str | None = None
    mini_method: str | None = None
    scale: float = 1.0
    line: int = 0
    params_text: str = ""
    mini_params_text: str = ""
    matched: bool = field(default=False, compare=False)


def parse_params(text: str, where: str = "params") -> dict[str, str]:
    """``"kv_heads=16 init=weight"`` (spaces, commas or semicolons between) → ``{"kv_heads": "16", ...}``, each
    value normalised (numbers as ``format(float, "g")``) so ``0.10`` and ``0.1`` compare equal."""
    params = {}
    for item in re.split(r"[\s,;]+", (text or "").strip()):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PaperError(f"{where}: {item!r} is not key=value")
        params[key] = _normal(value)
    return params


def _normal(value: str) -> str:
    try:
        return format(float(value), "g")
    except ValueError:
        return value.strip().lower()


def read_paper(path: str | Path) -> list[PaperRow]:
    """The rows of a paper CSV; one line naming the file, the row and the value for anything wrong."""
    path = Path(path)
    if not path.is_file():
        raise PaperError(f"--paper {path}: no such file (give experiments/<paper>/paper_<table>.csv)")
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = [c.strip() for c in reader.fieldnames or []]
        unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
        if unknown:
            raise PaperError(f"{path}: unknown column {unknown[0]!r} (valid: {', '.join(REQUIRED + OPTIONAL)})")
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise PaperError(f"{path}: missing column(s) {', '.join(missing)} (required: {', '.join(REQUIRED)})")
        rows = []
        for number, raw in enumerate(reader, start=2):
            raw = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            where = f"{path} line {number}"
            for column in ("method", "task", "value"):
                if not raw.get(column):
                    raise PaperError(f"{where}: {column} is empty")
            try:
                value = float(raw["value"])
                scale = float(raw.get("scale") or 1)
            except ValueError:
                raise PaperError(f"{where}: value {raw['value']!r} / scale {raw.get('scale')!r} is not a number") from None
            mini = raw.get("mini_params") or None
            rows.append(PaperRow(
                model=raw["model"], method=raw["method"], params=parse_params(raw["params"], f"{where} params"),
                task=raw["task"], metric=raw["metric"], value=value, source=raw["source"],
                mini_params=None if mini is None else {} if mini == "-" else parse_params(mini, f"{where} mini_params"),
                mini_task=raw.get("mini_task") or None, mini_method=raw.get("mini_method") or None, scale=scale, line=number, params_text=raw["params"],
                mini_params_text=raw.get("mini_params", "")))
    if not rows:
        raise PaperError(f"{path}: no rows")
    return rows


def _named_keys(rows: list[PaperRow]) -> dict[str, set[str]]:
    keys: dict[str, set[str]] = {}
    for row in rows:
        keys.setdefault(row.method, set()).update(row.params)
        keys.setdefault(row.mini_method or row.method, set()).update(row.mini_params or {})
    return keys


def matches(model: str, method: str, params: dict, row: PaperRow, keys: set[str]) -> bool:
    """Whether a roll-up row (``model``, ``method`` label, ``params`` as parsed) reproduces the paper ``row``:
    on ``params`` with the paper's model, on ``mini_params`` (if any) with another model."""
    ours = {k: v for k, v in params.items() if k in keys}

    def stated(wanted: dict) -> dict:  # ``key=default``: named, and at the config's default (absent from ours)
        return {k: v for k, v in wanted.items() if v != "default"}

    if model == row.model:
        return method == row.method and ours == stated(row.params)
    return method == (row.mini_method or row.method) and row.mini_params is not None and ours == stated(row.mini_params)


def _our_column(table: pd.DataFrame, row: PaperRow) -> str | None:
    if row.task in DIRECT_COLUMNS:
        return row.task if row.task in table else None
    for column in table.attrs.get("metrics", []):
        task = column.split("/")[0]
        if task in (row.task, row.mini_task):
            return column
    return None


def paper_table(table: pd.DataFrame, rows: list[PaperRow]) -> tuple[pd.DataFrame, int]:
    """``(ours | paper | Δ table, number of matched roll-up rows)``; ``table`` is
    :func:`kvbench.report.comparison_table`'s. Ours is shown in the paper's unit; Δ = ours − paper."""
    keys = _named_keys(rows)
    columns: dict[str, tuple[str | None, float]] = {}
    for row in rows:  # per paper task: the column of ours it compares with, and the unit factor
        if not (columns.get(row.task) or (None,))[0]:
            columns[row.task] = (_our_column(table, row), row.scale)
    configs: dict[tuple, list[PaperRow]] = {}
    for row in rows:
        configs.setdefault((row.model, row.method, tuple(sorted(row.params.items()))), []).append(row)
    fulls = {(row.model, row.task): row.value for row in rows if row.method == "full"}
    higher = table.attrs.get("higher_is_better", {})
    out, matched_ours, used = [], 0, set()
    for _, ours in table.iterrows():
        params = parse_params(ours["params"]) if isinstance(ours["params"], str) else {}
        hits = [key for key, group in configs.items()
                if any(matches(ours["model"], ours["method"], params, row, keys.get(ours["method"], set())) for row in group)]
        matched_ours += bool(hits)
        used.update(hits)
        for key in hits or [None]:
            out.append(_line(ours, configs[key] if key else [], columns, fulls, higher))
    out.extend(_line(None, group, columns, fulls, higher) for key, group in configs.items() if key not in used)
    return pd.DataFrame(out), matched_ours


def _line(ours, group: list[PaperRow], columns: dict[str, tuple[str | None, float]], fulls: dict | None = None,
          higher: dict | None = None) -> dict:
    first = group[0] if group else None
    line = {"method": ours["method"] if ours is not None else first.method,
            "params": (ours["params"] if ours is not None else first.params_text) or "",
            "model": ours["model"] if ours is not None else "",
            "paper model": first.model if first else "",
            "paper params": first.params_text if first else ""}
    by_task = {row.task: row for row in group}
    for task, (column, scale) in columns.items():
        row = by_task.get(task)
        value = ours.get(column) if ours is not None and column else None
        scale = row.scale if row is not None else scale
        mine = None if value is None or pd.isna(value) else float(value) / scale
        line[f"{task}: ours"] = mine
        line[f"{task}: paper"] = row.value if row is not None else None
        line[f"{task}: Δ"] = mine - row.value if mine is not None and row is not None else None
        paper_full = (fulls or {}).get((row.model, task)) if row is not None and row.method != "full" else None
        if paper_full is not None:
            line[f"{task}: verdict"], line[f"{task}: why"] = verdict(
                ours, column, row.value - paper_full, scale, (higher or {}).get(column, True))
            if row.mini_task and ours is not None and ours.get("model") != row.model:
                line[f"{task}: why"] += f" (ours on {row.mini_task}, a stand-in task: magnitudes are indicative only)"
    line["source"] = ", ".join(dict.fromkeys(row.source for row in group)) if group else ""
    return line


def unmatched_warning(rows: list[PaperRow], table: pd.DataFrame, csv_path, root) -> str:
    """The warning when no roll-up row matches any paper row: the paper rows and our rows, by label."""
    papers = list(dict.fromkeys(f"{r.method}{' ' + r.params_text if r.params_text else ''}" for r in rows))
    ours = list(dict.fromkeys(f"{m}{' ' + p if isinstance(p, str) and p else ''}"
                              for m, p in zip(table["method"], table["params"])))
    return (f"warning: no row of {csv_path} matches a run under {root}: unmatched paper rows "
            f"{'; '.join(papers)} (runs: {'; '.join(ours)})")


def task_legend(rows: list[PaperRow], table: pd.DataFrame) -> str:
    """One line per paper task: its metric, and the column of ours it is compared with."""
    lines = []
    for task in dict.fromkeys(row.task for row in rows):
        row = next(r for r in rows if r.task == task)
        column = _our_column(table, row)
        unit = f", ours ÷ {row.scale:g} (paper's unit)" if row.scale != 1 else ""
        lines.append(f"- `{task}` ({row.metric}): ours = `{column or 'not run'}`{unit}")
    return "\n".join(lines)


def verdict_lines(side: pd.DataFrame) -> str:
    """One markdown line per tested paper claim: method, task, verdict and the evidence (generated, never written by
    hand)."""
    lines = []
    for _, line in side.iterrows():
        for column in [c for c in side.columns if c.endswith(": verdict")]:
            if isinstance(line[column], str):
                task = column.removesuffix(": verdict")
                label = f"{line['method']}{' ' + line['params'] if line['params'] else ''}"
                lines.append(f"- `{label}` on `{task}`: **{line[column]}**. {line[f'{task}: why']}.")
    return "\n".join(lines)


def display(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells as text: 3 significant figures, blanks where nothing applies."""
    shown = frame.drop(columns=[c for c in frame.columns if c.endswith(": why")]).copy()
    for column in shown.columns:
        if column.endswith((": ours", ": paper", ": Δ")):
            shown[column] = shown[column].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v))
                                              else (f"{v:+.3g}" if column.endswith("Δ") else f"{v:.4g}"))
    return shown.fillna("")
