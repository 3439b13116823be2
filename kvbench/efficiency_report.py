"""The efficiency suite's part of a report: tables from the records' ``efficiency`` field, with the papers'
throughput claims beside the measured ratios (issue 11; PAPERS.md). Reads records only (the flat table of
:mod:`kvbench.records_frame`); the figure is :func:`kvbench.plots.plot_efficiency`.

* :func:`points_table` -- one row per (model, method, context, batch): TTFT, decode ms/step, throughput (medians
  with their min-max), the measured KV ratio, peak memory, and each figure relative to ``full`` at the same point;
  and the absolute anchor: the roofline floor of a decode step on the machine that ran it, and decode ms/step as
  a multiple of it (records written before the roofline show blanks there);
* :func:`max_batch_table` -- per method: the largest batch within the budget (``derived`` or ``search``), its
  ratio to full's, and the measured KV ratio it should track;
* :func:`claims_table` -- each paper's claim (compression → throughput) beside the same ratio measured here at
  the largest batch of the longest context both the method and full ran;
* :func:`markdown` -- the report's efficiency section built from those three.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from kvbench.results import short_params

#: The papers' serving claims (PAPERS.md): the method label measured against them, the setting, the compression
#: and the throughput ratio the paper reports.
CLAIMS = [
    {"paper": "H2O (Zhang et al. 2023)", "method": "h2o", "setting": "OPT-6.7B, A100, batch 24, 2048 + 2048 tokens",
     "paper_kv_ratio": 5.0, "paper_throughput_ratio": 918.9 / 494.1,
     "note": "918.9 vs 494.1 tok/s; the baseline is FlexGen, a 20% cache"},
    {"paper": "MiniCache (Liu et al. 2024)", "method": "minicache_kivi",
     "setting": "LLaMA-2-7B, A100, batch 128, ShareGPT", "paper_kv_ratio": 5.02, "paper_throughput_ratio": 5.0,
     "note": "about 5x throughput, 41% memory saved; MiniCache on 4-bit KIVI"},
    {"paper": "MiniCache (Liu et al. 2024)", "method": "minicache",
     "setting": "merging alone (no serving figure)", "paper_kv_ratio": 1.53, "paper_throughput_ratio": None,
     "note": "the paper's merging-only compression"},
    {"paper": "SVD-GQA (Yu et al. 2024)", "method": "svd_gqa",
     "setting": "LLaMA2-7B, A100, batch 1, the 2050th token after 2048", "paper_kv_ratio": 2.0,
     "paper_throughput_ratio": 13.41 / 8.05, "note": "32 -> 16 KV heads: 8.05 -> 13.41 tok/s (8 heads: 20.81, 2.59x)"},
]


def efficiency_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The complete records that carry efficiency points (a :func:`~kvbench.records_frame.load_records` frame),
    one row each."""
    if "efficiency" not in frame:
        return frame.iloc[0:0]
    return frame[(frame["status"] == "complete") & frame["efficiency"].notna()]


def _label(row) -> str:
    params = short_params(json.loads(row["label_params"] or "{}"))
    return row["label"] if not params else f"{row['label']} ({params})"


def points_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per measured point, with ratios against ``full``'s point of the same model, context and batch."""
    rows = []
    for _, record in efficiency_frame(frame).iterrows():
        eff = json.loads(record["efficiency"])
        engine_info = (eff.get("workload") or {}).get("engine") or {}
        engine = engine_info.get("name", "hf")
        for point in eff.get("points", []):
            if point.get("out_of_memory"):
                rows.append({"model": record["model"], "method": _label(record), "label": record["label"],
                             "context": point["context_length"], "batch": point["batch_size"], "out_of_memory": True})
                continue
            rows.append({
                "model": record["model"], "method": _label(record), "label": record["label"], "engine": engine,
                "context": point["context_length"], "batch": point["batch_size"], "new_tokens": point["new_tokens"],
                "ttft_s": point["ttft_s"], "ttft_s_min": point["ttft_s_min"], "ttft_s_max": point["ttft_s_max"],
                "decode_ms_per_step": point["decode_ms_per_step"],
                "decode_ms_per_step_min": point["decode_ms_per_step_min"],
                "decode_ms_per_step_max": point["decode_ms_per_step_max"],
                "throughput_tok_s": point["throughput_tok_s"], "kv_ratio": point.get("kv_ratio"),
                "kv_bytes": point.get("kv_bytes"), "peak_memory_bytes": point.get("peak_memory_bytes"),
                "memory_source": point.get("memory_source"), "out_of_memory": False,
                "floor_ms_per_step": point.get("floor_ms_per_step"), "floor_bound": point.get("floor_bound"),
                "floor_multiple": point.get("floor_multiple"),
                "device": record.get("device"), "load_avg_1m": record.get("load_avg_1m"),
                "threads": engine_info.get("threads", record.get("torch_threads")),
            })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    full = table[(table["label"] == "full") & ~table["out_of_memory"]].drop_duplicates(
        ["model", "context", "batch"], keep="last").set_index(["model", "context", "batch"])
    for column, name in (("throughput_tok_s", "throughput_vs_full"), ("decode_ms_per_step", "decode_vs_full"),
                         ("ttft_s", "ttft_vs_full")):
        table[name] = [row[column] / full.loc[key, column] if key in full.index and not row["out_of_memory"] else None
                       for key, (_, row) in zip(zip(table["model"], table["context"], table["batch"]), table.iterrows())]
    return table.sort_values(["model", "context", "batch", "label"], kind="stable").reset_index(drop=True)


