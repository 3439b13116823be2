"""One context, many questions (SCBench, Li et al. 2024, arXiv:2412.10319; METHODS_NEXT.md §7).

A document is compressed once and then asked several questions. Query-aware methods (SnapKV's observation window
over the question) look good when the question is compressed with the context, which a reused cache cannot do.
This module runs SCBench's two modes on the compression protocol, and the baseline they are measured against:

* :func:`multi_request` -- the context alone is prefilled and compressed once; each question is prefilled and
  decoded on top **of a copy** of that cache, so the shared cache is never modified by a question (every question
  sees the same compressed context, in any order: tested) -- fully query-agnostic;
* :func:`multi_turn` -- questions in sequence on one cache: each turn decodes on a copy (its generated tokens are
  dropped, as SCBench does), then the question and its *golden* answer are appended to the conversation, under the
  method's rules (its decode budget, if any, applies to those forwards). Unlike SCBench's turn 1, the first question
  is not compressed with the context: every turn is query-agnostic;
* :func:`own_compression` -- each question asked alone, compressed *with* its context (``query_aware``), the
  setting query-aware methods assume: the difference to multi-request is the cost of reuse.

Data (:func:`draw`): a haystack of kvbench's noise paragraphs with one needle per question, offline, seeded and
tokenizer-agnostic; the answer is checked by containment. Two needle styles:

* ``passkey`` (default) -- "The pass key for <Name> is <5-digit number>. Remember it. <number> is the pass key for
  <Name>.", asked "What is the pass key for <Name>?" (the passkey retrieval task of Mohtashami & Jaggi 2023, one
  needle per question). The bundled SmolLM2-135M answers it with ``full`` on ~300-600-token haystacks, which is
  what makes the cost of reuse measurable there;
* ``magic_number`` -- RULER's "One of the special magic numbers for <key> is: <7-digit number>." (the first
  version of this suite; SmolLM2-135M scored 0/16 on it even with its question in the compressed prompt).

With ``chat`` the context opens a user turn of the tokenizer's chat template and each question closes it, followed
by the assistant's answer prefix; the context's ids are the same for every question, so it can be compressed once.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass

from kvbench.eval.haystack import WORDS, haystack, insert
from kvbench.eval.longbench_metrics import sample_score
from kvbench.eval.prompts import chat_wrap


@dataclass
class SharedSample:
    """A context and its questions, with the token ids the protocol needs. ``answers`` holds one answer per
    question (the golden turn of multi-turn); a LongBench sample also every gold answer and its dataset, whose
    metric scores it (:mod:`kvbench.eval.longbench_shared`)."""

    context: str
    questions: list[str]
    answers: list[str]
    context_ids: list[int]
    question_ids: list[list[int]]
    golds: list[list[str]] | None = None
    dataset: str | None = None
    all_classes: list[str] | None = None

    def score(self, question: int, output: str) -> float:
        """The answer to ``question``'s score in [0, 1]: containment of the needle's value, or LongBench's metric."""
        if self.dataset is None:
            return float(self.answers[question] in output)
        return sample_score(self.dataset, output, self.golds[question], self.all_classes)


NEEDLES = ("passkey", "magic_number")
NAMES = tuple(sorted({w.capitalize() for w in WORDS}))
PASSKEY_INTRO = ("There is important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz "
                 "you about the important information there.\n")
MAGIC_INTRO = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. I will "
               "quiz you about the numbers afterwards.\n")


def draw(rng: random.Random, tokenizer, units: int, questions: int, needle: str = "passkey",
         chat: bool = False) -> SharedSample:
    """A haystack of ``units`` noise paragraphs holding ``questions`` needles at evenly spaced (shuffled) depths,
    and one question per needle, closed by the answer's prefix."""
    if needle == "passkey":
        names = [f"{NAMES[i % len(NAMES)]}{'' if i < len(NAMES) else i}" for i in rng.sample(range(
            max(questions, len(NAMES))), questions)]
        values = [str(rng.randint(10_000, 99_999)) for _ in names]
        needles = [f"The pass key for {n} is {v}. Remember it. {v} is the pass key for {n}."
                   for n, v in zip(names, values)]
        intro, asked = PASSKEY_INTRO, [(f"\nWhat is the pass key for {n}?", f"The pass key for {n} is") for n in names]
    else:
        keys = [f"{a}-{b}-{i}" for i, (a, b) in enumerate(rng.sample(WORDS, 2) for _ in range(questions))]
        values = [str(rng.randint(1_000_000, 9_999_999)) for _ in keys]
        needles = [f"One of the special magic numbers for {k} is: {v}." for k, v in zip(keys, values)]
        intro, asked = MAGIC_INTRO, [(f"\nQuestion: What is the special magic number for {k}?",
                                      f"\nAnswer: The special magic number for {k} is") for k in keys]
    depths = [(j + 1) / (questions + 1) for j in range(questions)]
    rng.shuffle(depths)
    head, tail = chat_turn(tokenizer) if chat else ("", "")
    context = head + intro + insert(haystack("noise", units, 0), needles, depths) + "\n"
    texts = [f"{q}{tail}{a}" for q, a in asked]
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return SharedSample(context, texts, values, ids(context), [ids(q) for q in texts])


def chat_turn(tokenizer) -> tuple[str, str]:
    """``(before, after)`` the user's text in the tokenizer's chat template, the generation prompt included."""
    marker = "\x00USER\x00"
    whole = chat_wrap(tokenizer, marker)
    before, after = whole.split(marker)
    return before, after


def multi_request(protocol, sample: SharedSample, max_new_tokens: int, eos=()) -> tuple[list[list[int]], float]:
    """``(outputs, seconds to compress once)``: every question decoded on a copy of one compressed context."""
    start = time.perf_counter()
    shared = protocol.prefill(sample.context_ids)
    seconds = time.perf_counter() - start
    outputs = [protocol.decode(copy.deepcopy(shared), question, max_new_tokens, eos_token_ids=eos)
               for question in sample.question_ids]
    return outputs, seconds


def multi_turn(protocol, sample: SharedSample, answer_ids: list[list[int]], max_new_tokens: int,
               eos=()) -> list[list[int]]:
    """Outputs per turn: each turn decoded on a copy of the conversation so far, then its question and golden
    answer appended to the conversation's cache."""
    cache = protocol.prefill(sample.context_ids)
    outputs = []
    for question, answer in zip(sample.question_ids, answer_ids):
        outputs.append(protocol.decode(copy.deepcopy(cache), question, max_new_tokens, eos_token_ids=eos))
        protocol.forward(cache, [*question, *answer], last_logits_only=True)
        protocol.method.compress(cache)
    return outputs


def own_compression(protocol, sample: SharedSample, max_new_tokens: int, eos=()) -> tuple[list[list[int]], float]:
    """``(outputs, seconds spent compressing)``: each question compressed with its own context (query-aware)."""
    outputs, seconds = [], 0.0
    for question in sample.question_ids:
        before = protocol.stats.prefill_s
        outputs.append(protocol.generate(sample.context_ids, max_new_tokens, eos_token_ids=eos, query=question,
                                         query_aware=True))
        seconds += protocol.stats.prefill_s - before
    return outputs, seconds
