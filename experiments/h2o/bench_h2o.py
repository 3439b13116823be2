"""Speed and memory of H2O (real eviction) vs the full cache on the bundled SmolLM2-135M.

For each method: prefill a ~1024-token context (Python docs prose) in one forward + compress,
then greedy-decode tokens one at a time. Prints the median prefill time, the median decode
ms/token, cache bytes after prefill and the largest seen while decoding, and the process's RSS
high-water mark. Each method runs in its own subprocess so the RSS peaks are comparable.

Run: ``python experiments/h2o/bench_h2o.py [--context 1024] [--decode 64] [--threads 2]``
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time

METHODS = {
    "full": {},
    "h2o": {},  # 10% heavy + 10% recent
    "h2o_local": {"heavy_ratio": 0.0, "recent_ratio": 0.2},
}


def run_one(label: str, context: int, decode: int, repeats: int, threads: int) -> dict:
    import torch

    from kvbench.cache import cache_nbytes, full_cache_nbytes
    from kvbench.corpus import pydoc_documents
    from kvbench.methods import build_method
    from kvbench.models import ModelConfig, load_model

    torch.set_num_threads(threads)
    model, tok = load_model(ModelConfig())
    method = build_method("full" if label == "full" else "h2o", **METHODS[label])
    model = method.apply(model, tok)
    ids = tok("\n\n".join(pydoc_documents("eval")), return_tensors="pt").input_ids[:, :context]
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    prefill_s, decode_ms, bytes_after, bytes_max = [], [], 0, 0
    with torch.inference_mode():
        for rep in range(repeats + 1):  # first repetition = warm-up, not timed
            cache = method.new_cache(model)
            t0 = time.perf_counter()
            logits = model(input_ids=ids, past_key_values=cache, use_cache=True).logits
            method.compress(cache)
            t1 = time.perf_counter()
            bytes_after = cache_nbytes(cache)
            nxt = logits[:, -1:].argmax(-1)
            steps = []
            for _ in range(decode):
                s0 = time.perf_counter()
                logits = model(input_ids=nxt, past_key_values=cache, use_cache=True).logits
                nxt = logits[:, -1:].argmax(-1)
                steps.append(time.perf_counter() - s0)
                bytes_max = max(bytes_max, cache_nbytes(cache))
            if rep:
                prefill_s.append(t1 - t0)
                decode_ms.append(1000 * statistics.median(steps))
    full_bytes = full_cache_nbytes(model.config, ids.shape[1], model.dtype)
    return dict(
        method=label, context=ids.shape[1], threads=threads,
        prefill_s=statistics.median(prefill_s), decode_ms_per_token=statistics.median(decode_ms),
        cache_bytes_after_prefill=bytes_after, cache_bytes_max_decoding=bytes_max,
        cache_ratio=bytes_after / full_bytes, full_cache_bytes=full_bytes,
        rss_loaded_mb=rss_loaded / 1024, rss_peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one method, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.context, args.decode, args.repeats, args.threads)))
        return

    rows = []
    for label in args.methods:
        cmd = [sys.executable, __file__, "--one", label, "--context", str(args.context), "--decode",
               str(args.decode), "--repeats", str(args.repeats), "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    full = next((r for r in rows if r["method"] == "full"), None)
    print(f"SmolLM2-135M, float32, CPU, {rows[0]['threads']} threads, context {rows[0]['context']} tokens, "
          f"{args.decode} greedy steps, median of {args.repeats}")
    print(f"{'method':<10} {'prefill s':>9} {'x full':>6} {'decode ms/tok':>13} {'x full':>6} "
          f"{'cache MB':>8} {'ratio':>6} {'max MB dec':>10} {'RSS peak MB':>11}")
    for r in rows:
        rel_p = r["prefill_s"] / full["prefill_s"] if full else float("nan")
        rel_d = r["decode_ms_per_token"] / full["decode_ms_per_token"] if full else float("nan")
        print(f"{r['method']:<10} {r['prefill_s']:>9.3f} {rel_p:>6.2f} {r['decode_ms_per_token']:>13.2f} "
              f"{rel_d:>6.2f} {r['cache_bytes_after_prefill'] / 2**20:>8.2f} {r['cache_ratio']:>6.3f} "
              f"{r['cache_bytes_max_decoding'] / 2**20:>10.2f} {r['rss_peak_mb']:>11.0f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