def max_batch_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per method with a max-batch figure: the batch, its source, its ratio to full's and the KV ratio measured at
    that context (largest batch measured there): under a fixed budget the two should agree."""
    rows = []
    for _, record in efficiency_frame(frame).iterrows():
        eff = json.loads(record["efficiency"])
        found = eff.get("max_batch")
        if not found:
            continue
        at = [p for p in eff.get("points", []) if p.get("context_length") == found["context_length"]
              and not p.get("out_of_memory")]
        ratio = max(at, key=lambda p: p["batch_size"]).get("kv_ratio") if at else None
        rows.append({"model": record["model"], "method": _label(record), "label": record["label"],
                     "budget_gb": found["budget_gb"], "context": found["context_length"], "batch": found["batch"],
                     "source": found["source"], "kv_ratio": ratio})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    full = table[table["label"] == "full"].drop_duplicates(["model", "budget_gb", "context"], keep="last")
    full = full.set_index(["model", "budget_gb", "context"])["batch"]
    keys = list(zip(table["model"], table["budget_gb"], table["context"]))
    table["batch_vs_full"] = [b / full[k] if k in full.index and full[k] else None for k, b in zip(keys, table["batch"])]
    table["vs_kv_ratio"] = [None if pd.isna(v) or not r else v / r - 1
                            for v, r in zip(table["batch_vs_full"], table["kv_ratio"])]
    return table.sort_values(["model", "batch"], kind="stable").reset_index(drop=True)


def claims_table(points: pd.DataFrame) -> pd.DataFrame:
    """Each paper claim beside the ratio measured here: the method's KV ratio and throughput ÷ full's, at the
    largest batch of the longest context both ran (the regime the papers measured; named in ``measured_at``)."""
    rows = []
    for claim in CLAIMS:
        row = {k: claim[k] for k in ("paper", "method", "setting", "paper_kv_ratio", "paper_throughput_ratio", "note")}
        mine = points[(points["label"] == claim["method"]) & points["throughput_vs_full"].notna()] \
            if not points.empty else points
        if not mine.empty:
            best = mine.sort_values(["context", "batch"]).iloc[-1]
            row.update(measured_at=f"{best['model']}, context {best['context']}, batch {best['batch']}",
                       kv_ratio=best["kv_ratio"], throughput_ratio=best["throughput_vs_full"])
        rows.append(row)
    return pd.DataFrame(rows)


def format_number(value, digits: str = ".3g") -> str:
    """``value`` formatted, blank for None or NaN."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, digits)


