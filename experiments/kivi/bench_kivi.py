"""Decode speed of the quantized caches vs ``full`` on the bundled model at a 2048-token context.

Per method: prefill the first 2047 tokens of held-out Python-docs prose (one forward + ``compress``), then
greedy-decode ``--decode`` tokens one forward at a time (EOS ignored, so every method decodes the same count).
Prints the median decode ms/token over ``--repeats`` (wall clock, and this process's CPU time, which other load
on a shared machine inflates less), the ratio to ``full``, the cache bytes after prefill relative to full, and
greedy-token agreement with ``full``. ``--profile`` adds the CPU time one decode step spends dequantizing
(every quantized layer's codes read back once, as attention does).

    python experiments/kivi/bench_kivi.py [--context 2048] [--decode 32] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kvbench.cache import cache_nbytes, full_cache_nbytes
from kvbench.corpus import load_texts
from kvbench.methods import build_method
from kvbench.models import ModelConfig, load_model

VARIANTS = {
    "full": ("full", {}),
    "kivi-2": ("kivi", {"nbits": 2}),
    "kivi-4": ("kivi", {"nbits": 4}),
    "rtn-4": ("rtn", {"nbits": 4}),
    "minicache": ("minicache", {}),
    "minicache+kivi-4": ("combined", {"heads": None, "tokens": None, "bits": "kivi", "bits_params": {"nbits": 4}}),
}


def text_ids(tokenizer, n: int) -> torch.Tensor:
    ids: list[int] = []
    for doc in load_texts("pydoc", split="eval"):
        ids += tokenizer(doc + "\n\n").input_ids
        if len(ids) >= n:
            break
    return torch.tensor([ids[:n]])


@torch.inference_mode()
def run(model, method, ctx, n_decode):
    cache = method.new_cache(model)
    model(input_ids=ctx[:, :-1], cache=cache, logits_to_keep=1)
    method.compress(cache)
    stored = cache_nbytes(cache)
    tok, out = ctx[:, -1:], []
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n_decode):
        tok = model(input_ids=tok, cache=cache, logits_to_keep=1).logits[:, -1:].argmax(-1)
        out.append(int(tok))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return 1000 * wall / n_decode, 1000 * cpu / n_decode, stored, out, cache


def dequantize_ms(cache, repeats: int = 5) -> float:
    """Median CPU time to read back every quantized stream of the cache once (one decode step's dequantization)."""
    streams = []
    for layer in cache.layers:
        if hasattr(layer, "key_stream"):
            streams += [layer.key_stream, layer.value_stream]
        elif getattr(layer, "role", 1) == 0 and hasattr(layer.pair.keys, "stream"):  # quantized merged directions
            streams += [layer.pair.keys.stream, layer.pair.values.stream]
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        for s in streams:
            s.read()
        times.append(1000 * (time.process_time() - t0))
    return statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, tokenizer = load_model(ModelConfig())
    ctx = text_ids(tokenizer, args.context)
    full_bytes = full_cache_nbytes(model.config, args.context - 1, next(model.parameters()).dtype)
    methods = {label: build_method(name, **params) for label, (name, params) in VARIANTS.items() if label in args.variants}
    results = {label: [] for label in methods}
    for _ in range(args.repeats):  # interleaved, so slow phases of a shared machine hit every method alike
        for label, method in methods.items():
            results[label].append(run(model, method, ctx, args.decode))
    ref = results.get("full", [None])[0]
    base = statistics.median(r[0] for r in results["full"]) if "full" in results else None
    base_cpu = statistics.median(r[1] for r in results["full"]) if "full" in results else None
    print(f"context {args.context} tokens, {args.decode} greedy tokens, median of {args.repeats}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'method':<18} {'ms/token':>9} {'x full':>7} {'CPU ms':>8} {'x full':>7} {'bytes/full':>10} {'agree':>6}"
          + (f" {'dequant ms':>10}" if args.profile else ""))
    for label, runs in results.items():
        wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        agree = sum(a == b for a, b in zip(runs[0][3], ref[3])) / len(ref[3]) if ref else float("nan")
        extra = f" {dequantize_ms(runs[0][4]):>10.2f}" if args.profile else ""
        print(f"{label:<18} {wall:>9.1f} {wall / base if base else float('nan'):>7.2f} {cpu:>8.1f} "
              f"{cpu / base_cpu if base_cpu else float('nan'):>7.2f} {runs[0][2] / full_bytes:>10.3f} {agree:>6.2f}{extra}")


if __name__ == "__main__":
    main()
