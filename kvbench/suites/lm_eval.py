"""``suite.runner=lm_eval``: lm-evaluation-harness tasks through the kvbench model, one task at a time.

Any task lm-eval knows works by name (the hub is then needed for its data); kvbench's offline tasks
(``kvbench_*``, YAML + utils in ``kvbench/eval/tasks``) work offline. One ``simple_evaluate`` call per task,
so each task's metrics reach the record as soon as it is done. Per-sample outputs are saved as
``samples_<task>.jsonl`` in the run dir. The primary metric is the task's first, with lm-eval's own
direction; lm-eval's standard errors come along where it computes them.

``suite.query_aware`` applies to the tasks that declare their question field (``kvbench_passkey``; see
:mod:`kvbench.eval.lm`); a suite none of whose tasks declares one refuses ``query_aware=true``.
"""

from __future__ import annotations

import functools

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kvbench.config import SuiteConfig
from kvbench.engines import lm_eval_vllm
from kvbench.errors import SuiteConfigError
from kvbench.eval.lm import TASKS_DIR, KvbenchLM, query_fields, quiet_lm_eval
from kvbench.results import KvPart
from kvbench.suites.base import (
    QUESTION_HIDDEN, QUESTION_VISIBLE, WHOLE_PROMPT, NoOptions, RunContext, Suite, TaskResult, no_question_part, register,
    sample_rows,
)


