"""LongBench v1 prompts, predictions and scores under the official protocol (the suite: kvbench/suites/longbench.py).

What the official ``pred.py``/``eval.py`` do, and kvbench with them (EVALUATION.md):

1. the prompt is the dataset's official template formatted with the record;
2. if it has more than ``max_length`` tokens, the middle is cut: the first and the last
   ``max_length // 2`` tokens are decoded and joined (:func:`truncate_middle`);
3. chat models get their chat template, except on trec, triviaqa, samsum, lsht, lcc and
   repobench-p (few-shot / completion formats);
4. greedy decoding for the dataset's number of new tokens; samsum also stops at ``\\n``;
5. the official metrics (:mod:`kvbench.eval.longbench_metrics`), x100 per dataset,
   LongBench-E per length bucket.

**Context/query split.** The official prompt is a single string; kvbench compresses the
part up to and including the document and feeds the rest (question, instructions after
the document, the chat template's closing tokens) uncompressed, as the query
(``suite.query_aware=true`` compresses it with the document instead). The split
is made on the *final* prompt (after middle truncation and the chat template), at the
last occurrence of the template's text after ``{context}``, and the prompt is tokenised
whole, so the model sees exactly the official token sequence. If that text did not
survive truncation, the whole prompt is the context (``split: "whole"`` in the
predictions file).

Data and the official constants: :mod:`kvbench.eval.longbench_data`. Predictions are saved per dataset as JSONL in the official ``pred/`` format (plus
kvbench's fields) and can be rescored with
``python -m kvbench.eval.longbench rescore <dir-or-file>``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kvbench.eval.longbench_data import (  # noqa: F401  (re-exported)
    CLASSIFICATION_DATASETS, DATASET2MAXLEN, DATASET2PROMPT, DATASETS, E_DATASETS, NO_CHAT_DATASETS, LongBenchError,
    data_file, load_records,
)
from kvbench.eval.longbench_metrics import (  # noqa: F401  (re-exported: the public metric API)
    DATASET2METRIC, E_BUCKETS, FIRST_LINE_DATASETS, classification_score, code_sim_score, count_score, f1_score,
    normalize_answer, normalize_zh_answer, qa_f1_score, qa_f1_zh_score, retrieval_score, retrieval_zh_score,
    rouge_score, rouge_zh_score, sample_score, score, score_e,
)
from kvbench.eval.prompts import chat_wrap, encode, encode_split, eos_ids


def truncate_middle(tokenizer, prompt: str, max_length: int) -> tuple[str, bool]:
    """Official middle truncation: keep the first and last ``max_length // 2`` tokens, decoded and joined."""
    ids = encode(tokenizer, prompt)
    if len(ids) <= max_length:
        return prompt, False
    half = int(max_length / 2)
    head = tokenizer.decode(ids[:half], skip_special_tokens=True)
    tail = tokenizer.decode(ids[-half:], skip_special_tokens=True)
    return head + tail, True


@dataclass
class LongBenchPrompt:
    context_ids: list[int]
    query_ids: list[int]
    text: str
    truncated: bool
    chat: bool
    #: "query": split at the text after the document; "whole": that text was lost, all is context.
    split: str


def build_prompt(record: dict, dataset: str, tokenizer, max_length: int, chat: bool) -> LongBenchPrompt:
    """The official prompt for ``record``, truncated and templated, split into context and query ids."""
    template = DATASET2PROMPT[dataset]
    text = template.format(**record)
    suffix = template.split("{context}", 1)[1].format(**record)
    text, truncated = truncate_middle(tokenizer, text, max_length)
    use_chat = chat and dataset not in NO_CHAT_DATASETS
    if use_chat:
        text = chat_wrap(tokenizer, text)
    # A chat template writes its own special tokens as text; do not add them a second time.
    add_special = not use_chat
    boundary = text.rfind(suffix) if suffix else -1
    if boundary < 0:
        return LongBenchPrompt(encode(tokenizer, text, add_special), [], text, truncated, use_chat, "whole")
    context_ids, query_ids = encode_split(tokenizer, text, boundary, add_special)
    return LongBenchPrompt(context_ids, query_ids, text, truncated, use_chat, "query")



