"""Speed and memory of H2O (real eviction) vs the full cache on the bundled SmolLM2-135M.

For each method: prefill a ~1024-token context (Python docs prose) in one forward + compress,
then greedy-decode tokens one at a time. Prints the median prefill time, the median decode
ms/token, cache bytes after prefill and the largest seen while decoding. Methods are timed in one
process, interleaved repetition by repetition, so background load hits them alike. With ``--rss``
each method also runs alone in a fresh subprocess to read its RSS high-water mark.

Run: ``python experiments/h2o/bench_h2o.py [--context 1024] [--decode 64] [--threads 2] [--rss]``
"""

from __future__ import annotations

import argparse
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


def bench(labels: list[str], context: int, decode: int, repeats: int, threads: int) -> list[dict]:
    """Time every method in one process, interleaved repetition by repetition (fair under load)."""
    import torch

    from kvbench.cache import cache_nbytes, full_cache_nbytes
    from kvbench.corpus import pydoc_documents
    from kvbench.methods import build_method
    from kvbench.models import ModelConfig, load_model

    torch.set_num_threads(threads)
    model, tok = load_model(ModelConfig())
    methods = {label: build_method("full" if label == "full" else "h2o", **METHODS[label]) for label in labels}
    plain = model.config._attn_implementation
    implementation = {}
    for label, method in methods.items():  # full runs the plain implementation, h2o the scored one
        model = method.apply(model, tok)
        implementation[label] = model.config._attn_implementation
        model.set_attn_implementation(plain)
    ids = tok("\n\n".join(pydoc_documents("eval")), return_tensors="pt").input_ids[:, :context]
    rows = {label: dict(method=label, context=ids.shape[1], threads=threads, prefill=[], decode=[],
                        cache_bytes_after_prefill=0, cache_bytes_max_decoding=0) for label in labels}
    with torch.inference_mode():
        for rep in range(repeats + 1):  # repetition 0 = warm-up, not recorded
            for label, method in methods.items():
                row = rows[label]
                model.set_attn_implementation(implementation[label])
                cache = method.new_cache(model)
                t0 = time.perf_counter()
                logits = model(input_ids=ids, cache=cache, use_cache=True).logits
                method.compress(cache)
                t1 = time.perf_counter()
                row["cache_bytes_after_prefill"] = cache_nbytes(cache)
                nxt = logits[:, -1:].argmax(-1)
                steps = []
                for _ in range(decode):
                    s0 = time.perf_counter()
                    logits = model(input_ids=nxt, cache=cache, use_cache=True).logits
                    nxt = logits[:, -1:].argmax(-1)
                    steps.append(time.perf_counter() - s0)
                    row["cache_bytes_max_decoding"] = max(row["cache_bytes_max_decoding"], cache_nbytes(cache))
                if rep:
                    row["prefill"].append(t1 - t0)
                    row["decode"].append(1000 * statistics.median(steps))
    full_bytes = full_cache_nbytes(model.config, ids.shape[1], model.dtype)
    out = []
    for row in rows.values():
        row["prefill_s"] = statistics.median(row.pop("prefill"))
        row["decode_ms_per_token"] = statistics.median(row.pop("decode"))
        row["cache_ratio"] = row["cache_bytes_after_prefill"] / full_bytes
        out.append(row)
    return out


def peak_rss(label: str, context: int, decode: int, threads: int) -> float:
    """RSS high-water mark (MiB) of a fresh process that loads the model and runs one method."""
    cmd = [sys.executable, __file__, "--rss-of", label, "--context", str(context), "--decode", str(decode),
           "--threads", str(threads), "--repeats", "1"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--rss", action="store_true", help="also measure each method's RSS peak in a subprocess")
    parser.add_argument("--rss-of", help=argparse.SUPPRESS)  # internal: run one method, print its RSS peak
    args = parser.parse_args()
    if args.rss_of:
        bench([args.rss_of], args.context, args.decode, 1, args.threads)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return

    rows = bench(args.methods, args.context, args.decode, args.repeats, args.threads)
    for r in rows:
        print(json.dumps(r), flush=True)
        r["rss_peak_mb"] = peak_rss(r["method"], args.context, args.decode, args.threads) if args.rss else float("nan")
    full = next((r for r in rows if r["method"] == "full"), None)
    print(f"SmolLM2-135M, float32, CPU, {rows[0]['threads']} threads, context {rows[0]['context']} tokens, "
          f"{args.decode} greedy steps, median of {args.repeats} interleaved repetitions")
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
