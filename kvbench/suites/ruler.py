"""``suite.runner=ruler``: RULER-style synthetic tasks at chosen lengths, scored by string match.

Samples are generated offline and seeded (:mod:`kvbench.eval.ruler`); the context is compressed and the
question fed afterwards (``suite.query_aware=true``: the question is compressed with the context). Each (task, length) is one result, ``<task>_<length>``, with RULER's
``string_match_all`` as its primary metric (and ``string_match_part`` for multi-reference tasks). Writes
``<run dir>/<suite name>/predictions.jsonl`` and ``result.json`` once every task is done;
:func:`kvbench.eval.string_match.rescore` recomputes the scores from the predictions.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kvbench.config import SuiteConfig
from kvbench.eval.prompts import eos_ids, resolve_chat
from kvbench.eval.ruler import SyntheticError, generate
from kvbench.eval.ruler_tasks import TASK_NAMES, TASKS
from kvbench.eval.fidelity import divergence_metrics
from kvbench.eval.intervals import mean
from kvbench.eval.string_match import sample_match_all, string_match_all, string_match_part
from kvbench.atomic import atomic_write_text
from kvbench.suites.base import RunContext, Suite, TaskResult, register, sample_rows
from kvbench.suites.fidelity import divergence_probe

log = logging.getLogger(__name__)
#: conf/suite/ruler.yaml; chosen from measurements in experiments/ruler/README.md.
DEFAULT_LENGTHS = (384, 768)


@dataclass
class RulerOptions:
    lengths: list[int] = field(default_factory=lambda: list(DEFAULT_LENGTHS))
    samples_per_length: int = 8
    seed: int = 0
    #: Force the chat template on/off; None: ``model.chat`` when the tokenizer has a template.
    chat_template: bool | None = None


@dataclass
class RulerConfig(SuiteConfig):
    runner: str = "ruler"
    options: RulerOptions = field(default_factory=RulerOptions)


@register
class Ruler(Suite):
    runner = "ruler"
    Config = RulerConfig
    Options = RulerOptions
    keeps_query = True
    decodes = True

    def validate(self, model_cfg=None) -> None:
        opts = self.options
        lengths = list(opts.lengths or [])
        if not lengths or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 64 for n in lengths):
            raise SyntheticError(f"suite.options.lengths={lengths!r} must be a non-empty list of token counts >= 64")
        if not isinstance(opts.samples_per_length, int) or opts.samples_per_length <= 0:
            raise SyntheticError(f"suite.options.samples_per_length={opts.samples_per_length!r} must be a positive integer")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise SyntheticError(f"unknown synthetic task(s) {', '.join(map(repr, unknown))} "
                                 f"(choose from: {', '.join(TASK_NAMES)})")
        if model_cfg is not None:
            too_long = [n for n in lengths if n > model_cfg.max_length]
            if too_long:
                raise SyntheticError(f"suite.options.lengths {too_long} exceed model.max_length={model_cfg.max_length}")

    def run(self, plan, context: RunContext) -> Iterator[TaskResult]:
        opts, tokenizer, protocol = self.options, context.tokenizer, context.protocol
        chat = resolve_chat(tokenizer, context.model_cfg, opts.chat_template)
        n = opts.samples_per_length if self.cfg.limit is None else min(self.cfg.limit, opts.samples_per_length)
        eos = eos_ids(tokenizer, protocol.model)
        # Every prompt first (cheap), so a length too short for a task fails before any decoding.
        prompts = [(task, length, generate(task, tokenizer, length, n, seed=opts.seed, chat=chat))
                   for task in self.tasks for length in opts.lengths]
        probe = divergence_probe(self, context)
        metrics: dict[str, dict[str, float]] = {}
        rows = []
        for task, length, samples in prompts:
            start = time.perf_counter()
            preds, task_rows = [], []
            for s in samples:
                out = protocol.generate(s.context_ids, s.max_new_tokens, eos_token_ids=eos, query=s.query_ids,
                                        query_aware=self.cfg.query_aware)
                preds.append(tokenizer.decode(out, skip_special_tokens=True))
                task_rows.append({"task": task, "length": length, "index": s.index, "pred": preds[-1],
                                  "answers": s.answers, "context_tokens": len(s.context_ids),
                                  "query_tokens": len(s.query_ids), "generated_tokens": len(out),
                                  "query_aware": bool(self.cfg.query_aware)})
                if probe is not None:
                    task_rows[-1].update(probe.measure(protocol, s.context_ids, s.query_ids, self.cfg.query_aware,
                                                       s.max_new_tokens, eos))
            rows += task_rows
            refs = [s.answers for s in samples]
            key = f"{task}_{length}"
            metrics[key] = {"string_match_all": string_match_all(preds, refs)}
            if TASKS[task].multi_reference:
                metrics[key]["string_match_part"] = string_match_part(preds, refs)
            metrics[key].update(divergence_metrics(task_rows))
            log.info("%s: %s (%.1fs)", key, metrics[key], time.perf_counter() - start)
            per_sample = [sample_match_all(p, r) for p, r in zip(preds, refs)]
            result = TaskResult.from_samples(key, metrics[key], "string_match_all", per_sample, mean, scale=100,
                                          ids=[s.index for s in samples])
            result.samples = sample_rows([s.index for s in samples], preds, [", ".join(r) for r in refs], per_sample)
            yield result
        out_dir = Path(context.output_dir) / self.cfg.name
        atomic_write_text(out_dir / "predictions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        atomic_write_text(out_dir / "result.json", json.dumps(metrics, indent=2) + "\n")
