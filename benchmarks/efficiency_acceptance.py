"""Issues 11 and 30's acceptance benchmark: decode ms/step, TTFT and max batch of kvbench methods on SmolLM2-135M,
2 CPU threads, batch 8, context 2048, 32 new tokens (EOS ignored), beside plain transformers.

Targets: h2o (20%) decode ms/step <= 0.8x full's, streaming_llm at the same budget <= 0.75x, combined <= h2o's,
minicache <= 1.1x full's; h2o TTFT <= 1.2x full's; max batch / full's max batch within 10% of the measured
compression ratio; and ``full`` (its default preallocated cache) <= 1.1x plain transformers: the row
``transformers`` is ``model.generate()`` on the same loaded model with ``cache_implementation="static"``
(transformers' ``StaticCache``), greedy, ``min_new_tokens`` so EOS is ignored; its decode time is taken between
the first and the last step (a stopping criterion stamps each step), so it covers the same 32 one-token steps.

Each method is warmed up once at a small shape, then the methods take turns (round robin, ``--repeats`` rounds) so a change in the
machine's load hits them alike; medians are reported with min and max, beside the 1-minute load average.
The workload is the efficiency suite's (:func:`kvbench.eval.efficiency.prose_workload`).

    python benchmarks/efficiency_acceptance.py                   # the acceptance setting
    python benchmarks/efficiency_acceptance.py --profile h2o     # + where h2o's prefill time goes (torch profiler)
    python benchmarks/efficiency_acceptance.py --decode-profile h2o --methods h2o --repeats 0
        # + one decode step of h2o under the profiler at two cache lengths: which ops grow with the cache
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TARGETS = ("h2o decode <= 0.8x full, streaming_llm decode <= 0.75x full, full decode <= 1.1x transformers, "
           "combined <= h2o, minicache <= 1.1x full, h2o TTFT <= 1.2x full")
#: The row of plain transformers (generate() with StaticCache), measured beside the kvbench methods.
TRANSFORMERS = "transformers"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["full", "h2o", "streaming_llm", TRANSFORMERS],
                        help=f"method configs (conf/method/*.yaml), and {TRANSFORMERS!r}: plain generate() + StaticCache")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget-gb", type=float, default=8.0, help="memory budget for the derived max batch")
    parser.add_argument("--profile", nargs="*", default=[], help="methods whose batched prefill to profile")
    parser.add_argument("--decode-profile", nargs="*", default=[],
                        help="methods whose decode step to profile at --profile-contexts")
    parser.add_argument("--profile-contexts", nargs="+", type=int, default=[512, 2048])
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from kvbench.compose import compose_config
    from kvbench.eval import efficiency as eff
    from kvbench.eval.protocol import CompressionProtocol
    from kvbench.models import ModelConfig, load_model
    from kvbench.validation import build_method_from

    load_start = os.getloadavg()[0]
    model, tokenizer = load_model(ModelConfig())
    rows = torch.tensor(eff.prose_workload(tokenizer, args.batch, args.context))
    protocols = {}
    runners = {}
    for name in args.methods:
        if name == TRANSFORMERS:
            runners[name] = lambda rows, new, model=model: run_transformers(model, rows, new)
        else:
            method = build_method_from(compose_config([f"method={name}"]).method)
            applied = method.apply(copy.deepcopy(model), tokenizer)
            protocols[name] = CompressionProtocol(applied, method, model.config)
            runners[name] = lambda rows, new, protocol=protocols[name]: eff.run_once(protocol, rows, new)
        runners[name](rows[:, :256], 2)  # warm-up at a small shape (the full one costs minutes)
        print(f"warmed up {name}", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in runners}
    loads = []
    for round_ in range(args.repeats):
        for name, run in runners.items():
            runs[name].append(run(rows, args.new_tokens))
            loads.append(os.getloadavg()[0])
            print(f"  {name}: {1000 * runs[name][-1]['decode_s'] / args.new_tokens:.1f} ms/step", flush=True)
        print(f"round {round_ + 1}/{args.repeats} done (load {loads[-1]:.2f})", flush=True)

    summary = {}
    for name, done in runs.items():
        if not done:
            continue
        ttft = [r["ttft_s"] for r in done]
        ms = [1000 * r["decode_s"] / args.new_tokens for r in done]
        last = done[-1]
        weights = eff.model_nbytes(protocols[name].model if name in protocols else model)
        point = {"batch_size": args.batch, "context_length": args.context, "new_tokens": args.new_tokens,
                 "kv_bytes_peak": last["kv_bytes_peak"]}
        summary[name] = {"ttft_s": statistics.median(ttft), "ttft_range": [min(ttft), max(ttft)],
                         "decode_ms_per_step": statistics.median(ms), "decode_range": [min(ms), max(ms)],
                         "kv_ratio": last["kv_full_bytes"] / last["kv_bytes"] if last["kv_bytes"] else float("nan"),
                         "max_batch": eff.derived_max_batch(args.budget_gb, weights, point)["batch"]
                         if last["kv_bytes"] else 0}
    full = summary.get("full")
    loads = loads or [os.getloadavg()[0]]
    print(f"\nSmolLM2-135M, {args.threads} threads, batch {args.batch}, context {args.context}, {args.new_tokens} new "
          f"tokens, {args.repeats} rounds; 1-min load average {load_start:.2f} at start, "
          f"{statistics.median(loads):.2f} median over the rounds")
    print(f"{'method':10} {'KV ratio':>8} {'TTFT s (min-max)':>22} {'xfull':>6} {'decode ms/step (min-max)':>28} "
          f"{'xfull':>6} {'max batch':>9} {'/full':>6}")
    for name, s in summary.items():
        ttft_x = s["ttft_s"] / full["ttft_s"] if full else float("nan")
        dec_x = s["decode_ms_per_step"] / full["decode_ms_per_step"] if full else float("nan")
        mb_x = s["max_batch"] / full["max_batch"] if full else float("nan")
        s.update(ttft_vs_full=ttft_x, decode_vs_full=dec_x, max_batch_vs_full=mb_x)
        print(f"{name:10} {s['kv_ratio']:8.2f} {s['ttft_s']:8.2f} ({s['ttft_range'][0]:.2f}-{s['ttft_range'][1]:.2f})"
              f" {ttft_x:6.2f} {s['decode_ms_per_step']:10.1f} ({s['decode_range'][0]:.1f}-{s['decode_range'][1]:.1f})"
              f"{'':6} {dec_x:6.2f} {s['max_batch']:9d} {mb_x:6.2f}")
    if full:
        checks = []
        if "h2o" in summary:
            checks += [("h2o decode <= 0.8x full", summary["h2o"]["decode_vs_full"] <= 0.8),
                       ("h2o TTFT <= 1.2x full", summary["h2o"]["ttft_vs_full"] <= 1.2)]
        if "combined" in summary and "h2o" in summary:
            checks.append(("combined decode <= h2o", summary["combined"]["decode_ms_per_step"]
                           <= summary["h2o"]["decode_ms_per_step"]))
        if "minicache" in summary:
            checks.append(("minicache decode <= 1.1x full", summary["minicache"]["decode_vs_full"] <= 1.1))
        if "streaming_llm" in summary:
            checks.append(("streaming_llm decode <= 0.75x full", summary["streaming_llm"]["decode_vs_full"] <= 0.75))
        if TRANSFORMERS in summary:
            versus = summary["full"]["decode_ms_per_step"] / summary[TRANSFORMERS]["decode_ms_per_step"]
            checks.append((f"full decode {versus:.2f}x transformers + StaticCache <= 1.1x", versus <= 1.1))
        for name, s in summary.items():
            if name not in ("full", TRANSFORMERS):
                off = s["max_batch_vs_full"] / s["kv_ratio"] - 1
                checks.append((f"{name} max batch ratio {s['max_batch_vs_full']:.2f} vs KV ratio {s['kv_ratio']:.2f} "
                               f"({100 * off:+.1f}%) within 10%", abs(off) <= 0.10))
        for what, ok in checks:
            print(f"  {'PASS' if ok else 'MISS'}  {what}")
    for name in args.profile:
        profile_prefill(protocols[name], rows, name)
    for name in args.decode_profile:
        for context in args.profile_contexts:
            profile_decode(protocols[name], torch.tensor(eff.prose_workload(tokenizer, args.batch, context)), name)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"args": vars(args), "load_start": load_start, "loads": loads, "summary": summary}, handle,
                      indent=2)


def run_transformers(model, rows, new_tokens: int) -> dict:
    """Plain transformers: ``generate()`` with ``StaticCache`` on ``rows`` [B, N], ``new_tokens`` + 1 greedy tokens
    (EOS ignored). The first token ends the prefill (TTFT); the ``new_tokens`` steps after it are the decode time,
    as kvbench's run feeds the prompt's last token in its first step."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    stamps: list[float] = []

    class Stamp(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stamps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(rows, attention_mask=torch.ones_like(rows), max_new_tokens=new_tokens + 1,
                       min_new_tokens=new_tokens + 1, do_sample=False, cache_implementation="static",
                       disable_compile=True, stopping_criteria=StoppingCriteriaList([Stamp()]), pad_token_id=0)
    return {"ttft_s": stamps[0] - start, "decode_s": stamps[-1] - stamps[0], "kv_bytes": 0, "kv_bytes_peak": 0,
            "kv_full_bytes": 0}


def profile_decode(protocol, rows, name: str, steps: int = 4, top: int = 12) -> None:
    """``steps`` decode steps of ``name`` after a prefill of ``rows`` under the torch profiler: per step, the ops
    that take its time (run at two cache lengths, the ops that grow with the cache show themselves)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cache = protocol.prefill_batch(rows[:, :-1].tolist(), then=steps + 1)
    pending = rows[:, -1:]
    with torch.inference_mode():
        pending = protocol.forward_batch(cache, pending, last_logits_only=True)[:, -1].argmax(-1)[:, None]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                pending = protocol.forward_batch(cache, pending, last_logits_only=True)[:, -1].argmax(-1)[:, None]
    print(f"\nprofile of {steps} {name} decode steps, batch {rows.shape[0]}, context {rows.shape[1]} "
          f"(load {os.getloadavg()[0]:.1f}):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def profile_prefill(protocol, rows, name: str, top: int = 15) -> None:
    """The batched prefill of ``name`` under the torch profiler: the ops that take its time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        protocol.prefill_batch(rows[:, :-1].tolist())
    print(f"\nprofile of {name}'s prefill ({time.perf_counter() - start:.2f} s under the profiler):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))
    del torch


if __name__ == "__main__":
    main()
