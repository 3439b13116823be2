"""experiment=longgen (and its miniature longgen_mini): where along the trace each method departs from ``full``, paired
prompt by prompt, from the sweep's records and their per-prompt traces (and those of replicate sweeps on other
prompts, pooled).

``kvbench-report`` rolls each task up against ``full`` (the whole-trace KL, a mean per task); issue 25 asks for
more: that the methods separate on divergence *along* the trace, where in the trace each one departs, and the change
in output length with a paired interval. This script reads every complete record under the directory and the
``longgen/traces.jsonl`` beside it (one row per prompt: per-bin KL and top-1 agreement on full's own output, the
first generated token where the method's own output differs from full's, both lengths, decode ms/step), pools the
prompts of both tasks (a prompt is ``task:index``, the same prompts for every method), and writes:

* KL per position bin with a bootstrap 95% interval over prompts, and each method against ``streaming_llm`` (the
  rule without scores: the sinks and the newest tokens) per bin: does scoring the cache keep a method closer to
  full than recency alone, and from where in the trace? The paired difference, its paired-bootstrap interval and
  the sign-flip p (:func:`kvbench.statistics.continuous_comparison`), Holm-corrected within each bin (the methods
  compared there); the baseline is fixed before looking (without a streaming_llm run: the lowest whole-trace KL);
* the first-disagreement position: median over prompts with a bootstrap interval, and how many prompts departed
  (a prompt that never departs counts at its length: a censored value, so the median is a lower bound there);
* output length against full's on the same prompt: mean change, paired interval, sign-flip p;
* peak and final KV bytes of the generations against full's (measured from the tensors after every step), decode
  ms/step, and the progression's accuracy.

    python experiments/longgen/paired.py reports/records/longgen_smollm2_mini [replicate records ...] >> report.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from kvbench.results import iter_records
from kvbench.statistics import SEED, continuous_comparison, holm

ALPHA = 0.05
BOOTSTRAP = 2000


def collect(roots: list[Path]) -> dict[str, tuple[list, dict[str, dict]]]:
    """``{label: ([records], {prompt id: trace row})}`` of the complete records under each of ``roots`` with their
    traces. Several roots are replicates of one sweep on other prompts (another ``suite.options.seed``): their prompts
    are pooled, each id prefixed by its root's name."""
    out = {}
    for root in roots:
        prefix = f"{root.name}:" if len(roots) > 1 else ""
        for path, record in iter_records(root):
            traces = Path(path).parent / record.suite.get("name", "longgen") / "traces.jsonl"
            if record.status != "complete" or not traces.exists():
                continue
            params = record.method.get("params", {})
            label = record.method["name"]
            if params.get("decode_budget_tokens") is not None:
                label += f" (decode {params['decode_budget_tokens']}, every {params.get('compress_every', 1)})"
            rows = [json.loads(line) for line in traces.read_text().splitlines() if line.strip()]
            records, kept = out.setdefault(label, ([], {}))
            records.append(record)
            kept.update({f"{prefix}{r['task']}:{r['prompt']}": r for r in rows})
    return out


def interval(values, aggregate=np.mean) -> tuple[float, float, float]:
    """``(value, low, high)``: ``aggregate`` of ``values`` and its percentile-bootstrap 95% interval."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(SEED)
    picks = rng.integers(0, len(values), size=(BOOTSTRAP, len(values)))
    samples = [aggregate(values[p]) for p in picks]
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(aggregate(values)), float(low), float(high)


def bin_names(runs) -> list[str]:
    names = []
    for _, rows in runs.values():
        for row in rows.values():
            names += [n for n in row["kl_bins"] if n not in names]
    return names


def kl_table(runs, bins: list[str], methods: list[str]) -> str:
    head = " | ".join(f"KL {b} [95%]" for b in bins) + " | " + " | ".join(f"top-1 {b}" for b in bins)
    lines = [f"| method | n | {head} |", "|---|---|" + "---|" * (2 * len(bins))]
    for label in methods:
        rows = list(runs[label][1].values())
        cells = []
        for b in bins:
            values = [r["kl_bins"][b] for r in rows if r["kl_bins"].get(b) is not None]
            cells.append("—" if not values else "{:.3g} [{:.3g}, {:.3g}]".format(*interval(values)))
        for b in bins:
            values = [r["agreement_bins"][b] for r in rows if r["agreement_bins"].get(b) is not None]
            cells.append("—" if not values else f"{np.mean(values):.3f}")
        lines.append(f"| {label} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def decode_budget(runs, label: str):
    """The decode budget (tokens) of a label's runs; None for full or a method without one."""
    return runs[label][0][0].method.get("params", {}).get("decode_budget_tokens")


