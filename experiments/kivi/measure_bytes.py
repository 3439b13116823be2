"""KV-cache bytes of ``kivi``, ``rtn``, ``minicache`` and MiniCache + KIVI-4 at LLaMA-2-7B shapes, without the weights.

Bytes depend only on the KV tensors and the method, not on the model's weights, so this fills each method's own
cache (built by the method from a LLaMA-2-7B-shaped config: 32 layers, 32 KV heads, head dim 128, fp16) with
seeded random KV states, as one prefill forward of N tokens followed by the method's ``compress()``, and reads
``nbytes()`` -- exactly what the protocol measures after a prefill. Ratios = full bytes / stored bytes, beside
the MiniCache paper's (Liu et al. 2024, Table 1 and Sec. 5): merging alone 1.53×, KIVI-2 3.95×, RTN 3.21×,
MiniCache on 4-bit KIVI 5.02×.

Two readings the paper leaves open are printed beside the measurement:

* ``s,z fp32`` -- the same cache with its scales and zero points counted at 4 bytes instead of 2
  (kvbench stores them in the states' dtype, fp16 here);
* ``S = 8`` -- MiniCache merging from layer 8 instead of L/2 = 16 (the paper's 1.53× needs S ≈ 8 at γ = 0.05).

Run: ``python experiments/kivi/measure_bytes.py [--lengths 2048 4096] [--out reports/kivi_bytes.md]``
(about 2 minutes and 4 GB of memory on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch

from kvbench.cache.accounting import cache_nbytes, full_cache_nbytes
from kvbench.environment import script_provenance
from kvbench.methods import build_method

LLAMA2_7B = dict(num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, hidden_size=4096, head_dim=128,
                 intermediate_size=11008, vocab_size=32000)

#: (label, method name, params, the paper's ratio or None)
METHODS = [
    ("minicache (S = L/2 = 16)", "minicache", {}, 1.53),
    ("minicache (S = 8)", "minicache", {"start_layer": 8}, 1.53),
    ("kivi-2 (R = 128)", "kivi", {"nbits": 2}, 3.95),
    ("kivi-2 (R = 0)", "kivi", {"nbits": 2, "residual_length": 0}, 3.95),
    ("kivi-4 (R = 128)", "kivi", {"nbits": 4}, None),
    ("rtn-4", "rtn", {"nbits": 4}, 3.21),
    ("rtn-2", "rtn", {"nbits": 2}, None),
    ("minicache + kivi-4 (S = 16)", "combined", {"heads": None, "tokens": None, "bits": "kivi",
                                                  "bits_params": {"nbits": 4}}, 5.02),
    ("minicache + kivi-4 (S = 8)", "combined", {"heads": None, "tokens": None, "layers_params": {"start_layer": 8},
                                                 "bits": "kivi", "bits_params": {"nbits": 4}}, 5.02),
]


def scale_elements(cache) -> int:
    """Scale + zero-point elements the cache holds (quantized layers and quantized merged directions)."""
    streams = []
    for layer in cache.layers:
        if hasattr(layer, "key_stream"):
            streams += [layer.key_stream, layer.value_stream]
        elif getattr(layer, "role", 1) == 0 and hasattr(layer.pair.keys, "stream"):
            streams += [layer.pair.keys.stream, layer.pair.values.stream]
    return sum(t.nelement() for s in streams for t in (s.scale, s.zero) if t is not None)


@torch.inference_mode()
def fill(cache, n_layers: int, n_tokens: int, seed: int) -> None:
    """One prefill forward of ``n_tokens`` seeded random fp16 KV states per layer, then the cache's compression."""
    g = torch.Generator().manual_seed(seed)
    for layer in range(n_layers):
        k = torch.randn(1, LLAMA2_7B["num_key_value_heads"], n_tokens, LLAMA2_7B["head_dim"], generator=g).half()
        v = torch.randn(1, LLAMA2_7B["num_key_value_heads"], n_tokens, LLAMA2_7B["head_dim"], generator=g).half()
        cache.update(k, v, layer)
        if layer % 2:
            cache.compress()  # merge each MiniCache pair once both layers are in (what the next forward would do)
    cache.compress()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the table as markdown here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import LlamaConfig

    stand_in = SimpleNamespace(config=LlamaConfig(**LLAMA2_7B))  # methods build caches from the config only
    rows = []
    for label, name, params, paper in METHODS:
        method = build_method(name, **params)
        method.check_model(stand_in.config)
        cells = []
        for n in args.lengths:
            start = time.perf_counter()
            cache = method.new_cache(stand_in)
            fill(cache, LLAMA2_7B["num_hidden_layers"], n, args.seed)
            stored, full = cache_nbytes(cache), full_cache_nbytes(stand_in.config, n, torch.float16)
            cells.append((full / stored, full / (stored + 2 * scale_elements(cache))))
            del cache
            print(f"{label:<30} N={n}: {cells[-1][0]:.3f}x ({time.perf_counter() - start:.1f} s)", flush=True)
        rows.append((label, paper, cells))

    head = " | ".join(f"N={n} | N={n} s,z fp32" for n in args.lengths)
    lines = [f"| method | paper | {head} |", "|---|---|" + "---|---|" * len(args.lengths)]
    for label, paper, cells in rows:
        ratios = " | ".join(f"{a:.2f}× | {b:.2f}×" if abs(a - b) > 1e-9 else f"{a:.2f}× | (same)" for a, b in cells)
        lines.append(f"| {label} | {f'{paper:.2f}×' if paper else ''} | {ratios} |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        intro = ("KV-cache compression ratios (full fp16 bytes / bytes the cache holds) at LLaMA-2-7B shapes "
                 "(32 layers, 32 KV heads, head dim 128, fp16), measured from the caches' tensors after a prefill of "
                 f"N seeded random tokens (seed {args.seed}) and `compress()`; `python experiments/kivi/measure_bytes.py`. "
                 "Paper: MiniCache (Liu et al. 2024), Table 1 / Sec. 5. The fp32 column counts the same scales and "
                 "zero points at 4 bytes. Discussion: experiments/kivi/README.md.")
        with open(args.out, "w", encoding="utf-8") as f:
            provenance = script_provenance(f"seeded random fp16 KV (seed {args.seed}) at LLaMA-2-7B shapes, no model "
                                           "weights and no run record: the figures are this script's output")
            f.write(f"# Bytes at LLaMA-2-7B shapes: KIVI, RTN, MiniCache, MiniCache + KIVI-4\n\n{provenance}\n\n"
                    f"{intro}\n\n{table}\n")


if __name__ == "__main__":
    main()
