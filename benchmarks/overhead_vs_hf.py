"""Wall time of kvbench's `full` method vs lm-eval's own `hf` model on the same tasks and limits.

The compression protocol must not cost accuracy or much time when nothing is compressed
(target: overhead <= 10%). Both models wrap the *same* loaded model object; each is timed
``--repeats`` times in alternation and the best run of each is compared.

    python benchmarks/overhead_vs_hf.py --tasks kvbench_passkey kvbench_recall_mc kvbench_prose_ppl --limit 12
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["kvbench_passkey", "kvbench_recall_mc", "kvbench_prose_ppl"])
    parser.add_argument("--limit", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import logging

    logging.disable(logging.WARNING)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from kvbench.eval.lm import KvbenchLM
    from kvbench.methods import build_method
    from kvbench.models import ModelConfig, load_model
    from kvbench.suites.lm_eval import task_manager

    model, tokenizer = load_model(ModelConfig())
    manager = task_manager(args.tasks)
    makers = {
        "kvbench full": lambda: KvbenchLM(model=model, tokenizer=tokenizer, method_obj=build_method("full"), max_length=2048),
        "lm-eval hf": lambda: HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, max_length=2048),
    }
    times = {name: [] for name in makers}
    metrics = {}
    for _ in range(args.repeats):
        for name, make in makers.items():
            lm = make()
            start = time.perf_counter()
            out = simple_evaluate(model=lm, tasks=args.tasks, limit=args.limit, task_manager=manager,
                                  bootstrap_iters=0, random_seed=0)
            times[name].append(time.perf_counter() - start)
            metrics[name] = {t: {k: v for k, v in r.items() if "," in k and "stderr" not in k} for t, r in out["results"].items()}
    best = {name: min(ts) for name, ts in times.items()}
    for name, ts in times.items():
        print(f"{name:14s} wall s: " + ", ".join(f"{t:.1f}" for t in ts) + f"  (best {best[name]:.1f})")
    overhead = best["kvbench full"] / best["lm-eval hf"] - 1
    print(f"overhead of kvbench full vs lm-eval hf: {100 * overhead:+.1f}%  (target <= +10%)")
    print("identical metrics:", metrics["kvbench full"] == metrics["lm-eval hf"])


if __name__ == "__main__":
    main()
