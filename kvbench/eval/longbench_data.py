"""LongBench v1 data: the official prompts and generation lengths, and the published JSONL records.

Facts from the official repository (THUDM/LongBench: ``config/dataset2prompt.json``,
``config/dataset2maxlen.json``, ``pred.py``), recorded here as data (EVALUATION.md). The records are
the content of ``data.zip`` of the hub dataset ``THUDM/LongBench``: ``<dataset>.jsonl`` (and
``<dataset>_e.jsonl`` for LongBench-E), read from a local directory or fetched from the hub.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from kvbench.config import cache_root
from kvbench.errors import OfflineUnavailable, SuiteConfigError

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


class LongBenchError(SuiteConfigError):
    """A LongBench suite cannot run; the message names the setting, file or line at fault."""


class LongBenchOfflineError(LongBenchError, OfflineUnavailable):
    """Offline without ``suite.options.data_dir``: the data would come from the hub."""


def offline() -> bool:
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


def check_datasets(tasks: Sequence[str], e: bool) -> None:
    """Every task must be a LongBench (or LongBench-E) dataset."""
    if not tasks:
        raise LongBenchError(f"suite.tasks is empty: list LongBench datasets (choose from: {', '.join(DATASETS)})")
    valid = E_DATASETS if e else DATASETS
    unknown = [t for t in tasks if t not in valid]
    if unknown:
        kind = "LongBench-E" if e else "LongBench"
        raise LongBenchError(f"unknown {kind} dataset(s) {', '.join(map(repr, unknown))} "
                             f"(choose from: {', '.join(valid)})")


def data_root(data_dir: str | None) -> Path:
    """The directory of the ``<dataset>.jsonl`` files: ``data_dir``, else the hub's (refused offline, in one line)."""
    if data_dir is not None:
        root = Path(data_dir).expanduser()
    elif offline():
        raise LongBenchOfflineError(
            "LongBench needs suite.options.data_dir when offline: a directory of the published "
            f"<dataset>.jsonl files (unzip data.zip of the hub dataset {HUB_REPO}), "
            "e.g. suite.options.data_dir=/data/longbench")
    else:
        try:
            root = hub_data_dir()
        except Exception as error:  # no network, no access, broken archive: say what to do instead
            raise LongBenchError(
                f"could not fetch LongBench from the hub ({type(error).__name__}); give "
                f"suite.options.data_dir=<directory of the <dataset>.jsonl files of {HUB_REPO}>") from error
    if not root.is_dir():
        raise LongBenchError(f"suite.options.data_dir={data_dir!r} is not a directory "
                             f"(expected the <dataset>.jsonl files of {HUB_REPO})")
    return root


def hub_data_dir() -> Path:
    """Download and unzip the published data (only when no data_dir is given and the hub is reachable)."""
    import zipfile

    from huggingface_hub import hf_hub_download

    archive = Path(hf_hub_download(HUB_REPO, "data.zip", repo_type="dataset"))
    target = cache_root() / "longbench"
    if not (target / "data").is_dir():
        with zipfile.ZipFile(archive) as z:
            z.extractall(target)
    return target
