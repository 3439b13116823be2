"""LongBench v1 under the official protocol, through kvbench's compression protocol.

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
the document, the chat template's closing tokens) uncompressed, as the query. The split
is made on the *final* prompt (after middle truncation and the chat template), at the
last occurrence of the template's text after ``{context}``, and the prompt is tokenised
whole, so the model sees exactly the official token sequence. If that text did not
survive truncation, the whole prompt is the context (``split: "whole"`` in the
predictions file).

Data: ``suite.options.data_dir`` holds the published ``<dataset>.jsonl`` files
(``<dataset>_e.jsonl`` for LongBench-E), i.e. the content of ``data.zip`` from the hub
dataset ``THUDM/LongBench``; without a ``data_dir`` and with network access the zip is
fetched from the hub and unzipped under ``$KVBENCH_CACHE_DIR`` (default ``~/.cache/kvbench``).
Predictions are saved per dataset as JSONL in the official ``pred/`` format (plus
kvbench's fields) and can be rescored with
``python -m kvbench.eval.longbench rescore <dir-or-file>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvbench.eval.longbench_metrics import (  # noqa: F401  (re-exported: the public metric API)
    DATASET2METRIC, E_BUCKETS, FIRST_LINE_DATASETS, classification_score, code_sim_score, count_score, f1_score,
    normalize_answer, normalize_zh_answer, qa_f1_score, qa_f1_zh_score, retrieval_score, retrieval_zh_score,
    rouge_score, rouge_zh_score, sample_score, score, score_e,
)
from kvbench.eval.prompt_split import chat_wrap, encode, encode_split, has_chat_template
from kvbench.results import atomic_write_text

log = logging.getLogger(__name__)

#: The official per-dataset prompts (``config/dataset2prompt.json`` of THUDM/LongBench).
DATASET2PROMPT = {
    "narrativeqa": "You are given a story, which can be either a novel or a movie script, and a question. Answer the question as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: {context}\n\nNow, answer the question based on the story as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "qasper": "You are given a scientific article and a question. Answer the question as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "multifieldqa_en": "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "multifieldqa_zh": "阅读以下文字并用中文简短回答：\n\n{context}\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。\n\n问题：{input}\n回答：",
    "hotpotqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "2wikimqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "musique": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "dureader": "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：",
    "gov_report": "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
    "qmsum": "You are given a meeting transcript and a query containing a question or instruction. Answer the query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
    "multi_news": "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:",
    "vcsum": "下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录：\n{context}\n\n会议总结：",
    "trec": "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
    "triviaqa": "Answer the question based on the given passage. Only give me the answer and do not output any other words. The following are some examples.\n\n{context}\n\n{input}",
    "samsum": "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",
    "lsht": "请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}",
    "passage_count": "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",
    "passage_retrieval_en": "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: ",
    "passage_retrieval_zh": "以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n{context}\n\n下面是一个摘要\n\n{input}\n\n请输入摘要所属段落的编号。答案格式必须是\"段落1\"，\"段落2\"等格式\n\n答案是：",
    "lcc": "Please complete the code given below. \n{context}Next line of code:\n",
    "repobench-p": "Please complete the code given below. \n{context}{input}Next line of code:\n",
}

#: Official maximum number of new tokens per dataset.
DATASET2MAXLEN = {
    "narrativeqa": 128, "qasper": 128, "dureader": 128, "samsum": 128,
    "multifieldqa_en": 64, "multifieldqa_zh": 64, "trec": 64, "lsht": 64, "lcc": 64, "repobench-p": 64,
    "hotpotqa": 32, "2wikimqa": 32, "musique": 32, "triviaqa": 32, "passage_count": 32,
    "passage_retrieval_en": 32, "passage_retrieval_zh": 32,
    "gov_report": 512, "qmsum": 512, "multi_news": 512, "vcsum": 512,
}

#: Datasets on which chat models do NOT get their chat template (official rule).
NO_CHAT_DATASETS = frozenset({"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"})
#: The 21 LongBench datasets and the 13 that have LongBench-E (``_e``) versions.
DATASETS = tuple(DATASET2PROMPT)
E_DATASETS = ("qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report", "multi_news", "trec",
              "triviaqa", "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p")
#: Datasets whose gold answers need ``all_classes``.
CLASSIFICATION_DATASETS = frozenset({"trec", "lsht"})

HUB_REPO = "THUDM/LongBench"


class LongBenchError(ValueError):
    """A LongBench suite cannot run; the message names the setting, file or line at fault."""


@dataclass
class LongBenchOptions:
    """``suite.options`` of a LongBench suite."""

    #: Directory of ``<dataset>.jsonl`` files (or a ``data/`` subdirectory of them). None: hub.
    data_dir: str | None = None
    #: LongBench-E: read ``<dataset>_e.jsonl`` and score per length bucket.
    e: bool = False
    #: Prompt budget in tokens for middle truncation (None: the model's ``max_length``).
    max_length: int | None = None
    #: Force the chat template on (True) or off (False); None: ``model.chat``.
    chat_template: bool | None = None


def _options(suite_cfg) -> LongBenchOptions:
    from kvbench.config import suite_options

    opts = LongBenchOptions(**suite_options(suite_cfg, LongBenchOptions, LongBenchError, "LongBench"))
    if opts.max_length is not None and (not isinstance(opts.max_length, int) or opts.max_length < 2):
        raise LongBenchError(f"suite.options.max_length={opts.max_length!r} must be an integer >= 2 (tokens)")
    return opts


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def data_file(data_dir: str | Path, dataset: str, e: bool = False) -> Path:
    """The JSONL file of ``dataset`` in ``data_dir`` (``<dir>/<name>.jsonl`` or ``<dir>/data/<name>.jsonl``)."""
    name = f"{dataset}_e.jsonl" if e else f"{dataset}.jsonl"
    root = Path(data_dir).expanduser()
    for candidate in (root / name, root / "data" / name):
        if candidate.is_file():
            return candidate
    return root / name


def load_records(path: str | Path, dataset: str, e: bool = False) -> list[dict]:
    """Read and check a LongBench JSONL file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise LongBenchError(f"LongBench file {path} does not exist")
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise LongBenchError(f"{where}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise LongBenchError(f"{where}: expected a JSON object, got {type(record).__name__}")
            for key in ("context", "input", "answers"):
                if key not in record:
                    raise LongBenchError(f"{where}: record has no {key!r} field "
                                         "(LongBench records need input, context, answers, length, all_classes)")
            if not isinstance(record["context"], str) or not isinstance(record["input"], str):
                raise LongBenchError(f"{where}: 'context' and 'input' must be strings")
            answers = record["answers"]
            if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
                raise LongBenchError(f"{where}: 'answers' must be a non-empty list of strings, got {answers!r}")
            if e and not isinstance(record.get("length"), int):
                raise LongBenchError(f"{where}: LongBench-E records need an integer 'length' field")
            classes = record.get("all_classes")
            if dataset in CLASSIFICATION_DATASETS and not (isinstance(classes, list) and classes):
                raise LongBenchError(f"{where}: {dataset} records need a non-empty 'all_classes' list")
            records.append(record)
    if not records:
        raise LongBenchError(f"{path} holds no records")
    return records


def _check_datasets(tasks: Sequence[str], e: bool) -> None:
    if not tasks:
        raise LongBenchError(f"suite.tasks is empty: list LongBench datasets (choose from: {', '.join(DATASETS)})")
    valid = E_DATASETS if e else DATASETS
    unknown = [t for t in tasks if t not in valid]
    if unknown:
        kind = "LongBench-E" if e else "LongBench"
        raise LongBenchError(f"unknown {kind} dataset(s) {', '.join(map(repr, unknown))} "
                             f"(choose from: {', '.join(valid)})")


def validate_suite(suite_cfg, model_cfg=None) -> dict[str, Path]:
    """Check a LongBench suite before any model is loaded; returns ``{dataset: data file}``.

    Reads every data file in full, so a broken record fails here, not after hours of decoding.
    """
    opts = _options(suite_cfg)
    tasks = list(suite_cfg.tasks)
    _check_datasets(tasks, opts.e)
    if suite_cfg.limit is not None and suite_cfg.limit <= 0:
        raise LongBenchError(f"suite.limit={suite_cfg.limit} must be a positive number of examples (or null for all)")
    cap = getattr(suite_cfg, "max_gen_toks", None)
    if cap is not None and cap <= 0:
        raise LongBenchError(f"suite.max_gen_toks={cap} must be a positive number of tokens (or null for the official ones)")
    if model_cfg is not None and opts.max_length is None and model_cfg.max_length < 2:
        raise LongBenchError(f"model.max_length={model_cfg.max_length} is too small for LongBench")
    if opts.data_dir is None:
        if _offline():
            raise LongBenchError(
                "LongBench needs suite.options.data_dir when offline: a directory of the published "
                f"<dataset>.jsonl files (unzip data.zip of the hub dataset {HUB_REPO}), "
                "e.g. suite.options.data_dir=/data/longbench")
        try:
            root = _hub_data_dir()
        except Exception as error:  # no network, no access, broken archive: say what to do instead
            raise LongBenchError(
                f"could not fetch LongBench from the hub ({type(error).__name__}); give "
                f"suite.options.data_dir=<directory of the <dataset>.jsonl files of {HUB_REPO}>") from error
    else:
        root = Path(opts.data_dir).expanduser()
    if not root.is_dir():
        raise LongBenchError(f"suite.options.data_dir={opts.data_dir!r} is not a directory "
                             f"(expected the <dataset>.jsonl files of {HUB_REPO})")
    files = {}
    for t in tasks:
        path = data_file(root, t, opts.e)
        if not path.is_file():
            raise LongBenchError(f"LongBench file for dataset {t!r} not found: {path}")
        load_records(path, t, opts.e)
        files[t] = path
    return files


def _hub_data_dir() -> Path:
    """Download and unzip the published data (only when no data_dir is given and the hub is reachable)."""
    import zipfile

    from huggingface_hub import hf_hub_download

    archive = Path(hf_hub_download(HUB_REPO, "data.zip", repo_type="dataset"))
    cache = Path(os.environ.get("KVBENCH_CACHE_DIR", Path.home() / ".cache" / "kvbench"))
    target = cache / "longbench"
    if not (target / "data").is_dir():
        with zipfile.ZipFile(archive) as z:
            z.extractall(target)
    return target


# -- prompt construction -----------------------------------------------------------------------
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


def resolve_chat(tokenizer, model_cfg, forced: bool | None) -> bool:
    """Whether prompts get the chat template: ``forced`` if set, else ``model.chat`` when the tokenizer has one."""
    if forced is True and not has_chat_template(tokenizer):
        raise LongBenchError("suite.options.chat_template=true but the tokenizer has no chat template")
    if forced is not None:
        return forced
    if getattr(model_cfg, "chat", False) and not has_chat_template(tokenizer):
        log.warning("model.chat=true but the tokenizer has no chat template: prompts are used without one")
        return False
    return bool(getattr(model_cfg, "chat", False))


def _eos_ids(tokenizer, model) -> list[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None)
    if eos is not None:
        ids.update(int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]))
    return sorted(ids)


