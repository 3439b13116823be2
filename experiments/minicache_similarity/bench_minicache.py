"""Speed, memory and quality of ``minicache`` vs ``full`` on the bundled model at ~1024 tokens of context.

Per method: prefill time (one forward over the context + ``compress``), greedy decode ms/token, cache
bytes after prefill relative to full, mean NLL of the text's next tokens scored in one forward after the
compressed context, and greedy-token agreement with ``full``. Timings are medians over ``--repeats``, as
wall-clock and as this process's CPU time (robust to other load on a shared machine; use ``--threads 1``).

    python experiments/minicache_similarity/bench_minicache.py [--context 1024] [--decode 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from kvbench.cache import cache_nbytes, full_cache_nbytes
from kvbench.corpus import load_texts
from kvbench.methods.base import build_method
from kvbench.models import ModelConfig, load_model

VARIANTS = {
    "full": {},
    "minicache": {},
    "minicache gamma=1": {"gamma": 1.0},
    "minicache S=1": {"start_layer": 1},
}


def text_ids(tokenizer, n: int) -> torch.Tensor:
    ids: list[int] = []
    for doc in load_texts("pydoc", split="eval"):
        ids += tokenizer(doc + "\n\n").input_ids
        if len(ids) >= n:
            break
    return torch.tensor([ids[:n]])


@torch.inference_mode()
def run(model, method, ctx, score, n_decode):
    cache = method.new_cache(model)
    t0, c0 = time.perf_counter(), time.process_time()
    model(input_ids=ctx, cache=cache, use_cache=True)
    method.compress(cache)
    prefill_s, prefill_cpu = time.perf_counter() - t0, time.process_time() - c0
    stored = cache_nbytes(cache)
    scored = torch.cat([ctx[:, -1:], score[:, :-1]], 1)
    logits = model(input_ids=scored, cache=copy.deepcopy(cache), use_cache=True).logits
    nll = torch.nn.functional.cross_entropy(logits[0].float(), score[0]).item()
    tok = ctx[:, -1:]
    out = []
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n_decode):
        tok = model(input_ids=tok, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
        out.append(int(tok))
    decode_ms = 1000 * (time.perf_counter() - t0) / n_decode
    decode_cpu_ms = 1000 * (time.process_time() - c0) / n_decode
    return prefill_s, decode_ms, stored, nll, out, prefill_cpu, decode_cpu_ms


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--score", type=int, default=128, help="next tokens scored for the NLL column")
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_model(ModelConfig())
    ids = text_ids(tokenizer, args.context + args.score)
    ctx, score = ids[:, : args.context - 1], ids[:, args.context - 1:]
    full_bytes = full_cache_nbytes(model.config, ctx.shape[1], next(model.parameters()).dtype)
    rows, ref_tokens = [], None
    for label in args.variants:
        params = VARIANTS[label]
        method = build_method(label.split()[0], **params)
        runs = [run(model, method, ctx, score[:, : args.score], args.decode) for _ in range(args.repeats)]
        prefill_s = statistics.median(r[0] for r in runs)
        decode_ms = statistics.median(r[1] for r in runs)
        prefill_cpu = statistics.median(r[5] for r in runs)
        decode_cpu = statistics.median(r[6] for r in runs)
        _, _, stored, nll, tokens, _, _ = runs[0]
        ref_tokens = ref_tokens or tokens
        agree = sum(a == b for a, b in zip(tokens, ref_tokens)) / len(tokens)
        rows.append((label, prefill_s, prefill_cpu, decode_ms, decode_cpu, stored / full_bytes, nll, agree))
    print(f"SmolLM2-135M-Instruct, {torch.get_num_threads()} CPU threads, context {ctx.shape[1]} tokens, "
          f"{args.decode} greedy tokens, median of {args.repeats}")
    print(f"| method | prefill s (CPU s) | decode ms/token (CPU ms) | cache bytes / full | NLL next {args.score} "
          "| greedy agree w/ full |")
    print("|---|---|---|---|---|---|")
    for label, prefill_s, prefill_cpu, decode_ms, decode_cpu, ratio, nll, agree in rows:
        print(f"| {label} | {prefill_s:.2f} ({prefill_cpu:.2f}) | {decode_ms:.1f} ({decode_cpu:.1f}) | {ratio:.3f} "
              f"| {nll:.3f} | {agree:.2f} |")


if __name__ == "__main__":
    main()