def local_tasks() -> list[str]:
    """kvbench's offline lm-eval tasks."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def task_manager(tasks, seed: int = 0):
    """kvbench's offline tasks, plus lm-eval's own index only when a suite names other tasks."""
    from lm_eval.tasks import TaskManager

    include_defaults = any(t not in local_tasks() for t in tasks)
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=include_defaults, metadata={"seed": seed})


@functools.lru_cache(maxsize=1)
def lm_eval_task_names() -> frozenset[str]:
    """Every task lm-eval knows (its own index plus kvbench's): built once per process, since indexing takes
    seconds and a sweep's dry run validates every job."""
    from lm_eval.tasks import TaskManager

    return frozenset(TaskManager(include_path=str(TASKS_DIR)).all_tasks)


@dataclass
class LmEvalConfig(SuiteConfig):
    runner: str = "lm_eval"
    options: NoOptions = field(default_factory=NoOptions)


@register
class LmEval(Suite):
    runner = "lm_eval"
    Config = LmEvalConfig
    supports_data_parallel = True  # lm-eval shards requests by rank and gathers the samples to rank 0
    keeps_query = True  # for the tasks that declare a question field (checked in validate)
    engines = ("hf", "vllm")  # vllm: lm-eval's own vllm model in the engine environment

    def validate(self, model_cfg=None) -> list[str]:
        unknown = [t for t in self.tasks if t not in local_tasks()]
        if unknown:
            missing = [t for t in unknown if t not in lm_eval_task_names()]
            if missing:
                raise SuiteConfigError(
                    f"unknown task(s) {', '.join(missing)}: kvbench's offline tasks are {', '.join(local_tasks())}; "
                    "any lm-eval task name also works (see `lm_eval ls tasks`)")
        if self.cfg.query_aware and not set(self.tasks) & set(query_fields()):
            raise no_question_part(self.cfg, f"none of suite.tasks ({', '.join(self.tasks)}) has one (lm-eval tasks "
                                             f"with a question part: {', '.join(sorted(query_fields()))})")
        return self.tasks

    def question_visible(self) -> dict[str, str]:
        """The tasks declaring a question field keep it apart (``suite.query_aware`` decides); the others'
        prompts are compressed whole."""
        asked = QUESTION_VISIBLE if self.cfg.query_aware else QUESTION_HIDDEN
        return {task: asked if task in query_fields() else WHOLE_PROMPT for task in self.tasks}

    def num_fewshot(self, task: str) -> int | None:
        """The shots ``task`` runs with: its entry in ``suite.num_fewshot_per_task``, else ``suite.num_fewshot``."""
        return dict(getattr(self.cfg, "num_fewshot_per_task", None) or {}).get(task, self.cfg.num_fewshot)

    def run(self, plan: list[str], context: RunContext) -> Iterator[TaskResult]:
        if context.engine is not None and context.engine.backend != "hf":
            yield from self._run_engine(plan, context)
            return
        from lm_eval import simple_evaluate

        quiet_lm_eval()
        protocol = context.protocol
        lm = KvbenchLM(model=protocol.model, tokenizer=context.tokenizer, method_obj=protocol.method,
                       max_length=context.model_cfg.max_length, stream_chunk=self.cfg.stream_chunk, protocol=protocol,
                       query_aware=self.cfg.query_aware)
        manager = task_manager(plan, context.seed)
        seed = context.seed
        for task in plan:
            results = simple_evaluate(
                model=lm, tasks=[task], num_fewshot=self.num_fewshot(task), limit=self.cfg.limit, task_manager=manager,
                bootstrap_iters=0, log_samples=True, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                fewshot_random_seed=seed, gen_kwargs=self.gen_kwargs(),
            )
            if results is None:  # a data-parallel rank other than 0: rank 0 holds the gathered results
                continue
            yield from task_results(results, context)

    def gen_kwargs(self) -> dict | None:
        return {"max_gen_toks": self.cfg.max_gen_toks} if self.cfg.max_gen_toks else None

    def _run_engine(self, plan: list[str], context: RunContext) -> Iterator[TaskResult]:
        """The tasks through lm-eval's ``vllm`` model in the engine environment (:mod:`kvbench.engines.lm_eval_vllm`):
        the same result fields, and the cache figures vLLM reports (``kv.source: engine``)."""
        response = lm_eval_vllm.evaluate(context.engine, context.model_cfg, self.cfg, plan, self.gen_kwargs(),
                                         {task: self.num_fewshot(task) for task in plan}, context.seed,
                                         Path(context.output_dir))
        kv = KvPart(**lm_eval_vllm.engine_kv(response, context.protocol.reference_config,
                                             context.protocol.model.dtype.itemsize))
        for results in response["tasks"]:
            for result in task_results(results, context):
                result.kv = kv
                yield result


def task_results(results: dict, context: RunContext) -> Iterator[TaskResult]:
    """lm-eval's ``simple_evaluate`` output for one task as kvbench's task results (a group yields its members),
    its per-sample outputs written as ``samples_<task>.jsonl`` in the run dir."""
    from lm_eval.utils import handle_non_serializable

    samples = results.get("samples", {})
    for name, scores in results["results"].items():
        metrics = {k.split(",")[0]: v for k, v in scores.items()
                   if "," in k and "_stderr" not in k and isinstance(v, (int, float))}
        if not metrics:
            continue  # a group header
        stderr = {k.split(",")[0].removesuffix("_stderr"): v for k, v in scores.items()
                  if "_stderr," in k and isinstance(v, (int, float))}
        primary = next(iter(metrics))
        higher = bool(results.get("higher_is_better", {}).get(name, {}).get(primary, True))
        task_samples = samples.get(name, [])
        _write_samples(Path(context.output_dir) / f"samples_{name}.jsonl", task_samples, handle_non_serializable)
        scored = [s for s in task_samples if primary in s]
        items = [s[primary] for s in scored]
        aggregate = _aggregation(results.get("configs", {}).get(name, {}), primary)
        result = TaskResult.from_samples(name, metrics, primary, items, aggregate, higher,
                                         ids=[s.get("doc_id", i) for i, s in enumerate(scored)])
        result.stderr = {**stderr, **result.stderr}
        result.samples = sample_rows([s.get("doc_id") for s in task_samples],
                                     [s.get("filtered_resps") for s in task_samples],
                                     [s.get("target") for s in task_samples], items)
        yield result


def _aggregation(task_config: dict, metric: str):
    """The task's aggregation of ``metric`` over samples (e.g. ``mean``, ``weighted_perplexity``)."""
    from lm_eval.api.registry import get_aggregation, get_metric_aggregation

    for entry in task_config.get("metric_list") or []:
        if entry.get("metric") == metric and isinstance(entry.get("aggregation"), str):
            return get_aggregation(entry["aggregation"])
    try:
        return get_metric_aggregation(metric)
    except Exception:  # a task-defined metric without a registered aggregation: the mean of its samples
        from kvbench.eval.intervals import mean

        return mean


def _write_samples(path: Path, samples, default) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for sample in samples:
            handle.write(json.dumps(sample, default=default) + "\n")
