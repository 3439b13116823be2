"""RULER's string-match scores (EVALUATION.md): case-insensitive substring hits, x100."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def _hits(prediction: str, references: Sequence[str]) -> list[bool]:
    low = prediction.lower()
    return [ref.lower() in low for ref in references]


def sample_match_all(prediction: str, references: Sequence[str]) -> float:
    """One sample's fraction of references found, in [0, 1]."""
    hits = _hits(prediction, references)
    return sum(hits) / len(hits)


def string_match_all(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """x100 mean over samples of the fraction of references found (case-insensitive substring)."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError("string_match_all needs as many reference lists as predictions (at least one)")
    per = [sample_match_all(p, r) for p, r in zip(predictions, references)]
    return round(100 * sum(per) / len(per), 2)


def string_match_part(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """x100 mean over samples of whether any reference is found (case-insensitive substring)."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError("string_match_part needs as many reference lists as predictions (at least one)")
    per = [float(any(_hits(p, r))) for p, r in zip(predictions, references)]
    return round(100 * sum(per) / len(per), 2)


def rescore(path: str | Path, multi_reference: Sequence[str] = ()) -> dict[str, dict[str, float]]:
    """Scores of a ``predictions.jsonl`` written by the ruler suite; tasks in ``multi_reference`` also
    get ``string_match_part``."""
    groups: dict[str, tuple[list[str], list[list[str]], str]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            preds, refs, task = groups.setdefault(f"{row['task']}_{row['length']}", ([], [], row["task"]))
            preds.append(row["pred"])
            refs.append(row["answers"])
    out = {}
    for key, (preds, refs, task) in groups.items():
        out[key] = {"string_match_all": string_match_all(preds, refs)}
        if task in multi_reference:
            out[key]["string_match_part"] = string_match_part(preds, refs)
    return out
