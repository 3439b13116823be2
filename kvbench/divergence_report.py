"""The report's "divergence from full" section: how far each method's next-token distributions moved from full's along
the answers a decoding suite generated (``suite.fidelity=true``; :class:`kvbench.eval.fidelity.DivergenceProbe`).

Task scores of a small model sit at the floor, so two methods that both score 0 may still differ a lot in how much
they disturb the model; this section shows it per task: the mean per-prompt KL(full ‖ method) in nats with its 95%
bootstrap interval over prompts (positions within one answer are correlated, the prompt is the unit), the top-1
agreement and the mean first disagreeing position, all teacher-forced on full's own greedy answers. Read only from the
records (the frame's ``divergence`` column, :mod:`kvbench.records_frame`).
"""

from __future__ import annotations

import json

import pandas as pd

FIELDS = ("kl_vs_full", "kl_vs_full_low", "kl_vs_full_high", "top1_vs_full", "first_disagreement_vs_full")


def divergence_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, task) that carries probe metrics: model, method, task, KL and its interval, agreement."""
    rows = []
    if "divergence" not in frame:
        return pd.DataFrame(rows)
    for _, run in frame[frame["divergence"].notna()].iterrows():
        for task, found in json.loads(run["divergence"]).items():
            rows.append({"model": run["model"], "method": run["label"], "task": task,
                         **{name: found.get(name) for name in FIELDS}})
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame) -> str:
    """The section (empty when no record carries probe metrics)."""
    table = divergence_table(frame)
    if table.empty:
        return ""
    shown = pd.DataFrame({
        "model": table["model"], "method": table["method"], "task": table["task"],
        "KL(full ‖ method), nats": [_interval(r.kl_vs_full, r.kl_vs_full_low, r.kl_vs_full_high)
                                    for r in table.itertuples()],
        "top-1 agreement": table["top1_vs_full"].map(lambda v: f"{v:.3f}"),
        "first disagreement": table["first_disagreement_vs_full"].map(lambda v: f"{v:.1f}"),
    })
    return ("## Divergence from full along the answers\n\nTeacher-forced on full's own greedy answer to each prompt "
            "(the method's prompt split: the context compressed, the question after it unless query-aware): the mean "
            "per-prompt KL(full ‖ method) with its 95% bootstrap interval over prompts, the share of positions whose "
            "top token agrees, and the mean first position where the greedy choices differ (censored at the answer's "
            "length). `full` against itself is 0, 1 and the answer length exactly.\n\n"
            + shown.to_markdown(index=False) + "\n")


def _interval(value, low, high) -> str:
    if low is None or pd.isna(low):
        return f"{value:.3g}"
    return f"{value:.3g} [{low:.3g}, {high:.3g}]"
