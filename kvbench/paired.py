"""The roll-up's paired tests: each row against the ``full`` run of the same workload, sample by sample.

For every metric column and every row with a ``full`` to compare with, the per-sample scores of both records
(their sidecars, :mod:`kvbench.sample_scores`) are matched by sample id and tested by :func:`kvbench.statistics.compare`
(exact McNemar, sign-flip permutation, or per-document log-likelihood). The p-values of one table are corrected
together (Holm), and ``▼``/``▲`` come from those corrected tests only. A row or a ``full`` without per-sample scores
is ``untestable`` ("not testable: no per-sample scores"), never compared by its interval. For binary scores the
row's interval becomes the Wilson interval (never zero-width, unlike a percentile bootstrap at 0/n).

Columns added per metric column ``c`` (what the results page reads, nothing to recompute): ``c:vs_full`` (the
verdict: ``worse``/``better``/``same``/``untestable``), ``c:test``, ``c:p_value``, ``c:p_holm``, ``c:n_paired``,
``c:diff`` with ``c:diff_low``/``c:diff_high`` (method − full, 95%) and ``c:mde`` (the minimum detectable effect at
that n, alpha 0.05, power 0.8; in the column's unit).
"""

from __future__ import annotations

import pandas as pd

from kvbench.sample_scores import read_sidecar
from kvbench.statistics import compare, holm, is_binary, wilson_interval

NOT_TESTABLE = "not testable: no per-sample scores"
HOLM_NOTE = ("▼/▲: significantly worse/better than `full` on the same samples by a paired test (exact McNemar for "
             "binary scores, sign-flip permutation for continuous ones, per-document log-likelihood differences for "
             "perplexity), p-values Holm-corrected across the {m} comparison(s) of this table at alpha 0.05.")
FIELDS = ("test", "p_value", "p_holm", "n_paired", "diff", "diff_low", "diff_high", "mde")


def task_of(column: str) -> str:
    return column.rsplit("/", 1)[0]


def _scale(value, rows: dict) -> float | None:
    """The column's unit relative to the per-sample scores: 100 for suites that report percentages, else 1; None
    when this row cannot tell (a score of 0 is 0 in either unit)."""
    scores = [r["score"] for r in rows.values() if "score" in r]
    if not scores or value is None or pd.isna(value):
        return None
    mean = sum(scores) / len(scores)
    if abs(value - 100 * mean) == abs(value - mean):
        return None
    return 100.0 if abs(value - 100 * mean) < abs(value - mean) else 1.0


def column_scale(pairs) -> float:
    """One unit for a whole column, from its ``(value, per-sample rows)`` pairs: the first row that can tell (a row
    of zeros alone would read a percentage column as a fraction and report its Δ in hundredths), else 1."""
    return next((s for value, rows in pairs if rows for s in [_scale(value, rows)] if s is not None), 1.0)


def _is_proportion(tables: list[dict]) -> bool:
    """Whether a column's per-sample scores are 0/1 in every record that has them (a proportion: Wilson intervals,
    McNemar); a continuous metric that happens to be 0 everywhere in one row (``full``'s KL) is not."""
    values = [r.get("score") for rows in tables for r in rows.values()]
    return bool(values) and None not in values and is_binary(values)


def add_paired_tests(table: pd.DataFrame, frame: pd.DataFrame, keys: pd.Series, full_by_key: pd.DataFrame,
                     metrics: list[str], higher: dict) -> int:
    """Fill the test columns of ``table`` (aligned with ``frame``) in place; return the number of comparisons."""
    sidecars: dict[str, dict | None] = {}

    def scores_of(path) -> dict | None:
        if path not in sidecars:
            sidecars[path] = read_sidecar(path) if isinstance(path, str) else None
        return sidecars[path]

    found = []  # (index, column, comparison)
    for column in metrics:
        task = task_of(column)
        for name in FIELDS:
            table[f"{column}:{name}"] = None
        table[f"{column}:vs_full"] = None
        scored = [(scores_of(path) or {}).get(task) for path in frame["path"]]
        binary = _is_proportion([rows for rows in scored if rows])
        scale = column_scale(zip(frame.get(column, pd.Series(index=frame.index, dtype=float)), scored))
        for index, row in frame.iterrows():
            if row["status"] != "complete" or pd.isna(row.get(column)):
                continue
            own = (scores_of(row.get("path")) or {}).get(task)
            if own and binary:
                hits = sum(r["score"] for r in own.values())
                low, high = wilson_interval(int(hits), len(own))
                table.loc[index, [f"{column}:low", f"{column}:high"]] = [low * scale, high * scale]
            if row["method"] == "full" or keys[index] not in full_by_key.index:
                continue
            full = full_by_key.loc[keys[index]]
            theirs = (scores_of(full.get("path")) or {}).get(task)
            result = compare(theirs, own, scale, binary=binary) if own and theirs else None
            if result is None:
                table.loc[index, [f"{column}:vs_full", f"{column}:test"]] = ["untestable", NOT_TESTABLE]
                continue
            found.append((index, column, result))
    for (index, column, result), adjusted in zip(found, holm([r.p_value for _, _, r in found])):
        result.p_holm = adjusted
        table.at[index, f"{column}:vs_full"] = result.verdict(higher.get(column, True))
        for name, value in zip(FIELDS, (result.test, result.p_value, adjusted, result.n, result.difference,
                                        result.low, result.high, result.mde)):
            table.at[index, f"{column}:{name}"] = value
    return len(found)


def tests_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per compared (row, metric): the test, n, the difference from full with its interval, p (raw, Holm),
    the verdict, and the minimum detectable effect where the test found nothing."""
    rows = []
    for _, row in table.iterrows():
        ids = {"method": row["method"], "params": row["params"], "question_visible": row.get("question_visible", "")}
        for column in table.attrs.get("metrics", []):
            verdict = row.get(f"{column}:vs_full")
            if verdict is None or pd.isna(verdict):
                continue
            if verdict == "untestable":
                rows.append({**ids, "metric": column, "test": NOT_TESTABLE})
                continue
            rows.append({
                **ids, "metric": column, "test": row[f"{column}:test"],
                "n": int(row[f"{column}:n_paired"]),
                "Δ vs full [95%]": f"{row[f'{column}:diff']:+.3g} [{row[f'{column}:diff_low']:+.3g}, "
                                   f"{row[f'{column}:diff_high']:+.3g}]",
                "p": f"{row[f'{column}:p_value']:.3g}", "p (Holm)": f"{row[f'{column}:p_holm']:.3g}",
                # "same" would read as "no difference": the row says the test found none, and what it could detect
                "verdict": "not significant" if verdict == "same" else verdict,
                "detectable at this n": "" if verdict != "same" else f"|Δ| ≥ {row[f'{column}:mde']:.3g}"})
    return pd.DataFrame(rows)


def tests_markdown(table: pd.DataFrame) -> str:
    """The paired tests behind ▼/▲, one row per comparison with full (empty when nothing was compared)."""
    tests = tests_table(table)
    if tests.empty:
        return ""
    return (f"\n## Paired tests against `full`\n\n{HOLM_NOTE.format(m=table.attrs.get('comparisons', 0))} "
            "Δ: method − full in the column's unit, 95% interval (exact conditional for McNemar, paired bootstrap "
            "otherwise). \"detectable at this n\": the smallest |Δ| the test would find with power 0.8; a row "
            "without it found a difference.\n\n" + tests.to_markdown(index=False) + "\n")
