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

Data (:func:`draw`): a RULER-style haystack (kvbench's noise paragraphs) with one needle per question, "One of the
special magic numbers for <key> is: <value>.", each question asking one key; the answer is checked by string
match. Offline, any tokenizer.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass

from kvbench.eval.haystack import WORDS, haystack, insert


@dataclass
class SharedSample:
    """A context and its questions, with the token ids the protocol needs."""

    context: str
    questions: list[str]
    answers: list[str]
    context_ids: list[int]
    question_ids: list[list[int]]


def draw(rng: random.Random, tokenizer, units: int, questions: int) -> SharedSample:
    """A haystack of ``units`` noise paragraphs holding ``questions`` needles, and one question per needle."""
    keys = [f"{a}-{b}-{i}" for i, (a, b) in enumerate(rng.sample(WORDS, 2) for _ in range(questions))]
    values = [str(rng.randint(1_000_000, 9_999_999)) for _ in keys]
    needles = [f"One of the special magic numbers for {k} is: {v}." for k, v in zip(keys, values)]
    depths = [(j + 1) / (questions + 1) for j in range(questions)]
    rng.shuffle(depths)
    context = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. I will "
               "quiz you about the numbers afterwards.\n" + insert(haystack("noise", units, 0), needles, depths) + "\n")
    asked = [f"\nQuestion: What is the special magic number for {k}?\nAnswer: The special magic number for {k} is"
             for k in keys]
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return SharedSample(context, asked, values, ids(context), [ids(q) for q in asked])


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
