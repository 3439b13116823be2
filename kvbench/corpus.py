"""Local text corpora: calibration data for SVD-GQA and prose for perplexity, with no download.

The offline default is Python's own documentation prose (``pydoc_data.topics``, ~465k
characters, present on every CPython install). Its topics are split deterministically:
every fifth topic (sorted by name) is held out for evaluation, the rest is for
calibration, so a method calibrated on it is never scored on the same text.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from kvbench.errors import CorpusError

PYDOC = "pydoc"
SPLITS = ("calibration", "eval", "all")


def pydoc_documents(split: str = "all") -> list[str]:
    """Python's documentation topics as a list of documents (one per topic), split as above."""
    import pydoc_data.topics

    if split not in SPLITS:
        raise CorpusError(f"corpus split {split!r} is not valid (choose one of: {', '.join(SPLITS)})")
    names = sorted(pydoc_data.topics.topics)
    docs = []
    for i, name in enumerate(names):
        held_out = i % 5 == 4
        if split == "all" or (split == "eval") == held_out:
            docs.append(pydoc_data.topics.topics[name].strip())
    return docs


def check_source(source: str) -> None:
    """Fail early (before any model work) if ``source`` is a path that does not exist, or a hub dataset
    while the hub is switched off."""
    if source == PYDOC:
        return
    if not _looks_like_path(source):
        offline = [k for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE") if os.environ.get(k, "").lower() in ("1", "true", "yes")]
        if offline:
            raise CorpusError(f"corpus {source!r} is a hub dataset, but {offline[0]}=1 (give '{PYDOC}' for the local "
                              "Python-docs prose or a local .txt/.jsonl path)")
        return
    if not Path(source).expanduser().exists():
        raise CorpusError(f"corpus file {source!r} does not exist (give an existing .txt/.jsonl path, "
                          f"'{PYDOC}' for the local Python-docs prose, or a hub dataset name)")


def load_texts(source: str = PYDOC, split: str = "calibration", text_field: str = "text") -> list[str]:
    """Documents from ``source``: ``pydoc``, a local ``.txt`` (blank-line separated) or ``.jsonl``
    file (one object per line with ``text_field``), or a hub dataset name (``name`` or
    ``name:config``; needs network)."""
    check_source(source)
    if source == PYDOC:
        return pydoc_documents(split)
    if _looks_like_path(source):
        path = Path(source).expanduser()
        if path.suffix == ".jsonl":
            docs = []
            for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if text_field not in record:
                    raise CorpusError(f"{path}:{lineno}: record has no {text_field!r} field")
                docs.append(record[text_field])
            return docs
        return [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    import datasets

    name, _, config = source.partition(":")
    dataset = datasets.load_dataset(name, config or None, split="train", streaming=True)
    return [row[text_field] for _, row in zip(range(2000), dataset)]


def corpus_fingerprint(source: str, split: str = "calibration") -> str:
    """A short hash identifying the corpus content (for caching calibration results on disk)."""
    h = hashlib.sha256()
    if source == PYDOC or _looks_like_path(source):
        for doc in load_texts(source, split):
            h.update(doc.encode("utf-8"))
    else:
        h.update(f"hub:{source}:{split}".encode())
    return h.hexdigest()[:16]


def _looks_like_path(source: str) -> bool:
    return (source.startswith(("/", "./", "../", "~")) or source.endswith((".txt", ".jsonl", ".json", ".md"))
            or "/" in source and Path(source).suffix != "")
