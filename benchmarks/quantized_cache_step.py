"""The cache's own work per decode step for the quantized caches, without the model: ``kivi`` (append and
flushes) and ``combined`` with ``tokens`` + ``bits`` (H2O + KIVI: append, then evict one token per KV head).

Why: the model-level script (:mod:`benchmarks.decode_step_acceptance`, ``--methods kivi``) measures a whole step,
where attention and the dequantization of every quantized token dominate; this isolates what the slot storage
changed -- how a stream appends, flushes and evicts -- at the efficiency acceptance shapes (SmolLM2: 3 KV heads,
head dim 64; batch 8, a 2048-token context, one layer). The step reads the stream (what attention would get),
appends the new token and, for ``combined``, evicts the token of lowest random priority; timings are medians
over ``--rounds`` interleaved rounds of ``--steps`` steps. It uses only what every version of the caches has, so
the same file times an older tree: ``PYTHONPATH=<old tree> python benchmarks/quantized_cache_step.py``.

    python benchmarks/quantized_cache_step.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time


def _layer(kind: str, batch: int, heads: int, dim: int, context: int, reserve: int):
    """A filled layer: ``kivi``'s quantized layer (reserved), or an evicting layer storing KIVI codes, evicted to
    20% of the context (H2O's default budget)."""
    import torch

    from kvbench.cache.base import EvictingLayer
    from kvbench.cache.kivi import Quantization, QuantizedKVCache

    g = torch.Generator().manual_seed(0)
    keys, values = (torch.randn(batch, heads, context, dim, generator=g) for _ in range(2))
    if kind == "kivi":
        cache = QuantizedKVCache(1, Quantization())
        cache.reserve(reserve)
        cache.update(keys, values, 0)
        return cache.layers[0]
    layer = EvictingLayer()
    layer.quantize_with(Quantization())
    layer.update(keys, values)
    layer.evict_lowest(torch.rand(batch, heads, context, generator=g), context - context // 5)
    return layer


def time_steps(kind: str, args) -> float:
    """Milliseconds per step over ``args.steps`` steps on a freshly filled layer."""
    import torch

    layer = _layer(kind, args.batch, args.heads, args.dim, args.context, args.context + args.steps)
    g = torch.Generator().manual_seed(1)
    tokens = [torch.randn(args.batch, args.heads, 1, args.dim, generator=g) for _ in range(2 * args.steps)]
    with torch.inference_mode():
        start = time.perf_counter()
        for step in range(args.steps):
            layer.update(tokens[2 * step], tokens[2 * step + 1])
            if kind == "combined":
                layer.evict_lowest(torch.rand(args.batch, args.heads, layer.stored_tokens(), generator=g), 1)
        return 1000 * (time.perf_counter() - start) / args.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", nargs="+", default=["kivi", "combined"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    ms: dict[str, list[float]] = {kind: [] for kind in args.kinds}
    for _ in range(args.rounds):
        for kind in args.kinds:
            ms[kind].append(time_steps(kind, args))
    for kind, values in ms.items():
        print(f"{kind:9} {statistics.median(values):8.2f} ms/step per layer (min {min(values):.2f}, "
              f"max {max(values):.2f}; batch {args.batch}, context {args.context}, {args.steps} steps)")


if __name__ == "__main__":
    main()
