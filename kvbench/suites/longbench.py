"""``suite.runner=longbench``: LongBench v1 with the official prompts, truncation and metrics.

Prompts, predictions and scoring follow the official code (:mod:`kvbench.eval.longbench`); the data are
the published ``<dataset>.jsonl`` files (:mod:`kvbench.eval.longbench_data`). Validation reads every data
file in full before the model loads, so a broken record fails in seconds rather than after hours of
decoding, and the parsed records are the plan the run reuses (each file is read once).

Writes ``<run dir>/<suite name>/<dataset>.jsonl`` (predictions, official ``pred/`` format) as each dataset
finishes, and ``result.json`` (scores) once every dataset is done.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kvbench.config import SuiteConfig
from kvbench.eval.fidelity import divergence_metrics
from kvbench.eval.intervals import mean
from kvbench.eval.longbench import jsonl, predict_dataset, sample_score, score_rows
from kvbench.eval.longbench_data import LongBenchError, check_datasets, data_file, data_root, load_records
from kvbench.eval.prompts import resolve_chat
from kvbench.atomic import atomic_write_text
from kvbench.suites.base import RunContext, Suite, TaskResult, register, sample_rows
from kvbench.suites.fidelity import divergence_probe

log = logging.getLogger(__name__)


@dataclass
class LongBenchOptions:
    """``suite.options`` of a LongBench suite."""

    #: Directory of ``<dataset>.jsonl`` files (or a ``data/`` subdirectory of them). None: the hub.
    data_dir: str | None = None
    #: LongBench-E: read ``<dataset>_e.jsonl`` and score per length bucket.
    e: bool = False
    #: Prompt budget in tokens for middle truncation (None: the model's ``max_length``).
    max_length: int | None = None
    #: Force the chat template on (True) or off (False); None: ``model.chat``.
    chat_template: bool | None = None


@dataclass
class LongBenchConfig(SuiteConfig):
    runner: str = "longbench"
    options: LongBenchOptions = field(default_factory=LongBenchOptions)


@register
class LongBench(Suite):
    runner = "longbench"
    Config = LongBenchConfig
    Options = LongBenchOptions
    keeps_query = True
    decodes = True

    def validate(self, model_cfg=None) -> dict[str, list[dict]]:
        """``{dataset: records}`` after checking names, options and every record."""
        opts = self.options
        check_datasets(self.tasks, opts.e)
        if opts.max_length is not None and (not isinstance(opts.max_length, int) or opts.max_length < 2):
            raise LongBenchError(f"suite.options.max_length={opts.max_length!r} must be an integer >= 2 (tokens)")
        if model_cfg is not None and opts.max_length is None and model_cfg.max_length < 2:
            raise LongBenchError(f"model.max_length={model_cfg.max_length} is too small for LongBench")
        root = self._data_root()
        plan = {}
        for dataset in self.tasks:
            path = data_file(root, dataset, opts.e)
            if not path.is_file():
                raise LongBenchError(f"LongBench file for dataset {dataset!r} not found: {path}")
            records = load_records(path, dataset, opts.e)
            plan[dataset] = records if self.cfg.limit is None else records[: self.cfg.limit]
        return plan

    def _data_root(self) -> Path:
        return data_root(self.options.data_dir)

    def run(self, plan: dict[str, list[dict]], context: RunContext) -> Iterator[TaskResult]:
        opts, tokenizer = self.options, context.tokenizer
        max_length = opts.max_length or context.model_cfg.max_length
        chat = resolve_chat(tokenizer, context.model_cfg, opts.chat_template)
        out_dir = Path(context.output_dir) / self.cfg.name
        scores: dict[str, dict[str, float]] = {}
        probe = divergence_probe(self, context)
        for dataset, records in plan.items():
            log.info("LongBench %s: %d examples", dataset, len(records))
            rows = predict_dataset(context.protocol, tokenizer, dataset, records, max_length, chat, self.cfg.max_gen_toks,
                                   query_aware=self.cfg.query_aware, probe=probe)
            atomic_write_text(out_dir / f"{dataset}.jsonl", jsonl(rows))
            scores[dataset] = score_rows(dataset, rows, opts.e)
            per_sample = [sample_score(dataset, r["pred"], r["answers"], rows[-1].get("all_classes")) for r in rows]
            primary = next(iter(scores[dataset]))
            scores[dataset].update(divergence_metrics(rows))
            result = TaskResult.from_samples(dataset, scores[dataset], primary, per_sample, mean,
                                             scale=100, ids=[r["_id"] for r in rows])
            result.samples = sample_rows([r["_id"] for r in rows], [r["pred"] for r in rows],
                                         [" | ".join(r["answers"]) for r in rows], per_sample)
            yield result
        if len(scores) > 1:
            scores["average"] = {"score": round(statistics.fmean(next(iter(m.values())) for m in scores.values()), 2)}
            yield TaskResult("average", scores["average"], primary="score", n=len(plan))
        atomic_write_text(out_dir / "result.json", json.dumps(scores, indent=2, ensure_ascii=False) + "\n")
