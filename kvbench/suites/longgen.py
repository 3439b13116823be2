"""``suite.runner=longgen``: long generations on the bundled model (issue 25), measured along the trace
(:mod:`kvbench.eval.longgen`).

Three tasks, each prompt generated greedily up to ``max_new_tokens`` by ``full`` and by the method:

* ``prose`` -- continue a held-out prose prompt (the ``eval`` split of the offline corpus, as ``suite=fidelity``);
* ``progression`` -- continue a seeded arithmetic progression (a checkable chain): ``accuracy`` is the share of the
  first ``check_terms`` terms after the shown ones that the method's output gets right before its first error
  (``full``'s in ``accuracy_full``);
* ``instruct`` -- answer an open instruction in the chat template (:data:`kvbench.eval.longgen.INSTRUCTIONS`): the
  answers end on their own, so ``output_length`` and ``length_change`` measure something (the other two tasks
  always run to ``max_new_tokens`` on the bundled model).

Per task: the mean per-prompt KL(full ‖ method) on full's own output (primary, lower is better, with a bootstrap
interval over prompts) and top-1 agreement, each also per position bin (``kl_0_256``, ``kl_256_1k``,
``kl_1k_plus``, ``top1_*``; a bin no trace reaches is absent), the output length (``output_length``, full's in
``output_length_full``) and its paired change against full on the same prompt (``length_change``, with a 95%
bootstrap interval ``length_change_low``/``_high``), where the method's own output first departs from full's
(``first_disagreement``: the median generated-token index over prompts, with its bootstrap interval
``first_disagreement_low``/``_high``; a prompt whose outputs never differ counts at its length, a censored value,
and ``departed`` is the share of prompts whose outputs differ), and decode ms per step (``decode_rows``: the rows of
the batch it times). Peak and final KV bytes of the generations are the record's ``kv.peak_decode_stored_bytes`` /
``final_decode_stored_bytes``. ``options.batch`` > 1 traces up to that many equal-length prompts of a task in one
batch, each prompt's generation and its teacher-forced pass as two of its rows
(:func:`kvbench.eval.longgen.trace_batch`): the same numbers up to float rounding, in a fraction of the time on a
CPU; decode ms/step and peak bytes are then the batch's. Writes
``<run dir>/<suite name>/traces.jsonl``, one line per prompt and task. Query-agnostic by construction (no question
kept apart): ``suite.query_aware=true`` is refused.
"""

from __future__ import annotations

import functools
import json
import random
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kvbench.atomic import atomic_write_text
from kvbench.config import SuiteConfig
from kvbench.errors import SuiteConfigError
from kvbench.eval.intervals import bootstrap, mean
from kvbench.eval.longgen import (BIN_EDGES, INSTRUCTIONS, bins, correct_terms, instruct_prompt, progression_prompt,
                                  trace, trace_batch)
from kvbench.eval.prompts import eos_ids
from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import build_method
from kvbench.suites.base import RunContext, Suite, TaskResult, register
from kvbench.suites.fidelity import check_vocabulary, prose_prompts, reference_model

TASKS = ("prose", "progression", "instruct")
#: What a run does unless `suite.tasks` names `instruct` too (conf/suite/longgen.yaml says the same).
DEFAULT_TASKS = ("prose", "progression")


@dataclass
class LonggenOptions:
    prompts: int = 4
    prompt_tokens: int = 128
    max_new_tokens: int = 1280
    check_terms: int = 64
    seed: int = 0
    #: Prompts traced at once (:func:`kvbench.eval.longgen.trace_batch`): 1 traces each alone (three passes,
    #: decode ms/step a batch-1 step); above 1, up to that many equal-length prompts of a task share one batch.
    batch: int = 1
    #: Where the trace's position bins start (KL and top-1 per bin): 0–256, 256–1k, 1k+ by default.
    bins: list[int] = field(default_factory=lambda: list(BIN_EDGES))


@dataclass
class LonggenConfig(SuiteConfig):
    runner: str = "longgen"
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    options: LonggenOptions = field(default_factory=LonggenOptions)


