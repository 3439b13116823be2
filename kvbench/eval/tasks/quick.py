"""Data and scoring for the offline quick suite (``suite=quick``), generated deterministically.

lm-eval calls the ``*_dataset`` functions (``custom_dataset:`` in the task YAMLs); each
writes its examples as JSONL into kvbench's cache dir (``$KVBENCH_CACHE_DIR/tasks``,
default ``~/.cache/kvbench/tasks``) so the exact data of a run can be inspected, and
returns them as a ``datasets.Dataset``. Same seed → same file, byte for byte.

* ``kvbench_passkey`` (generate_until): a 5-digit passkey hidden at a random depth in
  repeated filler text of about 256/512/1024 tokens; the answer must contain the key.
* ``kvbench_recall_mc`` (multiple choice, log-likelihood): a short list of who lives
  where, then "Where does X live?" with four cities from the list. All four choices
  share one context, so the protocol prefills it once.
* ``kvbench_prose_ppl`` (log-likelihood rolling): perplexity on held-out passages of
  Python's documentation prose (the split SVD-GQA calibration never sees).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NOISE_TOKENS = 22  # SmolLM2 tokens per NOISE sentence group (measured), for approximate lengths
PASSKEY_LENGTHS = (256, 512, 1024)
NAMES = ["Alice", "Bruno", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana", "Ivan", "Julia",
         "Kofi", "Lena", "Mateo", "Nadia", "Omar", "Priya"]
CITIES = ["Paris", "Tokyo", "Lima", "Cairo", "Oslo", "Delhi", "Quito", "Seoul", "Dakar", "Perth",
          "Rome", "Hanoi", "Accra", "Dublin", "Lagos", "Riga"]


def cache_dir() -> Path:
    from kvbench.config import cache_root

    path = cache_root() / "tasks"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _materialise(name: str, records: list[dict]):
    """Write ``records`` to ``<cache>/<name>.jsonl`` (atomically) and return them as a test split."""
    import datasets

    from kvbench.atomic import atomic_write_text

    atomic_write_text(cache_dir() / f"{name}.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return {"test": datasets.Dataset.from_list(records)}


# -- passkey ---------------------------------------------------------------------------------
def passkey_records(n_per_length: int = 10, lengths=PASSKEY_LENGTHS, seed: int = 0) -> list[dict]:
    """Examples interleaved across lengths, so ``limit=k`` samples every length evenly."""
    rng = random.Random(seed)
    per_length = []
    for length in lengths:
        rows = []
        for i in range(n_per_length):
            key = rng.randint(10000, 99999)
            repeats = max(1, length // NOISE_TOKENS)
            depth = (i + 0.5) / n_per_length
            at = int(round(depth * repeats))
            filler = [NOISE] * repeats
            filler.insert(at, f"The pass key is {key}. Remember it. {key} is the pass key.")
            context = ("There is important information hidden inside a lot of irrelevant text. "
                       "Find it and memorize it.\n\n" + " ".join(filler))
            rows.append({"context": context, "question": "What is the pass key? The pass key is",
                         "answer": str(key), "length": length, "depth": round(depth, 3)})
        per_length.append(rows)
    return [row for group in zip(*per_length) for row in group]


def passkey_dataset(**metadata):
    return _materialise("kvbench_passkey", passkey_records(seed=int(metadata.get("seed", 0))))


#: Lengths at which the bundled SmolLM2-135M finds the key reliably uncompressed (EVALUATION.md), so a
#: method's losses show: the quickstart's retrieval task.
SHORT_PASSKEY_LENGTHS = (256, 384)


def passkey_short_dataset(**metadata):
    return _materialise("kvbench_passkey_short", passkey_records(n_per_length=16, lengths=SHORT_PASSKEY_LENGTHS,
                                                                 seed=int(metadata.get("seed", 0))))


def passkey_process_results(doc, results):
    found = re.findall(r"\d+", results[0])
    return {"acc": float(doc["answer"] in found)}


# -- multiple-choice recall --------------------------------------------------------------------
def recall_records(n: int = 40, facts: int = 6, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        names = rng.sample(NAMES, facts)
        cities = rng.sample(CITIES, facts)
        story = " ".join(f"{p} lives in {c}." for p, c in zip(names, cities))
        asked = rng.randrange(facts)
        distractors = rng.sample([c for i, c in enumerate(cities) if i != asked], 3)
        choices = distractors + [cities[asked]]
        rng.shuffle(choices)
        rows.append({"context": story, "question": f"Where does {names[asked]} live?",
                     "choices": choices, "label": choices.index(cities[asked])})
    return rows


def recall_dataset(**metadata):
    return _materialise("kvbench_recall_mc", recall_records(seed=int(metadata.get("seed", 0))))


# -- prose perplexity --------------------------------------------------------------------------
def prose_records(n: int = 24, chars: int = 2000) -> list[dict]:
    """Held-out documentation passages of about ``chars`` characters, cut at paragraph ends."""
    from kvbench.corpus import load_texts

    rows = []
    for doc in load_texts("pydoc", split="eval"):
        passage = ""
        for para in doc.split("\n\n"):
            if passage and len(passage) + len(para) > chars:
                break
            passage = f"{passage}\n\n{para}" if passage else para
        if len(passage) >= chars // 4:
            rows.append({"text": passage})
        if len(rows) == n:
            break
    return rows


def prose_dataset(**metadata):
    return _materialise("kvbench_prose_ppl", prose_records())


def prose_process_results(doc, results):
    (loglikelihood,) = results
    words = len(re.split(r"\s+", doc["text"].strip()))
    n_bytes = len(doc["text"].encode("utf-8"))
    return {"word_perplexity": (loglikelihood, words), "byte_perplexity": (loglikelihood, n_bytes),
            "bits_per_byte": (loglikelihood, n_bytes)}
