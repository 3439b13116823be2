"""Roll-up of result records into comparison tables (markdown + CSV) and a plot under ``reports/``.

One row per method configuration: the parameters it changed from the method's defaults, each task's primary metric, the
average of the higher-is-better metrics, the KV compression measured on the run's own
sequences (``full_bytes / stored_bytes``), the ratio of stored bytes to the ``full``
run of the same model, suite, task list and limit (blank when there is none), and decode speed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from kvbench.errors import KvbenchError
from kvbench.results import load_records

ID_COLUMNS = ["model", "method", "params"]


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


def comparison_table(root: str | Path | pd.DataFrame) -> pd.DataFrame:
    """One row per run under ``root`` (or of a frame from :func:`collect`): complete runs first, then failed
    ones with their error and blank metrics."""
    frame = (root if isinstance(root, pd.DataFrame) else collect(root)[0]).copy()
    frame["params"] = frame["method_params"].map(_short_params)
    metric_cols = [c for c in frame.columns if "/" in c and not c.startswith("_")]
    higher = frame.attrs.get("higher_is_better", {})
    avg_cols = [c for c in metric_cols if higher.get(c, True)]
    table = frame[ID_COLUMNS + metric_cols].copy()
    table["avg"] = frame[avg_cols].mean(axis=1, skipna=False) if avg_cols else float("nan")
    table["kv_ratio"] = frame["kv_ratio"]
    if frame["kv_expected_ratio"].notna().any():  # combined: product of the components' own ratios
        table["kv_ratio_expected"] = frame["kv_expected_ratio"]
    table["kv_vs_full"] = frame["kv_stored_bytes"] / _full_stored_bytes(frame)
    table["decode_tok_s"] = frame["decode_tok_s"]
    failed = frame["status"] != "complete"
    if failed.any():
        table.loc[failed, metric_cols + ["avg", "kv_ratio", "kv_vs_full", "decode_tok_s"]] = float("nan")
        table["error"] = frame["error"].where(failed, None)
    table["_failed"], table["_baseline_last"] = failed, table["method"] != "full"  # full first, then by name
    table = table.sort_values(["_failed", "model", "_baseline_last", "method", "params"])
    return table.drop(columns=["_failed", "_baseline_last"]).reset_index(drop=True)


def lock_warning(root: str | Path | pd.DataFrame) -> str | None:
    """A warning when the complete records under ``root`` come from different lock files (package sets)."""
    frame = root if isinstance(root, pd.DataFrame) else collect(root)[0]
    digests = sorted(frame.loc[frame["status"] == "complete", "lock_sha256"].dropna().unique())
    if len(digests) < 2:
        return None
    return (f"warning: this table mixes records from {len(digests)} different lock files "
            f"(sha256 {', '.join(d[:12] for d in digests)}): its figures may come from different package versions")


#: A row is compared with the ``full`` record that ran the same workload.
PAIRING = ["model", "suite", "tasks", "limit"]


def _full_stored_bytes(frame: pd.DataFrame) -> pd.Series:
    """Per row, the stored bytes of the latest ``full`` record with the same model, suite, tasks and limit."""
    keys = pd.Series(["|".join(map(str, row)) for row in frame[PAIRING].itertuples(index=False)], index=frame.index)
    full = frame["method"] == "full"
    latest = frame[full].assign(_key=keys[full]).sort_values("created_at").groupby("_key")["kv_stored_bytes"].last()
    return keys.map(latest).astype(float)


def write_report(root: str | Path, name: str, reports_dir: str | Path = "reports") -> dict[str, Path]:
    """Write ``<reports_dir>/<name>.md``, ``.csv`` and ``.png``; return their paths. Unreadable record files
    are named in a warning and skipped; no readable record at all is a :class:`ReportError`."""
    frame, skipped = collect(root)
    table = comparison_table(frame)
    warning = lock_warning(frame)
    for path, reason in skipped:
        print(f"kvbench-report: warning: skipped {path}: {reason}", file=sys.stderr)
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": reports_dir / f"{name}.md", "csv": reports_dir / f"{name}.csv"}
    table.to_csv(paths["csv"], index=False)
    header = (f"# {name}\n\nRecords under `{root}`. Metric columns are `task/primary metric` "
              "(higher is better except perplexities); `avg` averages the higher-is-better columns; "
              "`kv_ratio` = uncompressed bytes / bytes the cache held, measured after context compression "
              "on the run's own sequences; `kv_vs_full` = stored bytes relative to the `full` run.\n\n"
              + (f"**{warning}**\n\n" if warning else ""))
    shown = table.astype(object).where(table.notna(), None)  # blank, not "nan", where a column does not apply
    paths["md"].write_text(header + (shown.to_markdown(index=False, floatfmt=".4g") if not table.empty else "_no complete records_") + "\n",
                           encoding="utf-8")
    plotted = table[table["kv_ratio"].notna()]
    if len(plotted) > 1:
        paths["png"] = reports_dir / f"{name}.png"
        plot_tradeoff(plotted, paths["png"])
    if warning:
        print(f"kvbench-report: {warning}", file=sys.stderr)
    return paths


def plot_tradeoff(table: pd.DataFrame, path: Path) -> None:
    """Average score against KV compression ratio, one point per method configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for _, row in table.iterrows():
        ax.scatter(row["kv_ratio"], row["avg"])
        label = row["method"] + (f" ({row['params']})" if row["params"] else "")
        ax.annotate(label, (row["kv_ratio"], row["avg"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("KV compression ratio (measured, x)")
    ax.set_ylabel("average score (higher-is-better tasks)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _short_params(params_json: str) -> str:
    params = json.loads(params_json)
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()) if v is not None)