def against_baseline(runs, bins: list[str], methods: list[str]) -> list[tuple[str, str]]:
    """Each method against streaming_llm at the same decode budget, per bin, paired by prompt (Holm within each
    bin and budget): ``[(baseline label, table)]``, one per decode budget, smallest first."""
    out = []
    for budget in sorted({decode_budget(runs, m) for m in methods}, key=lambda b: (b is None, b or 0)):
        group = [m for m in methods if decode_budget(runs, m) == budget]
        if len(group) > 1:
            out.append(_against_baseline(runs, bins, group))
    return out


def _against_baseline(runs, bins: list[str], methods: list[str]) -> tuple[str, str]:
    closest = next((m for m in methods if m.startswith("streaming_llm")), None) or min(
        methods, key=lambda m: np.mean([r["kl"] for r in runs[m][1].values()]))
    base = runs[closest][1]
    found = []
    for label in methods:
        if label == closest:
            continue
        rows = runs[label][1]
        for b in [*bins, "whole trace"]:
            pick = (lambda r: r["kl"]) if b == "whole trace" else (lambda r, b=b: r["kl_bins"].get(b))
            ids = [i for i in sorted(set(rows) & set(base)) if pick(rows[i]) is not None and pick(base[i]) is not None]
            if len(ids) >= 2:
                found.append((label, b, continuous_comparison([pick(base[i]) for i in ids],
                                                              [pick(rows[i]) for i in ids])))
    adjusted = [None] * len(found)
    for b in {b for _, b, _ in found}:
        where = [i for i, (_, bb, _) in enumerate(found) if bb == b]
        for i, p in zip(where, holm([found[i][2].p_value for i in where])):
            adjusted[i] = p
    lines = [f"| method | bin | Δ KL vs {closest} [95%] | p | p (Holm) | n | verdict |",
             "|---|---|---|---|---|---|---|"]
    for (label, b, c), p_holm in zip(found, adjusted):
        verdict = ("further from full" if c.difference > 0 else "closer to full") if p_holm < ALPHA else "not separated"
        lines.append(f"| {label} | {b} | {c.difference:+.3g} [{c.low:+.3g}, {c.high:+.3g}] | {c.p_value:.3g} | "
                     f"{p_holm:.3g} | {c.n} | {verdict} |")
    return closest, "\n".join(lines)


def budget_table(runs, methods: list[str]) -> str | None:
    """Per method run at several decode budgets: the whole-trace KL of each larger budget minus the smallest's on the
    same prompts (negative: the larger budget is closer to full), sign-flip p, Holm across the rows. None when no
    method has two budgets."""
    found = []
    for name in sorted({runs[m][0][0].method["name"] for m in methods}):
        labels = sorted((m for m in methods if runs[m][0][0].method["name"] == name and decode_budget(runs, m)),
                        key=lambda m: decode_budget(runs, m))
        for label in labels[1:]:
            small, large = runs[labels[0]][1], runs[label][1]
            ids = sorted(set(small) & set(large))
            if len(ids) >= 2:
                found.append((labels[0], label, continuous_comparison([small[i]["kl"] for i in ids],
                                                                      [large[i]["kl"] for i in ids])))
    if not found:
        return None
    lines = ["| method | Δ KL (whole trace) vs the smaller budget [95%] | p | p (Holm) | n | verdict |",
             "|---|---|---|---|---|---|"]
    for (small, large, c), p_holm in zip(found, holm([c.p_value for _, _, c in found])):
        verdict = ("closer to full" if c.difference < 0 else "further from full") if p_holm < ALPHA else "not separated"
        lines.append(f"| {large} vs {small} | {c.difference:+.3g} [{c.low:+.3g}, {c.high:+.3g}] | {c.p_value:.3g} | "
                     f"{p_holm:.3g} | {c.n} | {verdict} |")
    return "\n".join(lines)


def departure_and_length_table(runs, methods: list[str], full: str | None) -> str:
    lines = ["| method | first departure: median token [95%] | departed | output length (full's) | "
             "Δ length vs full [95%] | p | peak decode bytes / full's | final bytes / full's | decode ms/step | "
             "progression accuracy (full's) |", "|---|---|---|---|---|---|---|---|---|---|"]
    full_records = runs[full][0] if full else []
    for label in methods:
        records, rows = runs[label]
        ordered = [rows[i] for i in sorted(rows)]
        first = "{:.0f} [{:.0f}, {:.0f}]".format(*interval([r["first_disagreement"] for r in ordered],
                                                         statistics.median))
        departed = f"{sum(bool(r['departed']) for r in ordered)}/{len(ordered)}"
        lengths, full_lengths = [r["length"] for r in ordered], [r["full_length"] for r in ordered]
        change = continuous_comparison(full_lengths, lengths)
        delta = f"{change.difference:+.3g} [{change.low:+.3g}, {change.high:+.3g}]"
        peak = _share(_bytes(records, "peak_decode_stored_bytes", max),
                      _bytes(full_records, "peak_decode_stored_bytes", max))
        final = _share(_bytes(records, "final_decode_stored_bytes", sum),
                       _bytes(full_records, "final_decode_stored_bytes", sum))
        ms = [r["decode_ms_per_step"] for r in ordered if r.get("decode_ms_per_step") is not None]
        accuracy = [r for r in ordered if "accuracy" in r]
        acc = "—"
        if accuracy:
            acc = f"{np.mean([r['accuracy'] for r in accuracy]):.3f} ({np.mean([r['accuracy_full'] for r in accuracy]):.3f})"
        batch_rows = {r.get("decode_rows", 1) for r in ordered if r.get("decode_ms_per_step") is not None}
        speed = f"{np.mean(ms):.0f}" if ms else "—"
        if ms and batch_rows != {1}:  # trace_batch: the step of a batch of rows, not of one sequence
            speed += f" ({'/'.join(str(b) for b in sorted(batch_rows))} rows)"
        lines.append(f"| {label} | {first} | {departed} | {np.mean(lengths):.1f} ({np.mean(full_lengths):.1f}) | "
                     f"{delta} | {change.p_value:.3g} | {peak} | {final} | {speed} | {acc} |")
    return "\n".join(lines)