def markdown(frame: pd.DataFrame) -> str:
    """The efficiency section of a report (empty when no record has efficiency points)."""
    points = points_table(frame)
    if points.empty:
        return ""
    shown = pd.DataFrame({
        "model": points["model"], "method": points["method"], "context": points["context"], "batch": points["batch"],
        "TTFT s [min, max]": [_range(r, "ttft_s") for _, r in points.iterrows()],
        "×full": points["ttft_vs_full"].map(format_number),
        "decode ms/step [min, max]": [_range(r, "decode_ms_per_step") for _, r in points.iterrows()],
        "×full ": points["decode_vs_full"].map(format_number),
        "floor ms/step": points.get("floor_ms_per_step", pd.Series(dtype=float)).map(format_number),
        "×floor": points.get("floor_multiple", pd.Series(dtype=float)).map(format_number),
        "bound": points.get("floor_bound", pd.Series(dtype=object)).fillna(""),
        "tok/s": points.get("throughput_tok_s", pd.Series(dtype=float)).map(format_number),
        "×full  ": points["throughput_vs_full"].map(format_number),
        "KV ratio": points.get("kv_ratio", pd.Series(dtype=float)).map(format_number),
        "peak memory MiB": points.get("peak_memory_bytes", pd.Series(dtype=float)).map(
            lambda v: "" if pd.isna(v) else f"{v / 2**20:.0f}"),
        "load": points.get("load_avg_1m", pd.Series(dtype=float)).map(format_number),
    })
    sources = sorted({s for s in points.get("memory_source", pd.Series(dtype=object)).dropna()})
    text = ["## Efficiency", "",
            "Per (context, batch): TTFT = prefill + compression of the batch; decode ms/step over exactly `new_tokens` "
            "greedy steps (EOS ignored); tok/s = batch × new_tokens / decode time. Medians over the repeats, "
            "[min, max] beside them; ×full = the same figure divided by `full`'s at the same point (decode and TTFT: "
            "lower is better, tok/s: higher). floor ms/step: the least a decode step can take on the machine that ran it, "
            "max(bytes / memory bandwidth, FLOPs / matmul rate), both measured in the run (the weights and the "
            "cache read once, the linear layers' and attention's FLOPs); ×floor = decode ms/step ÷ that floor (1 is "
            "the hardware's limit); bound: which of the two sets the floor. "
            "KV ratio: uncompressed bytes / bytes the cache held after prefill. "
            "load: the machine's 1-minute load average when the run started (methods run one after another: "
            "compare ratios only between rows measured under similar load). "
            f"Peak memory: {', '.join(sources) or 'n/a'}"
            + (" (CPU: the process's resident-set high-water mark, reset before each run: weights and Python "
               "included, approximate)" if "rss_high_water" in sources else "") + ".", "",
            shown.to_markdown(index=False), ""]
    batches = max_batch_table(frame)
    if not batches.empty:
        sources = sorted(set(batches["source"]))
        shown = pd.DataFrame({"model": batches["model"], "method": batches["method"],
                              "budget GiB": batches["budget_gb"].map(format_number), "context": batches["context"],
                              "max batch": batches["batch"], "source": batches["source"],
                              "÷ full's": batches["batch_vs_full"].map(format_number), "KV ratio": batches["kv_ratio"].map(format_number),
                              "off by": batches["vs_kv_ratio"].map(lambda v: "" if v is None or pd.isna(v) else f"{100 * v:+.1f}%")})
        text += ["### Max batch within the memory budget", "",
                 "The largest batch at the longest context (+ new tokens) that fits the budget, weights included. "
                 + ("`derived`: weights + the cache bytes per sequence measured after the last decode step, against "
                    "the budget (activations not counted: an upper bound). " if "derived" in sources else "")
                 + ("`search`: the largest batch that ran without running out of memory under the budget (CUDA, "
                    "bisection). " if "search" in sources else "")
                 + "Under a fixed budget the batch should grow with the KV ratio: `off by` compares the two.", "",
                 shown.to_markdown(index=False), ""]
    text += engine_markdown(points, failed_engine_rows(frame))
    claims = claims_table(points)
    shown = pd.DataFrame({"paper": claims["paper"], "method": claims["method"], "paper setting": claims["setting"],
                          "paper KV ratio": claims["paper_kv_ratio"].map(format_number),
                          "paper throughput ratio": claims["paper_throughput_ratio"].map(format_number),
                          "measured at": claims.get("measured_at", pd.Series([None] * len(claims))).fillna("not run"),
                          "KV ratio": claims.get("kv_ratio", pd.Series([None] * len(claims))).map(format_number),
                          "throughput ÷ full": claims.get("throughput_ratio", pd.Series([None] * len(claims))).map(format_number),
                          "paper's note": claims["note"]})
    text += ["### The papers' claims beside the measured ratios", "",
             "Compression ratio → throughput ratio against the uncompressed baseline. The papers measured large "
             "models at large batch on GPUs; the measured column is this report's own setting (named), where the "
             "weights may still dominate decoding (EVALUATION.md, \"Why batch size matters\").", "",
             shown.to_markdown(index=False), ""]
    return "\n".join(text)


