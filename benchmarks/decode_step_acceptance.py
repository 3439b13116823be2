"""Issue 30's decode acceptance, feasible on a loaded machine: decode ms/step of kvbench's ``full`` (preallocated
cache), ``h2o`` (20%) and ``streaming_llm`` (same budget) against plain transformers ``generate()`` with
``StaticCache``, at batch 8, a 2048-token context, 32 new tokens, 2 threads.

Why a separate script: :mod:`benchmarks.efficiency_acceptance` (the same comparison with real prefills) needs a
batch-8 × 2048-token prefill per method and round -- minutes each on 2 idle cores, far more on a shared, loaded
machine. A decode step's cost does not depend on the values in the cache, only on its shapes and on the method's
code path, so here each cache is *filled* instead of prefilled: random keys and values for the context's first
N − 1 tokens go through the cache's own ``update`` (and, for a layer that asks for attention scores, random
column sums through its ``receive_scores``), then the method's ``compress`` -- the state a real prefill leaves,
shape for shape: ``full`` reserves and holds N − 1 + 32 slots, ``h2o``/``streaming_llm`` evict to their budget by
the same gather. transformers' ``StaticCache`` is filled by its ``update`` the same way, and ``generate()`` then
feeds only the context's last token (it starts at the cache's length). Every decode step after that is the real
one: the model's forward, scored attention, in-place eviction, sampling by argmax (EOS ignored).

Entries take turns (``--repeats`` interleaved rounds, medians with min-max, load beside them).
``--profile h2o`` then profiles ``--profile-steps`` h2o decode steps at each of ``--profile-contexts``, so the
ops whose cost grows with the cache show themselves.

    python benchmarks/decode_step_acceptance.py --repeats 3 --profile h2o
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TRANSFORMERS = "transformers"


def fill(cache, config, batch: int, tokens: int, seed: int = 0) -> None:
    """Random keys/values of ``tokens`` tokens into every layer through ``cache.update``; a layer awaiting attention
    scores gets random column sums (what its prefill's attention would have delivered)."""
    import torch

    from kvbench.cache import attention_scores

    text = config.get_text_config(decoder=True)
    heads, dim = text.num_key_value_heads, text.hidden_size // text.num_attention_heads
    generator = torch.Generator().manual_seed(seed)
    for index in range(text.num_hidden_layers):
        keys = torch.randn(batch, heads, tokens, dim, generator=generator)
        cache.update(keys, torch.randn(batch, heads, tokens, dim, generator=generator), index)
        layer = cache.layers[index]
        if getattr(layer, "awaiting_scores", False):
            attention_scores._pending.request = None
            layer.receive_scores(torch.rand(batch, heads, layer.stored_tokens(), generator=generator))


def kvbench_run(protocol, rows, new_tokens: int) -> dict:
    """Fill a fresh cache of the method with the context's first N − 1 tokens, then ``new_tokens`` greedy steps
    through :meth:`CompressionProtocol.forward_batch` (the suite's decode loop), timed."""
    import torch

    batch, length = rows.shape
    cache = protocol.method.new_cache(protocol.model)
    cache.reserve(length - 1 + new_tokens)
    with torch.inference_mode():
        fill(cache, protocol.model.config, batch, length - 1)
        protocol.method.compress(cache)
        pending, decode_s = rows[:, -1:], 0.0
        for _ in range(new_tokens):
            start = time.perf_counter()
            pending = protocol.forward_batch(cache, pending, last_logits_only=True)[:, -1].argmax(-1)[:, None]
            decode_s += time.perf_counter() - start
    return {"decode_s": decode_s, "stored": cache.stored_tokens(0), "bytes": cache.nbytes()}


def transformers_run(model, rows, new_tokens: int) -> dict:
    """``StaticCache`` filled with the first N − 1 tokens, then ``generate()`` of ``new_tokens`` + 1 tokens: the
    first step feeds the context's last token, the ``new_tokens`` after it are timed (a stopping criterion stamps
    each step)."""
    import torch
    from transformers import StaticCache, StoppingCriteria, StoppingCriteriaList

    batch, length = rows.shape
    stamps: list[float] = []

    class Stamp(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stamps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    cache = StaticCache(config=model.config, max_cache_len=length + new_tokens + 1)
    with torch.inference_mode():
        fill(cache, model.config, batch, length - 1)
        out = model.generate(rows, attention_mask=torch.ones_like(rows), cache=cache, max_new_tokens=new_tokens + 1,
                             min_new_tokens=new_tokens + 1, do_sample=False, disable_compile=True,
                             stopping_criteria=StoppingCriteriaList([Stamp()]), pad_token_id=0)
    assert out.shape[1] == length + new_tokens + 1 and len(stamps) == new_tokens + 1
    return {"decode_s": stamps[-1] - stamps[0], "stored": length + new_tokens + 1, "bytes": 0}


def profile_decode(protocol, tokenizer, batch: int, contexts: list[int], steps: int, top: int = 14) -> None:
    """``steps`` decode steps under the torch profiler at each cache length: per op, the time per step."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from kvbench.eval.efficiency import prose_workload

    for context in contexts:
        rows = torch.tensor(prose_workload(tokenizer, batch, context))
        cache = protocol.method.new_cache(protocol.model)
        with torch.inference_mode():
            fill(cache, protocol.model.config, batch, context - 1)
            protocol.method.compress(cache)
            pending = protocol.forward_batch(cache, rows[:, -1:], last_logits_only=True)[:, -1].argmax(-1)[:, None]
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(steps):
                    pending = protocol.forward_batch(cache, pending, last_logits_only=True)[:, -1].argmax(-1)[:, None]
        print(f"\nprofile: {steps} {protocol.method.name} decode steps, batch {batch}, context {context}, "
              f"{cache.stored_tokens(0)} tokens stored per head (load {os.getloadavg()[0]:.1f})")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["full", "h2o", "streaming_llm", TRANSFORMERS])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", nargs="*", default=[], help="methods whose decode steps to profile")
    parser.add_argument("--profile-contexts", nargs="+", type=int, default=[512, 2048])
    parser.add_argument("--profile-steps", type=int, default=4)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from kvbench.compose import compose_config
    from kvbench.eval.efficiency import prose_workload
    from kvbench.eval.protocol import CompressionProtocol
    from kvbench.models import ModelConfig, load_model
    from kvbench.validation import build_method_from

    model, tokenizer = load_model(ModelConfig())
    rows = torch.tensor(prose_workload(tokenizer, args.batch, args.context))
    runners, protocols = {}, {}
    for name in args.methods:
        if name == TRANSFORMERS:
            runners[name] = lambda rows, new: transformers_run(model, rows, new)
        else:
            method = build_method_from(compose_config([f"method={name}"]).method)
            protocols[name] = CompressionProtocol(method.apply(copy.deepcopy(model), tokenizer), method, model.config)
            runners[name] = lambda rows, new, protocol=protocols[name]: kvbench_run(protocol, rows, new)
        runners[name](rows[:, :128], 2)  # warm-up at a small shape
    ms: dict[str, list[float]] = {name: [] for name in runners}
    loads, last = [], {}
    for round_ in range(args.repeats):
        for name, run in runners.items():
            last[name] = run(rows, args.new_tokens)
            ms[name].append(1000 * last[name]["decode_s"] / args.new_tokens)
            loads.append(os.getloadavg()[0])
        print(f"round {round_ + 1}/{args.repeats}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in ms.items())
              + f" ms/step (load {loads[-1]:.1f})", flush=True)
    report(args, ms, last, loads)
    for name in args.profile:
        profile_decode(protocols[name], tokenizer, args.batch, args.profile_contexts, args.profile_steps)


def report(args, ms: dict, last: dict, loads: list) -> None:
    """The medians, each entry's ratio to ``full`` and to transformers, and the targets."""
    if not loads:
        return
    median = {name: statistics.median(v) for name, v in ms.items()}
    print(f"\nSmolLM2-135M float32, {args.threads} threads, batch {args.batch}, context {args.context} (filled), "
          f"{args.new_tokens} new tokens, {args.repeats} interleaved rounds; 1-min load {min(loads):.1f}-"
          f"{max(loads):.1f} (median {statistics.median(loads):.1f})")
    print(f"{'entry':14} {'stored/head':>11} {'decode ms/step (min-max)':>26} {'x full':>7} {'x transformers':>15}")
    for name, value in median.items():
        to_full = value / median["full"] if "full" in median else float("nan")
        to_hf = value / median[TRANSFORMERS] if TRANSFORMERS in median else float("nan")
        print(f"{name:14} {last[name]['stored']:11d} {value:10.1f} ({min(ms[name]):.1f}-{max(ms[name]):.1f})"
              f"{'':4} {to_full:7.2f} {to_hf:15.2f}")
    checks = [("h2o", "full", 0.8), ("streaming_llm", "full", 0.75), ("full", TRANSFORMERS, 1.1)]
    for name, base, target in checks:
        if name in median and base in median:
            ratio = median[name] / median[base]
            print(f"  {'PASS' if ratio <= target else 'MISS'}  {name} decode {ratio:.2f}x {base} (target <= {target}x)")


if __name__ == "__main__":
    main()