def _bytes(records, key: str, combine):
    """A byte figure over replicate records: the largest peak, the summed final caches (None when any lacks it)."""
    values = [r.kv.get(key) for r in records]
    return combine(values) if values and all(v is not None for v in values) else None


def _share(value, full_value) -> str:
    return f"{value / full_value:.3f}" if value and full_value else "—"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", type=Path, nargs="+",
                        help="the sweep's records (e.g. reports/records/longgen_smollm2_mini), and any replicates")
    args = parser.parse_args(argv)
    runs = collect(args.records)
    full = next((label for label in runs if label == "full"), None)
    methods = sorted(label for label in runs if label != "full")
    if not methods:
        print(f"no complete longgen records with traces under {' '.join(map(str, args.records))}", file=sys.stderr)
        return 1
    bins = bin_names(runs)
    n = len(runs[methods[0]][1])
    pooled = f" -- pooled over {len(args.records)} sweeps on different prompts" if len(args.records) > 1 else ""
    print(f"\n## Along the trace (paired, per prompt){pooled}\n")
    tasks = sorted({prompt.rsplit(":", 2)[-2] for prompt in runs[methods[0]][1]})
    pooled_tasks = f"the tasks {', '.join(tasks)} pooled" if len(tasks) > 1 else f"task {tasks[0]}"
    print(f"Per prompt (n = {n}: {pooled_tasks}, the same prompts for every method), from each run's "
          "`longgen/traces.jsonl`; KL(full ‖ method) and top-1 agreement teacher-forced on full's own greedy output, "
          "averaged within each position bin, then over prompts (percentile-bootstrap 95% interval over prompts). "
          f"Generated by `python experiments/longgen/paired.py {' '.join(map(str, args.records))}`.\n")
    print(kl_table(runs, bins, methods))
    for closest, table in against_baseline(runs, bins, methods):
        print(f"\n### Against {closest}, bin by bin\n")
        print(f"Δ KL = method − {closest} on the same prompts (negative: closer to full than it); sign-flip "
              "permutation test (exact), paired-bootstrap interval, Holm-corrected within "
              f"each bin; 'not separated' where the corrected p ≥ {ALPHA}. With n = {n} the smallest possible "
              f"two-sided p is {2 / 2 ** n:.3g}.\n")
        print(table)
    table = budget_table(runs, methods)
    if table:
        print("\n### The larger decode budget against the smaller, per method\n")
        print("Δ KL = KL at the larger decode budget − KL at the smaller one, whole trace, on the same prompts "
              "(negative: the larger cache keeps the method closer to full); sign-flip permutation test (exact), "
              f"paired-bootstrap interval, Holm-corrected across the rows; 'not separated' where the corrected p ≥ "
              f"{ALPHA}.\n")
        print(table)
    print("\n### Where each departs, output length, bytes and speed\n")
    print("First departure: the first generated token where the method's own greedy output differs from full's "
          "(median over prompts, bootstrap interval; a prompt that never departs counts at its length, so there the "
          "value is a lower bound). Δ length = method − full on the same prompt (sign-flip p, paired-bootstrap "
          "interval). Bytes: the largest cache over the run's generations and the caches they ended with, measured "
          "from the tensors after every decode step, over full's. Decode ms/step on shared, loaded cores: a rough "
          "figure (full's is measured on its one pass); \"(k rows)\": the step of a batch of k rows "
          "(suite.options.batch: each prompt's generation and teacher-forced pass as two rows; peak and final bytes are "
          "then the batch's, for full as for the method, so the shares stay per-sequence ratios).\n")
    print(departure_and_length_table(runs, methods if full is None else [full, *methods], full))
    return 0


if __name__ == "__main__":
    sys.exit(main())