def engine_table(points: pd.DataFrame) -> pd.DataFrame:
    """At every (model, context, batch) where a serving engine ran (issue 29): each kvbench method's throughput
    beside the best engine row's, and whether it beats it."""
    if points.empty or "engine" not in points or not (points["engine"].fillna("hf") != "hf").any():
        return pd.DataFrame()
    ran = points[~points["out_of_memory"].astype(bool)].copy()
    ran["engine"] = ran["engine"].fillna("hf")
    rows = []
    for (model, context, batch), at in ran.groupby(["model", "context", "batch"], sort=True):
        engines, ours = at[at["engine"] != "hf"], at[at["engine"] == "hf"]
        if engines.empty or ours.empty:
            continue
        best = engines.loc[engines["throughput_tok_s"].idxmax()]
        for _, row in ours.iterrows():
            rows.append({"model": model, "context": context, "batch": batch, "method": row["method"],
                         "tok_s": row["throughput_tok_s"], "engine": best["method"],
                         "engine_tok_s": best["throughput_tok_s"],
                         "vs_engine": row["throughput_tok_s"] / best["throughput_tok_s"],
                         "engines": "; ".join(f"{r['method']}: {r['throughput_tok_s']:.3g} tok/s"
                                              for _, r in engines.iterrows())})
    return pd.DataFrame(rows)


def engine_kv_note(frame: pd.DataFrame) -> str:
    """The roll-up's words for engine rows' ``kv_ratio`` (issue 29): engine-reported, not measured."""
    if "engine" not in frame or not (frame["engine"].fillna("hf") != "hf").any():
        return ""
    labels = ", ".join(sorted(set(frame.loc[frame["engine"].fillna("hf") != "hf", "label"])))
    return (f"; engine rows ({labels}): engine-reported, the uncompressed bytes per token ÷ the bytes vLLM's cache "
            "gives one token (its block accounting), not measured from tensors")


def failed_engine_rows(frame: pd.DataFrame) -> list[str]:
    """``label: error`` of every engine row that did not complete (vllm_fp8 where the CPU lacks fp8 support): said
    beside the engine table, not left out of it."""
    if "engine" not in frame or "status" not in frame:
        return []
    failed = frame[(frame["engine"].fillna("hf") != "hf") & (frame["status"] != "complete")]
    return [f"{row['label']}: {row.get('error') or row['status']}" for _, row in failed.iterrows()]


def engine_markdown(points: pd.DataFrame, failed: list[str] = ()) -> list[str]:
    """The section that puts kvbench's methods beside the serving engine at the points both ran, with the plain
    sentence per point: does any kvbench method beat the engine there? Engine rows that failed are named."""
    table = engine_table(points)
    if table.empty:
        return [f"- Engine row that did not run: {line}" for line in failed] + ([""] if failed else [])
    shown = pd.DataFrame({"model": table["model"], "context": table["context"], "batch": table["batch"],
                          "method (kvbench, HF)": table["method"], "tok/s": table["tok_s"].map(format_number),
                          "engine rows": table["engines"], "÷ best engine": table["vs_engine"].map(format_number)})
    threads = ", ".join(str(t) for t in sorted({int(t) for t in points.get("threads", pd.Series(dtype=float)).dropna()}))
    text = ["### Beside a serving engine", "",
            "kvbench's methods (Hugging Face model, kvbench's cache) against what a user would run instead: the same "
            "token ids, batch, context and new tokens through vLLM's offline engine (`engine=vllm`, its own "
            "environment). vLLM's decode steps are `new_tokens - 1` (its prefill samples the first token), timed by "
            "its own per-request timestamps in one `generate` call; its cache bytes and max batch are its own block "
            f"accounting (engine-reported). CPU threads per row: {threads or 'not recorded'}. The rows ran one after "
            "another, each under the load in the table above (`load`): on a shared machine a difference smaller "
            "than the change that load makes, or one measured from a single run (n=1), is not a finding.", "",
            shown.to_markdown(index=False), ""]
    for (model, context, batch), at in table.groupby(["model", "context", "batch"], sort=True):
        winners = at[at["vs_engine"] > 1]
        pairs = "; ".join(f"{r['method']} (HF): {r['tok_s']:.3g} tok/s" for _, r in at.iterrows())
        verdict = (f"{', '.join(winners['method'])} beat{'s' if len(winners) == 1 else ''} the engine baseline here"
                   if not winners.empty else "no kvbench method beats the engine baseline here")
        text.append(f"- {model} at B={batch}, N={context}: {pairs}; {at.iloc[0]['engines']}. Plainly: {verdict}.")
    text += [f"- Engine row that did not run, at any point: {line}" for line in failed]
    return text + [""]


def _range(row, name: str) -> str:
    if row.get("out_of_memory"):
        return "out of memory"
    return f"{row[name]:.3g} [{row[f'{name}_min']:.3g}, {row[f'{name}_max']:.3g}]"
