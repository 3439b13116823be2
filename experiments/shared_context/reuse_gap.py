"""experiment=shared_context: the cost of reusing a compressed context, per method, paired on the same questions.

SCBench (Li et al. 2024, arXiv:2412.10319) asks whether query-aware compression (SnapKV's observation window over
the question) survives when the context is compressed once and then asked several questions. ``suite=shared_context``
scores every question twice: ``score`` from the shared compressed context (the question was *not* visible at
compression time) and ``score_own`` with the question compressed with its context (visible). The record keeps the
means and ``reuse_cost`` = ``score_own − score``; this script pairs the two per question from each run's
``answers.jsonl`` (copied beside the records) and tests the gap: exact McNemar over the questions, and a sign-flip
test over the contexts' means (the questions of one context are not independent), with the paired interval.

    python experiments/shared_context/reuse_gap.py reports/records/shared_context_smollm2 >> reports/shared_context_smollm2.md
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from kvbench.results import iter_records, short_params
from kvbench.statistics import ALPHA, compare, continuous_comparison


def answers(record_path: Path, suite_name: str) -> list[dict]:
    """The per-question rows a shared_context run wrote (``<run dir>/<suite>/answers.jsonl``), or none."""
    path = Path(record_path).parent / suite_name / "answers.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def gap(rows: list[dict]):
    """``(per-question McNemar comparison, per-context sign-flip comparison)`` of ``score_own`` against ``score``:
    ``difference`` = score_own − score (the reuse gap)."""
    reused = {f"{r['sample']}.{r['question']}": {"score": r["score"]} for r in rows}
    own = {f"{r['sample']}.{r['question']}": {"score": r["score_own"]} for r in rows}
    by_context = defaultdict(lambda: ([], []))
    for r in rows:
        by_context[r["sample"]][0].append(r["score"])
        by_context[r["sample"]][1].append(r["score_own"])
    means = [(sum(a) / len(a), sum(b) / len(b)) for a, b in by_context.values()]
    per_context = continuous_comparison([m[0] for m in means], [m[1] for m in means]) if len(means) > 1 else None
    return compare(reused, own, binary=True), per_context


def table(root: Path) -> tuple[str, dict[str, tuple]]:
    """The markdown table, one row per (method, task), and the comparisons by method label."""
    lines = ["| method | params | task | n questions (contexts) | score (question visible: no) | score_own "
             "(question visible: yes) | reuse gap own − score [95%] | p (questions, McNemar) | p (contexts, "
             "sign-flip) | compress once / each, s per question |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    found = {}
    for path, record in sorted(iter_records(root), key=lambda pr: (pr[1].method.get("name") != "full",
                                                                    str(pr[1].method.get("label")))):
        if record.status != "complete":
            continue
        label, params = record.method.get("label") or record.method["name"], short_params(record.method.get("label_params") or {})
        rows = answers(Path(path), record.suite.name)
        for task in record.suite.tasks:
            task_rows = [r for r in rows if r["task"] == task]
            metrics = record.metrics.get(task, {})
            if not task_rows:
                continue
            per_question, per_context = gap(task_rows)
            found[(label, task)] = (per_question, per_context)
            timing = (f"{metrics['amortised_once_s']:.2f} / {metrics['amortised_each_s']:.2f}"
                      if "amortised_once_s" in metrics else "—")
            p_context = f"{per_context.p_value:.3g}" if per_context else "—"
            lines.append(
                f"| {label} | {params} | {task} | {per_question.n} ({len({r['sample'] for r in task_rows})}) | "
                f"{metrics['score']:.3f} | {metrics['score_own']:.3f} | {per_question.difference:+.3f} "
                f"[{per_question.low:+.3f}, {per_question.high:+.3f}] | {per_question.p_value:.3g} | {p_context} | "
                f"{timing} |")
    return "\n".join(lines), found


def snapkv_sentences(found: dict) -> list[str]:
    """Per snapkv run and mode (one per budget): whether SnapKV query-agnostic (multi-request or multi-turn) scores
    below SnapKV query-aware, said from the test alone."""
    hits = sorted((k, v) for k, v in found.items() if k[0].endswith("snapkv"))
    if not hits:
        return ["No snapkv run under these records."]
    out = []
    for (label, task), (q, c) in hits:
        mode = task.replace("_", "-")
        contexts = f" (sign-flip over contexts p = {c.p_value:.3g})" if c else ""
        if q.p_value < ALPHA and q.difference > 0:
            out.append(f"**{label} query-agnostic ({mode}) scores below {label} query-aware on the same "
                       f"questions**: reuse gap {q.difference:+.3f} [{q.low:+.3f}, {q.high:+.3f}], exact McNemar "
                       f"p = {q.p_value:.3g} over {q.n} questions{contexts}.")
        else:
            out.append(f"{label} ({mode}): no significant reuse gap at this n (gap {q.difference:+.3f} "
                       f"[{q.low:+.3f}, {q.high:+.3f}], p = {q.p_value:.3g} over {q.n} questions; detectable "
                       f"|gap| ≥ {q.mde:.3g}).")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", type=Path, help="the sweep's records (e.g. reports/records/shared_context_smollm2)")
    args = parser.parse_args(argv)
    text, found = table(args.records)
    if not found:
        print(f"no complete shared_context record with its answers under {args.records}", file=sys.stderr)
        return 1
    print("\n## The cost of reuse, per method (paired on the same questions)\n")
    print("Each question is answered twice: from the context compressed once before any question (`score`, the "
          "question was not visible at compression time) and compressed with its own context (`score_own`, visible). "
          "Reuse gap = score_own − score: positive when reusing the compressed context costs accuracy. Exact McNemar "
          "over the questions (interval: exact conditional), and a sign-flip test over the contexts' mean scores, "
          "since the questions of one context share its compression; neither is Holm-corrected. Timing: seconds "
          "compressing per question, once for all questions against once per question. Generated from the records "
          f"and their answers by `python experiments/shared_context/reuse_gap.py {args.records}` "
          "(`make example-shared_context` runs it).\n")
    print(text + "\n")
    print("\n\n".join(snapkv_sentences(found)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