@register
class Longgen(Suite):
    runner = "longgen"
    Config = LonggenConfig
    Options = LonggenOptions
    compares_to_full = True

    def validate(self, model_cfg=None) -> None:
        opts = self.options
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise SuiteConfigError(f"unknown longgen task(s) {', '.join(unknown)} (choose from: {', '.join(TASKS)})")
        for name in ("prompts", "prompt_tokens", "max_new_tokens", "check_terms", "batch"):
            value = getattr(opts, name)
            low = 2 if name == "prompt_tokens" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise SuiteConfigError(f"suite.options.{name}={value!r} must be an integer >= {low}")
        n = self.prompt_count()
        if "instruct" in self.tasks and n > len(INSTRUCTIONS):
            raise SuiteConfigError(f"suite=longgen task instruct has {len(INSTRUCTIONS)} instructions; {n} prompts "
                                   "asked (lower suite.limit or suite.options.prompts)")
        edges = list(opts.bins)
        if not edges or any(isinstance(e, bool) or not isinstance(e, int) for e in edges) or edges[0] < 1 \
                or any(b <= a for a, b in zip(edges, edges[1:])):
            raise SuiteConfigError(f"suite.options.bins={edges!r} must be increasing token positions >= 1 "
                                   "(where the trace's bins start after 0, e.g. [256, 1024])")
        if model_cfg is not None and opts.prompt_tokens + opts.max_new_tokens > model_cfg.max_length:
            raise SuiteConfigError(f"suite.options.prompt_tokens + max_new_tokens = "
                                   f"{opts.prompt_tokens + opts.max_new_tokens} exceeds model.max_length="
                                   f"{model_cfg.max_length}")

    def prompt_count(self) -> int:
        """Prompts per task: ``options.prompts``, cut to ``suite.limit`` when set."""
        opts = self.options
        return opts.prompts if self.cfg.limit is None else min(self.cfg.limit, opts.prompts)

    def run(self, plan, context: RunContext) -> Iterator[TaskResult]:
        opts, protocol, tokenizer = self.options, context.protocol, context.tokenizer
        check_vocabulary(protocol.model, protocol.model, protocol.method)  # a changed vocabulary, before any work

        @functools.cache
        def load_reference():  # only when full's generations are not kept already (kvbench.eval.longgen.full_trace)
            reference = CompressionProtocol(reference_model(context), build_method("full"))
            check_vocabulary(reference.model, protocol.model, protocol.method)
            return reference

        n = self.prompt_count()
        eos = eos_ids(tokenizer, protocol.model)
        key = reference_key(context)
        edges = tuple(opts.bins)
        lines = []
        for task in self.tasks:
            rows = []
            prompts = task_prompts(task, tokenizer, n, opts)
            traced = {}
            for group in batches([p for p, _ in prompts], opts.batch):
                if opts.batch == 1:
                    [i] = group
                    traced[i] = trace(load_reference, protocol, prompts[i][0], opts.max_new_tokens, eos, key, edges)
                    continue
                found = trace_batch(load_reference, protocol, [prompts[i][0] for i in group], opts.max_new_tokens,
                                    eos, key, edges)
                traced.update(zip(group, found))
            for i, (prompt, check) in enumerate(prompts):
                found = traced[i]
                row = {"task": task, "prompt": i,
                       **{k: v for k, v in vars(found).items() if k not in ("output", "full_output")}}
                if check is not None:
                    for name, output in (("accuracy", found.output), ("accuracy_full", found.full_output)):
                        row[name] = min(opts.check_terms, correct_terms(tokenizer.decode(output), *check)) / opts.check_terms
                rows.append(row)
                lines.append(json.dumps(row) + "\n")
            yield task_result(task, rows, edges)
        atomic_write_text(Path(context.output_dir) / self.cfg.name / "traces.jsonl", "".join(lines))


def batches(prompts: list[list[int]], size: int) -> list[list[int]]:
    """Indices of ``prompts`` in groups of at most ``size`` prompts of equal length (a batch is never padded), in
    order of their first prompt."""
    groups: dict[int, list[list[int]]] = {}
    for i, prompt in enumerate(prompts):
        open_groups = groups.setdefault(len(prompt), [])
        if not open_groups or len(open_groups[-1]) == size:
            open_groups.append([])
        open_groups[-1].append(i)
    return sorted((g for found in groups.values() for g in found), key=lambda g: g[0])


