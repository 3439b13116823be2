"""Issue 11's acceptance benchmark: decode ms/step, TTFT and max batch of full, h2o, combined and minicache on
SmolLM2-135M, 2 CPU threads, batch 8, context 2048, 32 new tokens (EOS ignored).

Targets: h2o decode ms/step <= 0.8x full's, combined <= h2o's, minicache <= 1.1x full's; h2o TTFT <= 1.2x full's;
max batch / full's max batch within 10% of the measured compression ratio.

Each method is warmed up once at a small shape, then the methods take turns (round robin, ``--repeats`` rounds) so a change in the
machine's load hits them alike; medians are reported with min and max, beside the 1-minute load average.
The workload is the efficiency suite's (:func:`kvbench.eval.efficiency.prose_workload`).

    python benchmarks/efficiency_acceptance.py                   # the acceptance setting
    python benchmarks/efficiency_acceptance.py --profile h2o     # + where h2o's prefill time goes (torch profiler)
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

TARGETS = "h2o decode <= 0.8x full, combined <= h2o, minicache <= 1.1x full, h2o TTFT <= 1.2x full"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["full", "h2o", "combined", "minicache"],
                        help="method configs (conf/method/*.yaml)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget-gb", type=float, default=8.0, help="memory budget for the derived max batch")
    parser.add_argument("--profile", nargs="*", default=[], help="methods whose batched prefill to profile")
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
    for name in args.methods:
        method = build_method_from(compose_config([f"method={name}"]).method)
        applied = method.apply(copy.deepcopy(model), tokenizer)
        protocols[name] = CompressionProtocol(applied, method, model.config)
        eff.run_once(protocols[name], rows[:, :256], 2)  # warm-up at a small shape (the full one costs minutes)
        print(f"warmed up {name}", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in protocols}
    loads = []
    for round_ in range(args.repeats):
        for name, protocol in protocols.items():
            runs[name].append(eff.run_once(protocol, rows, args.new_tokens))
            loads.append(os.getloadavg()[0])
        print(f"round {round_ + 1}/{args.repeats} done (load {loads[-1]:.2f})", flush=True)

    summary = {}
    for name, done in runs.items():
        ttft = [r["ttft_s"] for r in done]
        ms = [1000 * r["decode_s"] / args.new_tokens for r in done]
        last = done[-1]
        weights = eff.model_nbytes(protocols[name].model)
        point = {"batch_size": args.batch, "context_length": args.context, "new_tokens": args.new_tokens,
                 "kv_bytes_peak": last["kv_bytes_peak"]}
        summary[name] = {"ttft_s": statistics.median(ttft), "ttft_range": [min(ttft), max(ttft)],
                         "decode_ms_per_step": statistics.median(ms), "decode_range": [min(ms), max(ms)],
                         "kv_ratio": last["kv_full_bytes"] / last["kv_bytes"],
                         "max_batch": eff.derived_max_batch(args.budget_gb, weights, point)["batch"]}
    full = summary.get("full")
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
        for name, s in summary.items():
            if name != "full":
                off = s["max_batch_vs_full"] / s["kv_ratio"] - 1
                checks.append((f"{name} max batch ratio {s['max_batch_vs_full']:.2f} vs KV ratio {s['kv_ratio']:.2f} "
                               f"({100 * off:+.1f}%) within 10%", abs(off) <= 0.10))
        for what, ok in checks:
            print(f"  {'PASS' if ok else 'MISS'}  {what}")
    for name in args.profile:
        profile_prefill(protocols[name], rows, name)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"args": vars(args), "load_start": load_start, "loads": loads, "summary": summary}, handle,
                      indent=2)


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