def _jsonl(rows: Sequence[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def predict_dataset(protocol, tokenizer, dataset: str, records: Sequence[dict], max_length: int, chat: bool,
                    max_new_tokens: int | None = None) -> list[dict]:
    """Generate a prediction per record through the compression protocol; rows in the official pred format.

    ``max_new_tokens`` caps the official per-dataset number (smoke runs); None keeps it.
    """
    max_new = DATASET2MAXLEN[dataset] if max_new_tokens is None else min(max_new_tokens, DATASET2MAXLEN[dataset])
    eos = _eos_ids(tokenizer, protocol.model)
    if dataset == "samsum":  # official: also stop at the newline token
        eos = sorted(set(eos) | {tokenizer.encode("\n", add_special_tokens=False)[-1]})
    rows = []
    for i, record in enumerate(records):
        prompt = build_prompt(record, dataset, tokenizer, max_length, chat)
        generated = protocol.generate(prompt.context_ids, max_new, eos_token_ids=eos, query=prompt.query_ids)
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
        })
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


def run_suite(protocol, tokenizer, model_cfg, suite_cfg, output_dir) -> dict[str, dict[str, float]]:
    """Run every dataset of the suite; returns ``{dataset: {metric: score x100}}`` (+ ``average``).

    Writes ``<output_dir>/<suite name>/<dataset>.jsonl`` (predictions) and ``result.json``
    (scores) atomically, the latter only once every dataset is done.
    """
    files = validate_suite(suite_cfg, model_cfg)
    opts = _options(suite_cfg)
    max_length = opts.max_length or model_cfg.max_length
    chat = resolve_chat(tokenizer, model_cfg, opts.chat_template)
    out_dir = Path(output_dir) / suite_cfg.name
    metrics: dict[str, dict[str, float]] = {}
    for dataset, path in files.items():
        records = load_records(path, dataset, opts.e)
        if suite_cfg.limit is not None:
            records = records[: suite_cfg.limit]
        log.info("LongBench %s: %d examples", dataset, len(records))
        rows = predict_dataset(protocol, tokenizer, dataset, records, max_length, chat,
                               getattr(suite_cfg, "max_gen_toks", None))
        atomic_write_text(out_dir / f"{dataset}.jsonl", _jsonl(rows))
        metrics[dataset] = score_rows(dataset, rows, opts.e)
    if len(metrics) > 1:
        metrics["average"] = {"score": round(statistics.fmean(next(iter(m.values())) for m in metrics.values()), 2)}
    atomic_write_text(out_dir / "result.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return metrics


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
    "LongBenchError", "LongBenchOptions", "validate_suite", "run_suite", "build_prompt", "truncate_middle",
    "load_records", "data_file", "predict_dataset", "score_rows", "rescore", "score", "score_e", "sample_score",
    "qa_f1_score", "qa_f1_zh_score", "rouge_score", "rouge_zh_score", "classification_score", "retrieval_score",
    "retrieval_zh_score", "count_score", "code_sim_score", "f1_score", "normalize_answer", "normalize_zh_answer",
]
