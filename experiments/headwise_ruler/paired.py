"""experiment=headwise_ruler: what seeing the question at compression is worth, per method, on the same samples.

``kvbench-report`` tests each row against ``full`` under its own protocol. Issue 26 asks two more questions, answered
here from the sweep's records and their per-sample sidecars (``record.samples.jsonl.gz``):

* the **question-visible gap**: per method and budget, the query-aware run (``suite=ruler_query_aware``: the question
  compressed with the context) minus the query-agnostic run (``suite=ruler``: the question fed after compression) on
  the same samples -- a query-aware scorer (snapkv, adakv: their window holds the question) should gain, a method that
  ignores the question by construction (duo_attention's fixed heads) should not;
* each method against **uniform snapkv** at the same budget under the same protocol.

Samples pair by (task, sample id): RULER draws them from ``(seed, task, length, index)``, whatever the protocol or
method. The tasks are pooled into one paired test (string_match_all is 0/1 per sample here: exact McNemar, its exact
conditional interval; :func:`kvbench.statistics.compare`), in points (×100); not Holm-corrected. Bytes: what each
run's cache held over the full cache, measured from its tensors (``kv.stored_bytes`` / ``kv.full_bytes``).

    python experiments/headwise_ruler/paired.py reports/records/headwise_ruler >> reports/headwise_ruler.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kvbench.results import iter_records
from kvbench.sample_scores import read_sidecar
from kvbench.statistics import compare

PROTOCOLS = {False: "query-agnostic", True: "query-aware"}


def collect(root: Path) -> dict[tuple[str, str, bool], tuple[object, dict]]:
    """``{(method, budget, query_aware): (record, pooled per-sample rows)}`` of the complete records under ``root``;
    ``budget`` is the config directory (``ruler512_25`` -> ``25%``), ``—`` for ``full``."""
    out = {}
    for path, record in iter_records(root):
        if record.status != "complete":
            continue
        group, _, _ = record.method.get("label", record.method["name"]).rpartition("/")
        budget = f"{group.rsplit('_', 1)[-1]}%" if group else "—"
        rows = {f"{task}:{i}": row for task, by_id in (read_sidecar(path) or {}).items() for i, row in by_id.items()}
        out[(record.method["name"], budget, bool(record.suite.get("query_aware")))] = (record, rows)
    return out


def score(rows: dict) -> str:
    values = [r["score"] for r in rows.values() if "score" in r]
    return f"{100 * sum(values) / len(values):.1f}" if values else "—"


def stored(record) -> str:
    kv = record.kv
    return f"{kv['stored_bytes'] / kv['full_bytes']:.3f}" if kv.get("full_bytes") and kv.get("stored_bytes") else "—"


def paired(base: dict, other: dict) -> tuple[str, str, str]:
    """``(Δ other − base [95%], p, n)`` in points, or dashes when nothing pairs."""
    found = compare(base, other, scale=100.0)
    if found is None:
        return "—", "—", "—"
    return f"{found.difference:+.1f} [{found.low:+.1f}, {found.high:+.1f}]", f"{found.p_value:.3g}", str(found.n)


def gap_table(runs) -> str:
    lines = ["| budget | method | agnostic | aware | Δ aware − agnostic [95%] | p | n | bytes agnostic / aware |",
             "|---|---|---|---|---|---|---|---|"]
    for name, budget in sorted({(n, b) for (n, b, _) in runs}, key=lambda k: (k[1] != "—", k[1], k[0])):
        agnostic, aware = runs.get((name, budget, False)), runs.get((name, budget, True))
        if agnostic is None or aware is None:
            continue
        cell, p, n = paired(agnostic[1], aware[1])
        lines.append(f"| {budget} | {name} | {score(agnostic[1])} | {score(aware[1])} | {cell} | {p} | {n} | "
                     f"{stored(agnostic[0])} / {stored(aware[0])} |")
    return "\n".join(lines)


def snapkv_table(runs) -> str:
    lines = ["| protocol | budget | method | score | Δ vs snapkv [95%] | p | n |", "|---|---|---|---|---|---|---|"]
    for aware in (False, True):
        for budget in sorted({b for (_, b, _) in runs if b != "—"}):
            base = runs.get(("snapkv", budget, aware))
            for (name, b, a), (_, rows) in sorted(runs.items()):
                if b != budget or a != aware or name == "snapkv" or base is None:
                    continue
                cell, p, n = paired(base[1], rows)
                lines.append(f"| {PROTOCOLS[aware]} | {budget} | {name} | {score(rows)} | {cell} | {p} | {n} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", type=Path, help="the sweep's records (e.g. reports/records/headwise_ruler)")
    args = parser.parse_args(argv)
    runs = collect(args.records)
    if not runs:
        print(f"no complete records under {args.records}", file=sys.stderr)
        return 1
    command = f"`python experiments/headwise_ruler/paired.py {args.records}` (`make example-headwise_ruler` runs it)"
    print("\n## Seeing the question at compression (paired, per sample)\n")
    print("Each method's query-aware run minus its query-agnostic run on the same samples, the tasks pooled "
          "(string_match_all, points: 0/100 per sample); exact McNemar, its exact conditional 95% interval "
          "(`kvbench.statistics.compare`, not Holm-corrected). `full` is the control: compressing nothing, the "
          "protocol cannot matter. Bytes: stored / full, measured from the cache's tensors, per protocol. "
          f"Generated from the same records by {command}.\n")
    print(gap_table(runs))
    print("\n## Against uniform SnapKV at the same budget and protocol (paired, per sample)\n")
    print("Δ = method − snapkv in points on the same samples, the tasks pooled; the same test.\n")
    print(snapkv_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
