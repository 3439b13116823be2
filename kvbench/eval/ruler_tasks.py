"""The RULER-style tasks: how each draws one sample (RULER, Hsieh et al. 2024, reimplemented from its
description; EVALUATION.md). Samples are built and sized by :mod:`kvbench.eval.ruler`.

* ``niah_*`` -- needle in a haystack. A needle is "One of the special magic numbers for
  <key> is: <value>."; the haystack is ``noise`` (a repeated neutral paragraph) or
  ``prose`` (Python documentation, ``kvbench.corpus.load_texts("pydoc", split="eval")``).
  Variants: ``single`` (one needle), ``multikey`` (three distractor needles with other
  keys), ``multivalue`` (four values for the asked key), ``multiquery`` (four keys asked
  at once); value types numbers (7 digits), words or uuids.
* ``vt`` -- variable tracking: ``VAR A = 12345``, ``VAR B = VAR A``, ... hidden in noise;
  the answer is every variable of the chain.
* ``cwe`` -- common-words extraction from a numbered word list; ``fwe`` -- the three most
  frequent coded words of a Zipf-distributed text.
* ``passkey`` -- the classic pass-key retrieval (single number in noise).
"""

from __future__ import annotations

import random
import string
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvbench.eval.haystack import WORDS, haystack, insert, spread, vocabulary


@dataclass(frozen=True)
class Task:
    """How to draw one sample: ``draw(rng, n, index, n_samples, length)`` returns (context, question, prefix, answers)
    for a haystack of ``n`` units; ``n`` is then searched so that the prompt fits the length."""

    name: str
    draw: Callable
    max_new_tokens: int
    multi_reference: bool = False
    description: str = ""


def _value(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "words":
        return rng.choice(WORDS)
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _niah(kind: str, variant: str, value_type: str = "numbers", n_needles: int = 4):
    def draw(rng: random.Random, n: int, index: int, n_samples: int, length: int):
        keys = [f"{a}-{b}" for a, b in (rng.sample(WORDS, 2) for _ in range(n_needles))]
        if len(set(keys)) < len(keys):
            keys = [f"{k}-{i}" for i, k in enumerate(keys)]
        start = rng.randrange(1 << 30)
        if variant == "single":
            pairs, asked = [(keys[0], _value(rng, value_type))], [keys[0]]
        elif variant == "multikey":  # one asked key + distractor keys
            pairs, asked = [(k, _value(rng, value_type)) for k in keys], [keys[0]]
        elif variant == "multivalue":  # several values for one key
            pairs, asked = [(keys[0], _value(rng, value_type)) for _ in range(n_needles)], [keys[0]]
        else:  # multiquery: several keys asked at once
            pairs, asked = [(k, _value(rng, value_type)) for k in keys], list(keys)
        needles = [f"One of the special magic {value_type} for {k} is: {v}." for k, v in pairs]
        if variant == "single":
            depths = [spread(index, n_samples)]
        else:
            slots = [(j + 1) / (len(needles) + 1) for j in range(len(needles))]
            rng.shuffle(slots)
            depths = slots
        asked_text = asked[0] if len(asked) == 1 else ", ".join(asked[:-1]) + ", and " + asked[-1]
        answers = [v for k, v in pairs if k in asked]
        context = (f"Some special magic {value_type} are hidden within the following text. Make sure to memorize it. "
                   f"I will quiz you about the {value_type} afterwards.\n"
                   + insert(haystack(kind, n, start), needles, depths) + "\n")
        question = f"What are all the special magic {value_type} for {asked_text} mentioned in the provided text?"
        prefix = f" The special magic {value_type} for {asked_text} mentioned in the provided text are"
        return context, question, prefix, answers

    return draw


# -- variable tracking ---------------------------------------------------------------------------
def _vt(num_hops: int = 4):
    def draw(rng: random.Random, n: int, index: int, n_samples: int, length: int):
        names: list[str] = []
        while len(names) < num_hops + 1:
            name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
            if name not in names:
                names.append(name)
        value = str(rng.randint(10_000, 99_999))
        statements = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, len(names))]
        depths = [(j + 1) / (len(statements) + 1) for j in range(len(statements))]  # in chain order
        context = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
                   + insert(haystack("noise", n, 0), statements, depths) + "\n")
        question = f"Question: Find all variables that are assigned the value {value} in the text above."
        prefix = (f" Answer: According to the chain(s) of variable assignment in the text above, {len(names)} "
                  f"variables are assigned the value {value}, they are:")
        return context, question, prefix, names

    return draw