def reference_key(context: RunContext) -> tuple:
    """What names full's weights and device, so a sweep's jobs share full's generations (:func:`full_trace`): the
    model config, and a fingerprint of the weights the run loaded (two models built from one config name, as the
    tests' random ones, must never share; the embeddings are those of full, since a longgen method never changes
    the vocabulary)."""
    cfg, model = context.model_cfg, context.protocol.model
    embedding = model.get_input_embeddings().weight.detach()
    fingerprint = (sum(p.numel() for p in model.parameters()), float(embedding.double().sum()),
                   float(embedding[0].double().norm()))
    return (cfg.pretrained, cfg.gguf_file, cfg.revision, cfg.dtype, str(context.protocol.device), fingerprint)


def task_prompts(task: str, tokenizer, n: int, opts: LonggenOptions):
    """``[(prompt ids, check or None)]``: held-out prose pieces, progressions with ``(start, step, shown)``, or open
    instructions (a seeded draw without repeats from :data:`INSTRUCTIONS`)."""
    if task == "instruct":
        chosen = random.Random(opts.seed).sample(range(len(INSTRUCTIONS)), n)
        return [(instruct_prompt(tokenizer, INSTRUCTIONS[i]), None) for i in chosen]
    if task == "prose":
        prompts, _ = prose_prompts(tokenizer, n, opts.prompt_tokens, 1, opts.seed)
        return [(p, None) for p in prompts]
    rng = random.Random(opts.seed)
    out = []
    for _ in range(n):
        text, start, step, shown = progression_prompt(rng)
        out.append((tokenizer(text, add_special_tokens=False)["input_ids"], (start, step, shown)))
    return out


def task_result(task: str, rows: list[dict], edges=BIN_EDGES) -> TaskResult:
    """Means over prompts; KL primary with its interval; the paired length change with its own interval."""
    metrics = {"kl": mean([r["kl"] for r in rows]), "top1_agreement": mean([r["top1_agreement"] for r in rows]),
               "output_length": mean([r["length"] for r in rows]),
               "output_length_full": mean([r["full_length"] for r in rows])}
    for name, _, _ in bins(edges):
        for metric, key in (("kl", "kl_bins"), ("top1", "agreement_bins")):
            values = [r[key][name] for r in rows if r[key][name] is not None]
            if values:
                metrics[f"{metric}_{name}"] = mean(values)
    changes = [r["length"] - r["full_length"] for r in rows]
    metrics["length_change"] = mean(changes)
    found = bootstrap(changes, mean)
    if found is not None:
        metrics["length_change_low"], metrics["length_change_high"] = found[0], found[1]
    metrics.update(first_disagreement_metrics(rows))
    steps = [r["decode_ms_per_step"] for r in rows if r["decode_ms_per_step"] is not None]
    if steps:
        metrics["decode_ms_per_step"] = mean(steps)
        metrics["decode_rows"] = mean([r["decode_rows"] for r in rows])
    if "accuracy" in rows[0]:
        metrics["accuracy"] = mean([r["accuracy"] for r in rows])
        metrics["accuracy_full"] = mean([r["accuracy_full"] for r in rows])
    return TaskResult.from_samples(task, metrics, "kl", [r["kl"] for r in rows], mean, higher_is_better=False,
                                   ids=range(len(rows)))


def first_disagreement_metrics(rows: list[dict]) -> dict:
    """The median first-disagreement position over prompts, its 95% bootstrap interval, and the share departed."""
    positions = [r["first_disagreement"] for r in rows]
    metrics = {"first_disagreement": float(statistics.median(positions)),
               "departed": mean([float(r["departed"]) for r in rows])}
    found = bootstrap(positions, statistics.median)
    if found is not None:
        metrics["first_disagreement_low"], metrics["first_disagreement_high"] = found[0], found[1]
    return metrics
