"""``suite.runner=shared_context``: one context, many questions, SCBench's two modes (issue 25;
:mod:`kvbench.eval.shared_context` says what each mode does).

Tasks ``multi_request`` and ``multi_turn``. Each sample is a haystack of ``units`` noise paragraphs with ``questions``
needles (``needle``: ``passkey``, the default, or RULER's ``magic_number``) and one question per needle, answered
greedily (``max_new_tokens``) and scored by containment of the needle's value; ``chat_template`` (null: the model's
``chat``) puts the context and each question in one user turn. With ``source=longbench`` a sample is instead a
LongBench document with the questions its records ask of it (``data_dir``, ``dataset``; scored by the dataset's
metric: :mod:`kvbench.eval.longbench_shared`). Per task: ``score`` (primary: the mean over every question of every
sample, query-agnostic: the questions were never visible at compression time), per question position ``score_q1``
... (multi-request: the order asked; multi-turn: the turn; over the samples that have that many questions),
``score_own`` -- the same questions asked one at a time, each compressed *with*
its context (query-aware) -- and ``reuse_cost`` = ``score_own − score``, the cost of reuse as one number. Timing
(multi-request): ``compress_once_s`` (compressing the context once, per sample) and ``compress_each_s``
(compressing it once per question, summed), and their amortised per-question values. Query-agnostic by
construction: ``suite.query_aware=true`` is refused in one line; ``questions`` must be >= 1. Writes
``<run dir>/<suite name>/answers.jsonl``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kvbench.atomic import atomic_write_text
from kvbench.config import SuiteConfig
from kvbench.errors import SuiteConfigError
from kvbench.eval.intervals import mean
from kvbench.eval.prompts import eos_ids, resolve_chat
from kvbench.eval.longbench_data import LongBenchError, check_datasets, data_file, data_root, load_records
from kvbench.eval.longbench_shared import shared_groups, shared_samples
from kvbench.eval.shared_context import NEEDLES, draw, multi_request, multi_turn, own_compression
from kvbench.suites.base import QUESTION_HIDDEN, RunContext, Suite, TaskResult, register

TASKS = ("multi_request", "multi_turn")
SOURCES = ("haystack", "longbench")


@dataclass
class SharedContextOptions:
    samples: int = 8
    units: int = 12
    questions: int = 4
    max_new_tokens: int = 8
    seed: int = 0
    needle: str = "passkey"
    chat_template: bool | None = None
    #: ``haystack`` (the generator above) or ``longbench``: records of ``dataset`` that share a document, from
    #: ``data_dir`` (:mod:`kvbench.eval.longbench_shared`), the document middle-truncated to ``max_context_tokens``
    #: (null: the model's ``max_length`` less 256 for the question and answer).
    source: str = "haystack"
    data_dir: str | None = None
    dataset: str = "qasper"
    max_context_tokens: int | None = None


@dataclass
class SharedContextConfig(SuiteConfig):
    runner: str = "shared_context"
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    options: SharedContextOptions = field(default_factory=SharedContextOptions)


@register
class SharedContext(Suite):
    runner = "shared_context"
    Config = SharedContextConfig
    Options = SharedContextOptions
    query_agnostic_by_design = ("compresses the context before any question is seen (SCBench's shared context); "
                                "its score_own column is the query-aware comparison")

    def question_visible(self) -> dict[str, str]:
        """``no`` for the primary ``score`` (its ``score_own`` column is the query-aware one)."""
        return {task: QUESTION_HIDDEN for task in self.tasks}

    def validate(self, model_cfg=None) -> list[list[dict]] | None:
        """Checks every option; with ``source=longbench`` reads the records and returns their shared groups."""
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise SuiteConfigError(f"unknown shared_context task(s) {', '.join(unknown)} (choose from: {', '.join(TASKS)})")
        if self.options.needle not in NEEDLES:
            raise SuiteConfigError(f"suite.options.needle={self.options.needle!r} is not a needle style "
                                   f"(choose from: {', '.join(NEEDLES)})")
        for name in ("samples", "units", "questions", "max_new_tokens", "max_context_tokens"):
            value = getattr(self.options, name)
            if value is None and name == "max_context_tokens":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SuiteConfigError(f"suite.options.{name}={value!r} must be an integer >= 1"
                                       + (" (questions asked of each shared context)" if name == "questions" else ""))
        if self.options.source not in SOURCES:
            raise SuiteConfigError(f"suite.options.source={self.options.source!r} is not a source of shared contexts "
                                   f"(choose from: {', '.join(SOURCES)})")
        if self.options.source == "longbench":
            check_datasets([self.options.dataset], e=False)
            path = data_file(data_root(self.options.data_dir), self.options.dataset)
            if not path.is_file():
                raise LongBenchError(f"LongBench file for dataset {self.options.dataset!r} not found: {path}")
            return shared_groups(load_records(path, self.options.dataset), self.options.dataset)
        return None

    def run(self, plan, context: RunContext) -> Iterator[TaskResult]:
        opts, protocol, tokenizer = self.options, context.protocol, context.tokenizer
        n = opts.samples if self.cfg.limit is None else min(self.cfg.limit, opts.samples)
        rng = random.Random(opts.seed)
        chat = resolve_chat(tokenizer, context.model_cfg, opts.chat_template)
        if plan is not None:  # LongBench groups
            budget = opts.max_context_tokens or max(1, context.model_cfg.max_length - 256)
            samples = shared_samples(plan[:n], opts.dataset, tokenizer, opts.questions, chat, budget)
        else:
            samples = [draw(rng, tokenizer, opts.units, opts.questions, opts.needle, chat) for _ in range(n)]
        eos = eos_ids(tokenizer, protocol.model)
        scored = lambda sample, outs: [sample.score(q, tokenizer.decode(o, skip_special_tokens=True))  # noqa: E731
                                       for q, o in enumerate(outs)]
        own, own_s = [], []
        for sample in samples:
            outputs, seconds = own_compression(protocol, sample, opts.max_new_tokens, eos)
            own.append(scored(sample, outputs))
            own_s.append(seconds)
        lines = []
        for task in self.tasks:
            rows, once_s = [], []
            for i, sample in enumerate(samples):
                if task == "multi_request":
                    outputs, seconds = multi_request(protocol, sample, opts.max_new_tokens, eos)
                    once_s.append(seconds)
                else:
                    answers = [tokenizer(f" {a}.", add_special_tokens=False)["input_ids"] for a in sample.answers]
                    outputs = multi_turn(protocol, sample, answers, opts.max_new_tokens, eos)
                rows.append(scored(sample, outputs))
                lines += [json.dumps({"task": task, "sample": i, "question": q, "answer": sample.answers[q],
                                      "output": tokenizer.decode(o, skip_special_tokens=True), "score": rows[-1][q],
                                      "score_own": own[i][q]}) + "\n" for q, o in enumerate(outputs)]
            yield task_result(task, rows, own, once_s, own_s)
        atomic_write_text(Path(context.output_dir) / self.cfg.name / "answers.jsonl", "".join(lines))


def task_result(task: str, rows: list[list[float]], own: list[list[float]], once_s: list[float],
                own_s: list[float]) -> TaskResult:
    """Scores per question position, the query-aware own-compression score and the reuse cost; timing."""
    k, asked = max(len(row) for row in rows), sum(len(row) for row in rows)
    score, score_own = mean([s for row in rows for s in row]), mean([s for row in own for s in row])
    metrics = {"score": score, "score_own": score_own, "reuse_cost": score_own - score}
    metrics.update({f"score_q{q + 1}": mean([row[q] for row in rows if len(row) > q]) for q in range(k)})
    if once_s:
        metrics.update(compress_once_s=mean(once_s), compress_each_s=mean(own_s),
                       amortised_once_s=sum(once_s) / asked, amortised_each_s=sum(own_s) / asked)
    return TaskResult.from_samples(task, metrics, "score", [mean(row) for row in rows], mean, ids=range(len(rows)))
