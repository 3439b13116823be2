"""RULER-style samples: seeded, sized to a token length, with context and question kept apart.

The tasks (:mod:`kvbench.eval.ruler_tasks`, RULER, Hsieh et al. 2024):

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
* ``passkey`` -- the classic pass-key retrieval (single number in noise); also usable by
  other code through :func:`passkey_sample`.

Every sample keeps **context and question apart**: the context (instructions + haystack)
is what the method compresses; the question and the answer prefix are fed afterwards as
the protocol's query. The haystack is sized with the model's tokenizer so that prompt +
``max_new_tokens`` fits the requested length (RULER's rule). Samples are seeded by
``(seed, task, length, index)``; single-needle depths are spread evenly over the samples.
Scores: ``string_match_all`` (mean over references of case-insensitive substring hits)
and, for multi-reference tasks, ``string_match_part`` (any reference), both x100.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from kvbench.errors import SuiteConfigError
from kvbench.eval.prompts import chat_wrap, encode_split
from kvbench.eval.ruler_tasks import TASK_NAMES, TASKS, Task, passkey_draw


class SyntheticError(SuiteConfigError):
    """A synthetic suite cannot run; the message names the setting and the valid choices."""


@dataclass
class SyntheticSample:
    """One prompt: ``context`` is compressed; ``question`` + ``answer_prefix`` are the query."""

    task: str
    length: int
    index: int
    context: str
    question: str
    answer_prefix: str
    answers: list[str]
    max_new_tokens: int
    context_ids: list[int] = field(default_factory=list)
    query_ids: list[int] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return len(self.context_ids) + len(self.query_ids)


def render(context: str, question: str, answer_prefix: str, tokenizer, chat: bool) -> tuple[list[int], list[int]]:
    """Token ids of context and query; the prompt is tokenised whole and split where the context ends."""
    if chat:
        text = chat_wrap(tokenizer, context + question) + answer_prefix.lstrip()
        boundary = text.rfind(question)
        return encode_split(tokenizer, text, boundary, add_special_tokens=False)
    text = context + question + answer_prefix
    return encode_split(tokenizer, text, len(context), add_special_tokens=True)


def _sample_rng(seed: int, task: str, length: int, index: int) -> random.Random:
    return random.Random(f"kvbench-synthetic:{seed}:{task}:{length}:{index}")


def _fit(task: Task, draw: Callable, rng_state, tokenizer, length: int, index: int, n_samples: int, chat: bool):
    """Largest haystack size whose prompt + max_new_tokens fits ``length``; returns the sample parts and ids."""
    budget = length - task.max_new_tokens

    def build(n):
        rng = random.Random()
        rng.setstate(rng_state)  # the same draws (keys, values, depth) for every size tried
        parts = draw(rng, n, index, n_samples, length)
        ctx_ids, q_ids = render(*parts[:3], tokenizer, chat)
        return parts, ctx_ids, q_ids

    best = build(0)
    if len(best[1]) + len(best[2]) > budget:
        raise SyntheticError(f"{task.name}: length {length} is too short for the task's prompt "
                             f"({len(best[1]) + len(best[2])} tokens + {task.max_new_tokens} to generate)")
    lo, hi = 0, 1
    while True:  # exponential search for an upper bound
        cand = build(hi)
        if len(cand[1]) + len(cand[2]) > budget:
            break
        best, lo, hi = cand, hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        cand = build(mid)
        if len(cand[1]) + len(cand[2]) <= budget:
            best, lo = cand, mid
        else:
            hi = mid
    return best


def generate(task: str, tokenizer, length: int, n_samples: int, seed: int = 0, chat: bool = False) -> list[SyntheticSample]:
    """``n_samples`` seeded samples of ``task`` whose prompt + answer budget is at most ``length`` tokens."""
    if task not in TASKS:
        raise SyntheticError(f"unknown synthetic task {task!r} (choose from: {', '.join(TASK_NAMES)})")
    spec = TASKS[task]
    samples = []
    for index in range(n_samples):
        state = _sample_rng(seed, task, length, index).getstate()
        (context, question, prefix, answers), ctx_ids, q_ids = _fit(
            spec, spec.draw, state, tokenizer, length, index, n_samples, chat)
        samples.append(SyntheticSample(task, length, index, context, question, prefix, list(answers),
                                       spec.max_new_tokens, ctx_ids, q_ids))
    return samples


def passkey_sample(tokenizer, length: int, seed: int = 0, depth: float = 0.5, chat: bool = False) -> SyntheticSample:
    """One pass-key retrieval prompt (5-digit key in noise at ``depth``) fitting ``length`` tokens."""
    if not 0.0 <= depth <= 1.0:
        raise SyntheticError(f"depth={depth} must lie in [0, 1]")
    spec = Task("passkey", passkey_draw(depth), TASKS["passkey"].max_new_tokens)
    state = _sample_rng(seed, "passkey", length, 0).getstate()
    (context, question, prefix, answers), ctx_ids, q_ids = _fit(spec, spec.draw, state, tokenizer, length, 0, 1, chat)
    return SyntheticSample("passkey", length, 0, context, question, prefix, list(answers), spec.max_new_tokens,
                           ctx_ids, q_ids)
