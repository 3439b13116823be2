"""LongBench records that share a document, as one shared-context sample (issue 25, item 3).

Several LongBench v1 datasets ask more than one question of the same document (qasper, narrativeqa, qmsum,
multifieldqa, ...); kvpress groups its questions by context the same way, and SCBench (Li et al. 2024,
arXiv:2412.10319) builds its multi-request mode on such groups. :func:`shared_samples` groups the records of one
dataset by their ``context`` string (first-seen order) and makes each group of two or more one
:class:`~kvbench.eval.shared_context.SharedSample`: the official prompt (``DATASET2PROMPT``) is split at
``{input}`` -- everything before it, the document included, is the shared context (middle-truncated to
``max_context_tokens`` as LongBench truncates); each question is its ``input`` and the rest of the prompt. Answers
are scored by the dataset's own metric (:func:`kvbench.eval.longbench_metrics.sample_score`). Offline: the records
come from ``suite.options.data_dir`` (the published ``<dataset>.jsonl`` files).
"""

from __future__ import annotations

from collections.abc import Sequence

from kvbench.eval.longbench import truncate_middle
from kvbench.eval.longbench_data import DATASET2PROMPT, NO_CHAT_DATASETS, LongBenchError
from kvbench.eval.shared_context import SharedSample, chat_turn


def group_by_context(records: Sequence[dict]) -> list[list[dict]]:
    """The records grouped by identical ``context``, groups in the order their first record appears."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record["context"], []).append(record)
    return list(groups.values())


def shared_groups(records: Sequence[dict], dataset: str) -> list[list[dict]]:
    """The groups of two or more questions; none is a :class:`LongBenchError` (nothing to share)."""
    if "{input}" not in DATASET2PROMPT[dataset].split("{context}", 1)[-1]:
        raise LongBenchError(f"LongBench dataset {dataset!r} has no question after its document (its prompt has no "
                             "{input} after {context}): choose a QA dataset such as qasper or narrativeqa")
    groups = [g for g in group_by_context(records) if len(g) > 1]
    if not groups:
        raise LongBenchError(f"no two records of LongBench dataset {dataset!r} share a context: nothing to ask "
                             "of one compressed document (qasper, narrativeqa and qmsum have such groups)")
    return groups


def shared_samples(groups: Sequence[list[dict]], dataset: str, tokenizer, questions: int, chat: bool,
                   max_context_tokens: int) -> list[SharedSample]:
    """One sample per group: the prompt before ``{input}`` as the context, at most ``questions`` questions."""
    before, after = DATASET2PROMPT[dataset].split("{input}", 1)
    head, tail = chat_turn(tokenizer) if chat and dataset not in NO_CHAT_DATASETS else ("", "")
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    samples = []
    for group in groups:
        asked = group[:questions]
        context, _ = truncate_middle(tokenizer, before.format(context=group[0]["context"]), max_context_tokens)
        context = head + context
        texts = [record["input"] + after + tail for record in asked]
        samples.append(SharedSample(context, texts, [r["answers"][0] for r in asked], ids(context),
                                    [ids(t) for t in texts], golds=[list(r["answers"]) for r in asked],
                                    dataset=dataset, all_classes=asked[0].get("all_classes")))
    return samples