# -- common / frequent words -----------------------------------------------------------------------
def _numbered(words: Sequence[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def _cwe():
    header = ("Below is a numbered list of words. In these words, some appear more often than others. "
              "Memorize the ones that appear most often.\n")

    def words_list(rng, num_cw, n_uncommon, freq_cw, freq_ucw):
        chosen = rng.sample(vocabulary(), num_cw + n_uncommon)
        common, uncommon = chosen[:num_cw], chosen[num_cw:]
        items = common * freq_cw + uncommon * freq_ucw
        rng.shuffle(items)
        return items, common

    def draw(rng: random.Random, n: int, index: int, n_samples: int, length: int):
        # RULER: below 4096 tokens, common words x6 and others x1 (x30 / x3 above), after one worked
        # example. kvbench also asks for 5 words instead of 10 below 1024 tokens, so the list fits.
        num_cw = 10 if length >= 1024 else 5
        (f_cw, f_ucw), (e_cw, e_ucw) = ((6, 1), (3, 1)) if length < 4096 else ((30, 3), (10, 3))
        question = f"Question: What are the {num_cw} most common words in the above list?"
        prefix = f" Answer: The top {num_cw} words that appear most often in the list are:"
        example_items, example_answer = words_list(rng, num_cw, num_cw, e_cw, e_ucw)
        example = header + _numbered(example_items) + "\n" + question + prefix + " " + _numbered(example_answer) + "\n"
        items, common = words_list(rng, num_cw, n, f_cw, f_ucw)
        context = example + header + _numbered(items) + "\n"
        return context, question, prefix, list(common)

    return draw


def _fwe(alpha: float = 2.0, vocab: int = 60, floor: int = 30):
    def draw(rng: random.Random, n: int, index: int, n_samples: int, length: int):
        coded: list[str] = []
        while len(coded) < vocab:
            word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 5)))
            if word not in coded:
                coded.append(word)
        total_words = n + floor  # at least ``floor`` words, so the top three counts differ
        weights = [1 / (r + 1) ** alpha for r in range(vocab)]
        scale = total_words / sum(weights)
        counts = [round(scale * w) for w in weights]  # Zipf counts by rank
        text = [w for w, c in zip(coded, counts) for _ in range(c)]
        rng.shuffle(text)
        context = ("Read the following coded text and track the frequency of each coded word. "
                   "Find the three most frequently appeared coded words.\n" + " ".join(text) + "\n")
        question = ("Question: Do not provide any explanation. "
                    "What are the three most frequently appeared words in the above coded text?")
        prefix = " Answer: According to the coded text above, the three most frequently appeared words are:"
        return context, question, prefix, coded[:3]

    return draw


# -- passkey --------------------------------------------------------------------------------------
def passkey_draw(depth: float | None = None):
    def draw(rng: random.Random, n: int, index: int, n_samples: int, length: int):
        key = str(rng.randint(10_000, 99_999))
        needle = f"The pass key is {key}. Remember it. {key} is the pass key."
        d = spread(index, n_samples) if depth is None else depth
        context = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
                   "I will quiz you about the important information there.\n"
                   + insert(haystack("noise", n, 0), [needle], [d]) + "\n")
        return context, "What is the pass key?", " The pass key is", [key]

    return draw


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("niah_single", _niah("noise", "single"), 32, description="one 7-digit number in noise"),
        Task("niah_single_prose", _niah("prose", "single"), 32, description="one 7-digit number in prose"),
        Task("niah_single_uuid", _niah("prose", "single", "uuids"), 64, description="one uuid in prose"),
        Task("niah_single_words", _niah("noise", "single", "words"), 32, description="one word value in noise"),
        Task("niah_multikey", _niah("noise", "multikey"), 32, description="asked key among 3 distractor needles, noise"),
        Task("niah_multikey_prose", _niah("prose", "multikey"), 32, description="asked key among 3 distractors, prose"),
        Task("niah_multivalue", _niah("noise", "multivalue"), 64, True, "4 values for one key, noise"),
        Task("niah_multiquery", _niah("noise", "multiquery"), 64, True, "4 keys asked at once, noise"),
        Task("vt", _vt(), 48, True, "variable tracking: 1 chain of 4 hops in noise"),
        Task("cwe", _cwe(), 64, True, "most common words (10; 5 below 1024 tokens) of a numbered list, 1-shot"),
        Task("fwe", _fwe(), 32, True, "3 most frequent coded words (Zipf)"),
        Task("passkey", passkey_draw(), 16, description="pass key (5 digits) in noise"),
    )
}
TASK_NAMES = tuple(TASKS)
