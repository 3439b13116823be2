"""Running lm-eval tasks with the kvbench model: one task at a time, results as plain dicts.

One ``simple_evaluate`` call per task, so each task's metrics reach the record as soon
as it is done. Per-sample outputs are saved as ``samples_<task>.jsonl`` in the run dir.
"""

from __future__ import annotations

import json
from pathlib import Path

from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager
from lm_eval.utils import handle_non_serializable

TASKS_DIR = Path(__file__).parent / "tasks"


def task_manager(tasks, seed: int = 0) -> TaskManager:
    """kvbench's offline tasks, plus lm-eval's own index only when a suite names other tasks."""
    local = {p.stem for p in TASKS_DIR.glob("*.yaml")}
    include_defaults = any(t not in local for t in tasks)
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=include_defaults, metadata={"seed": seed})


def evaluate_tasks(lm, suite, seed: int, output_dir):
    """Yield ``(task, metrics, primary)`` for each task of ``suite``; ``primary`` = {name, higher_is_better}."""
    manager = task_manager(list(suite.tasks), seed)
    for task in suite.tasks:
        results = simple_evaluate(
            model=lm, tasks=[task], num_fewshot=suite.num_fewshot, limit=suite.limit, task_manager=manager,
            bootstrap_iters=0, log_samples=True, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed, gen_kwargs=_gen_kwargs(suite),
        )
        samples = results.get("samples", {})
        for name, task_results in results["results"].items():
            metrics = {k.split(",")[0]: v for k, v in task_results.items()
                       if "," in k and "_stderr" not in k and isinstance(v, (int, float))}
            if not metrics:
                continue  # a group header
            higher = results.get("higher_is_better", {}).get(name, {})
            primary = next(iter(metrics))
            _write_samples(Path(output_dir) / f"samples_{name}.jsonl", samples.get(name, []))
            yield name, metrics, {"name": primary, "higher_is_better": bool(higher.get(primary, True))}


def _gen_kwargs(suite):
    return {"max_gen_toks": suite.max_gen_toks} if suite.max_gen_toks else None


def _write_samples(path: Path, samples) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for sample in samples:
            handle.write(json.dumps(sample, default=handle_non_serializable) + "\n")
