"""Wall time of ``lm_eval --model kvbench`` (method ``full``) against lm-eval's own ``hf`` model, per phase.

kvbench's protocol must add nothing when nothing is compressed (issue 30, item 0: the whole run within 1.05×
of ``hf``). Three phases, each a ratio kvbench ÷ hf printed on its own line:

* start-up -- building the lm-eval model from nothing, as ``lm_eval --model ...`` does: kvbench's
  ``KvbenchCLIModel(model=smollm2_135m, method=full)`` (config, load, method) against
  ``HFLM(pretrained=<the bundled model's directory>, gguf_file=...)``;
* loglikelihood -- a multiple-choice task (``kvbench_recall_mc``: each context with its continuations);
* generation -- a ``generate_until`` task (``kvbench_passkey``).

For the two evaluation phases both models wrap the *same* loaded model object, so only the harness differs.
Each phase runs ``--repeats`` times, the two models alternating (interleaved), and the best run of each is
compared; the metrics of both are checked to be identical. Batch size 1; set ``--threads`` (default 2).

    python benchmarks/overhead_vs_hf.py --mc-limit 40 --gen-limit 12 --repeats 2
    python benchmarks/overhead_vs_hf.py --phases loglikelihood,generation --threads 1   # a loaded machine

On a machine busier than its cores, two threads wait on each other at every op (a one-row matmul is the exception:
it runs on one thread), and the figures measure the load; ``--threads 1`` then compares the harnesses.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _metrics(out: dict) -> dict:
    return {t: {k: v for k, v in r.items() if "," in k and "stderr" not in k} for t, r in out["results"].items()}


def _best_of(makers: dict, run, repeats: int) -> dict:
    """``{name: (best seconds, all seconds, last result)}``, the makers run in alternation ``repeats`` times."""
    times, results = {name: [] for name in makers}, {}
    for _ in range(repeats):
        for name, make in makers.items():
            start = time.perf_counter()
            results[name] = run(make)
            times[name].append(time.perf_counter() - start)
    return {name: (min(ts), ts, results[name]) for name, ts in times.items()}


def _report(phase: str, measured: dict) -> float:
    for name, (best, all_times, _) in measured.items():
        print(f"  {phase:13s} {name:13s} wall s: " + ", ".join(f"{t:.2f}" for t in all_times) + f"  (best {best:.2f})")
    ratio = measured["kvbench full"][0] / measured["lm-eval hf"][0]
    print(f"{phase}: kvbench / hf = {ratio:.3f}x")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mc-task", default="kvbench_recall_mc")
    parser.add_argument("--gen-task", default="kvbench_passkey")
    parser.add_argument("--mc-limit", type=int, default=40)
    parser.add_argument("--gen-limit", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--phases", default="start-up,loglikelihood,generation",
                        help="comma-separated subset of start-up, loglikelihood, generation")
    args = parser.parse_args()

    import logging

    import torch

    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from kvbench.eval.lm import KvbenchLM
    from kvbench.lm_eval_model import KvbenchCLIModel
    from kvbench.methods import build_method
    from kvbench.models import ModelConfig, load_model, resolve_pretrained
    from kvbench.suites.lm_eval import task_manager

    cfg = ModelConfig()
    path = resolve_pretrained(cfg.pretrained)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # HFLM's default is cuda
    phases = set(args.phases.split(","))
    ratios = {}
    print(f"load before: {os.getloadavg()[0]:.2f}, {args.threads} threads, device {device}")
    if "start-up" in phases:
        startup = {"kvbench full": lambda: KvbenchCLIModel(model="smollm2_135m", method="full"),
                   "lm-eval hf": lambda: HFLM(pretrained=path, gguf_file=cfg.gguf_file, batch_size=1, device=device,
                                              max_length=cfg.max_length)}
        ratios["start-up"] = _report("start-up", _best_of(startup, lambda make: make(), args.repeats))

    model, tokenizer = load_model(cfg)
    makers = {"kvbench full": lambda: KvbenchLM(model=model, tokenizer=tokenizer, method_obj=build_method("full"),
                                                max_length=cfg.max_length),
              "lm-eval hf": lambda: HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, device=device,
                                         max_length=cfg.max_length)}
    identical = True
    for phase, task, limit in (("loglikelihood", args.mc_task, args.mc_limit),
                               ("generation", args.gen_task, args.gen_limit)):
        if phase not in phases:
            continue
        manager = task_manager([task])
        measured = _best_of(makers, lambda make: _metrics(simple_evaluate(
            model=make(), tasks=[task], limit=limit, task_manager=manager, bootstrap_iters=0, random_seed=0)),
            args.repeats)
        ratios[phase] = _report(phase, measured)
        identical &= measured["kvbench full"][2] == measured["lm-eval hf"][2]
    print("per phase (kvbench / hf): " + ", ".join(f"{k} {v:.3f}x" for k, v in ratios.items())
          + f"; identical metrics: {identical}; load {os.getloadavg()[0]:.2f}, {args.threads} threads")


if __name__ == "__main__":
    main()