def jsonl(rows: Sequence[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def predict_dataset(protocol, tokenizer, dataset: str, records: Sequence[dict], max_length: int, chat: bool,
                    max_new_tokens: int | None = None, query_aware: bool = False, probe=None) -> list[dict]:
    """Generate a prediction per record through the compression protocol; rows in the official pred format.

    ``max_new_tokens`` caps the official per-dataset number (smoke runs); None keeps it. ``query_aware``:
    the query part is compressed with the context instead of being fed after it. ``probe`` (a
    :class:`~kvbench.eval.fidelity.DivergenceProbe`, ``suite.fidelity``) adds each answer's divergence from full.
    """
    max_new = DATASET2MAXLEN[dataset] if max_new_tokens is None else min(max_new_tokens, DATASET2MAXLEN[dataset])
    eos = eos_ids(tokenizer, protocol.model)
    if dataset == "samsum":  # official: also stop at the newline token
        eos = sorted(set(eos) | {tokenizer.encode("\n", add_special_tokens=False)[-1]})
    rows = []
    for i, record in enumerate(records):
        prompt = build_prompt(record, dataset, tokenizer, max_length, chat)
        generated = protocol.generate(prompt.context_ids, max_new, eos_token_ids=eos, query=prompt.query_ids,
                                      query_aware=query_aware)
        rows.append({
            "pred": tokenizer.decode(generated, skip_special_tokens=True),
            "answers": record["answers"],
            "all_classes": record.get("all_classes"),
            "length": record.get("length"),
            "_id": record.get("_id", i),
            "context_tokens": len(prompt.context_ids),
            "query_tokens": len(prompt.query_ids),
            "generated_tokens": len(generated),
            "truncated": prompt.truncated,
            "chat": prompt.chat,
            "split": prompt.split,
            "query_aware": bool(query_aware),
        })
        if probe is not None:
            rows[-1].update(probe.measure(protocol, prompt.context_ids, prompt.query_ids, query_aware, max_new, eos))
    return rows


def score_rows(dataset: str, rows: Sequence[dict], e: bool = False) -> dict[str, float]:
    """Metrics of one dataset's prediction rows: ``{<metric name>: score}`` (+ per bucket for LongBench-E)."""
    if dataset not in DATASET2METRIC:
        raise LongBenchError(f"unknown LongBench dataset {dataset!r} (choose from: {', '.join(DATASETS)})")
    name = DATASET2METRIC[dataset].__name__
    preds = [r["pred"] for r in rows]
    answers = [r["answers"] for r in rows]
    # The official eval.py takes all_classes from the records (the last one read); they are all equal.
    all_classes = rows[-1].get("all_classes") if rows else None
    out = {name: score(dataset, preds, answers, all_classes)}
    if e:
        buckets = score_e(dataset, preds, answers, [r["length"] for r in rows], all_classes)
        out.update({f"{name}@{k}": v for k, v in buckets.items() if v == v})  # drop empty (NaN) buckets
    return out


# -- rescoring ------------------------------------------------------------------------------------
def read_predictions(path: str | Path) -> list[dict]:
    path = Path(path)
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            for key in ("pred", "answers"):
                if key not in row:
                    raise LongBenchError(f"{path}:{lineno}: prediction row has no {key!r} field")
            rows.append(row)
    if not rows:
        raise LongBenchError(f"{path} holds no predictions")
    return rows


def rescore(path: str | Path, e: bool = False) -> dict[str, dict[str, float]]:
    """Scores of a predictions file (``<dataset>.jsonl``) or of every such file in a directory."""
    path = Path(path)
    files = sorted(p for p in path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise LongBenchError(f"no <dataset>.jsonl prediction files in {path}")
    out = {}
    for file in files:
        dataset = file.name.split(".")[0]
        dataset = dataset[:-2] if dataset.endswith("_e") and dataset[:-2] in DATASET2METRIC else dataset
        out[dataset] = score_rows(dataset, read_predictions(file), e)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvbench.eval.longbench",
                                     description="Rescore LongBench prediction files with the official metrics.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("rescore", help="score <dataset>.jsonl prediction files (a file or a directory)")
    p.add_argument("path")
    p.add_argument("--e", action="store_true", help="LongBench-E: also score per length bucket")
    args = parser.parse_args(argv)
    try:
        result = rescore(args.path, e=args.e)
    except LongBenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


__all__ = [
    "DATASET2PROMPT", "DATASET2MAXLEN", "DATASET2METRIC", "DATASETS", "E_DATASETS", "NO_CHAT_DATASETS",
    "LongBenchError", "build_prompt", "truncate_middle", "jsonl",
    "load_records", "data_file", "predict_dataset", "score_rows", "rescore", "score", "score_e", "sample_score",
    "qa_f1_score", "qa_f1_zh_score", "rouge_score", "rouge_zh_score", "classification_score", "retrieval_score",
    "retrieval_zh_score", "count_score", "code_sim_score", "f1_score", "normalize_answer", "normalize_zh_answer",
]
