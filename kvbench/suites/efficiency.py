"""``suite.runner=efficiency``: how much faster, how much more fits -- throughput, TTFT and decode latency per
(batch size, context length), and the largest batch that fits a memory budget (issue 11; EVALUATION.md).

At batch 1 and short contexts decoding is bound by the weights, so a smaller cache cannot pay off; the papers'
claims are serving numbers at large batch. This suite measures a grid of batch sizes × context lengths on one
seeded prose workload (the local corpus cut to exact token lengths, identical for every method), each point a
batch of equal-length prompts through the method's cache (batch > 1 is exact: ``tests/eval/test_batch.py``).
The measurements are :mod:`kvbench.eval.efficiency`'s. Each point is a task result (``ctx<N>_b<B>``: throughput,
decode ms/step, TTFT) that also carries every point so far, the max batch and the workload: the record's
``efficiency`` part (:class:`~kvbench.results.EfficiencyPart`), which the runner takes from each result.
With ``engine=vllm`` the same workload runs through vLLM instead (:mod:`kvbench.engines.efficiency`, issue 29).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import List, Optional

from tqdm import tqdm

from kvbench.config import SuiteConfig
from kvbench.corpus import check_source
from kvbench.errors import SuiteConfigError
from kvbench.eval import efficiency as eff
from kvbench.eval import roofline
from kvbench.engines.efficiency import engine_run
from kvbench import models
from kvbench.results import EfficiencyPart
from kvbench.suites.base import NO_QUESTION, RunContext, Suite, TaskResult, register

log = logging.getLogger(__name__)
TASK = "efficiency"


@dataclass
class EfficiencyOptions:
    """``suite.options`` of the efficiency suite (defaults: small enough for a CPU)."""

    batch_sizes: List[int] = field(default_factory=lambda: [1, 4, 8])
    context_lengths: List[int] = field(default_factory=lambda: [512, 2048])
    #: Decode steps per point; EOS is ignored, so every point decodes exactly this many tokens.
    new_tokens: int = 32
    #: Timed runs per point (medians reported, min and max kept) and untimed runs before them.
    repeats: int = 3
    warmup: int = 1
    #: Memory budget (GiB, weights included) for the max-batch figure; null = no max batch.
    memory_budget_gb: Optional[float] = None
    #: Largest batch the CUDA search tries.
    max_batch_cap: int = 4096
    #: Prose source (``pydoc``: Python's docs, offline) and the seed of the windows cut from it.
    corpus: str = "pydoc"
    seed: int = 0


@dataclass
class EfficiencyConfig(SuiteConfig):
    name: str = "efficiency"
    runner: str = "efficiency"
    tasks: List[str] = field(default_factory=lambda: [TASK])
    options: EfficiencyOptions = field(default_factory=EfficiencyOptions)


def _positive_ints(name: str, values, minimum: int = 1) -> list[int]:
    values = list(values or [])
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values):
        raise SuiteConfigError(f"suite.options.{name}={values!r} must be a non-empty list of integers >= {minimum}")
    return sorted(set(values))


@register
class Efficiency(Suite):
    runner = "efficiency"
    needs_cache = True
    engines = ("hf", "vllm")
    Config = EfficiencyConfig
    Options = EfficiencyOptions

    def question_visible(self) -> dict[str, str]:
        """Synthetic prompts timed: no question."""
        return {task: NO_QUESTION for task in self.tasks}

    def validate(self, model_cfg=None) -> dict:
        """The grid of points, after checking every option (and the budget against the model's own size)."""
        opts = self.options
        if self.tasks != [TASK]:
            raise SuiteConfigError(f"suite.tasks={self.tasks!r}: the efficiency suite has one task (set suite.tasks=[{TASK}])")
        batches = _positive_ints("batch_sizes", opts.batch_sizes)
        # 2 tokens at least: all but the last are prefilled and compressed, the last is fed by the first decode step
        contexts = _positive_ints("context_lengths", opts.context_lengths, minimum=2)
        for name, minimum in (("new_tokens", 1), ("repeats", 1), ("warmup", 0), ("max_batch_cap", 1)):
            value = getattr(opts, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise SuiteConfigError(f"suite.options.{name}={value!r} must be an integer >= {minimum}")
        budget = opts.memory_budget_gb
        if budget is not None and not budget > 0:
            raise SuiteConfigError(f"suite.options.memory_budget_gb={budget!r} must be a positive number of GiB "
                                   "(or null for no max-batch figure)")
        check_source(opts.corpus)
        if model_cfg is not None:
            too_long = [n for n in contexts if n > model_cfg.max_length]
            if too_long:
                raise SuiteConfigError(f"suite.options.context_lengths {too_long} exceed model.max_length="
                                       f"{model_cfg.max_length} (choose lengths <= {model_cfg.max_length})")
            if budget is not None:
                weights = models.estimated_model_nbytes(model_cfg)
                if budget * (1 << 30) <= weights:
                    raise SuiteConfigError(
                        f"suite.options.memory_budget_gb={budget} is smaller than model={model_cfg.name} itself "
                        f"({weights / (1 << 30):.2f} GiB of weights in {model_cfg.dtype}): give a budget above that")
        return {"points": [(n, b) for n in contexts for b in batches]}

    def run(self, plan, context: RunContext) -> Iterator[TaskResult]:
        """A result per measured point (``ctx<N>_b<B>``), then the max batch (with a budget); each carries the
        measurements so far, the record's ``efficiency`` part."""
        opts, protocol = self.options, context.protocol
        if context.engine is not None and context.engine.backend != "hf":
            for task, metrics, part in engine_run(plan, context, opts):
                primary = "batch" if task == "max_batch" else "throughput_tok_s"
                yield TaskResult(task, metrics, primary=primary, n=None if task == "max_batch" else opts.repeats,
                                 efficiency=part)
            return
        model_bytes = eff.model_nbytes(protocol.model)
        budget = opts.memory_budget_gb
        if budget is not None and budget * eff.GIB <= model_bytes:  # after surgery, on the real weights
            raise SuiteConfigError(f"suite.options.memory_budget_gb={budget} is smaller than the loaded model "
                                   f"({model_bytes / eff.GIB:.2f} GiB of weights and buffers)")
        widest = max(b for _, b in plan["points"])
        workloads = {n: eff.prose_workload(context.tokenizer, widest, n, opts.seed, opts.corpus)
                     for n in sorted({n for n, _ in plan["points"]})}
        probe = eff.MemoryProbe(protocol.device)
        # the machine's bandwidth and matmul rate: measured once per run (cached per process), before any point
        machine = roofline.measure_machine(protocol.device, protocol.dtype, *roofline.model_shapes(protocol.model))
        weights, attention = roofline.weight_profile(protocol.model), roofline.attention_size(protocol.model)
        points: list[dict] = []
        measured = EfficiencyPart(workload={"corpus": opts.corpus, "seed": opts.seed, "new_tokens": opts.new_tokens,
                                            "repeats": opts.repeats, "warmup": opts.warmup, "eos": "ignored"},
                                  model_bytes=model_bytes, memory_source=probe.source, memory_reset=probe.resettable,
                                  roofline={**machine, **weights, "attention_size": attention})

        def so_far(**changes) -> EfficiencyPart:  # a new part each time: the record never shares the suite's list
            return replace(measured, points=list(points), **changes)

        oom = eff.out_of_memory_errors() if protocol.device.type == "cuda" else ()
        bar = tqdm(plan["points"], desc=f"efficiency {getattr(protocol.method, 'name', '')}", unit="point")
        for length, batch in bar:
            bar.set_postfix_str(f"context {length}, batch {batch}")
            try:
                point = eff.measure_point(protocol, workloads[length][:batch], opts.new_tokens, opts.repeats,
                                          opts.warmup, probe)
            except oom:  # a point too large for the device: recorded as such, the grid goes on
                eff.free_memory(protocol.device)
                points.append({"batch_size": batch, "context_length": length, "new_tokens": opts.new_tokens,
                               "out_of_memory": True})
                yield TaskResult.measurements(so_far())
                continue
            point = eff.with_floor(point, machine, weights, attention)
            points.append(point)
            log.info("context %d, batch %d: %.1f tok/s, %.1f ms/step (%.1fx the %.1f ms floor), TTFT %.2f s", length,
                     batch, point["throughput_tok_s"], point["decode_ms_per_step"], point["floor_multiple"],
                     point["floor_ms_per_step"], point["ttft_s"])
            yield TaskResult(f"ctx{length}_b{batch}", {k: point[k] for k in ("throughput_tok_s", "decode_ms_per_step",
                                                                              "ttft_s")},
                             primary="throughput_tok_s", higher_is_better=True, n=opts.repeats, efficiency=so_far())
        bar.close()
        if budget is not None:
            max_batch = self._max_batch(protocol, points, workloads, model_bytes)
            yield TaskResult("max_batch", {"batch": max_batch["batch"]}, primary="batch",
                             efficiency=so_far(max_batch=max_batch))

    def _max_batch(self, protocol, points: list[dict], workloads: dict, model_bytes: int) -> dict:
        """At the longest context: derived from measured bytes (always), searched on CUDA."""
        opts = self.options
        length = max(workloads)
        measured = [p for p in points if p["context_length"] == length and not p.get("out_of_memory")]
        derived = eff.derived_max_batch(opts.memory_budget_gb, model_bytes, max(measured, key=lambda p: p["batch_size"])) \
            if measured else None
        if protocol.device.type != "cuda":
            return derived
        found = eff.search_max_batch(protocol, workloads[length], opts.new_tokens, opts.memory_budget_gb,
                                     cap=opts.max_batch_cap)
        found["derived_batch"] = None if derived is None else derived["batch"]
        return found
