"""The efficiency suite through a serving engine (issue 29): the identical workload -- the same token ids, batch
sizes, context lengths and new tokens as kvbench's own points -- sent to vLLM's offline ``LLM.generate`` in the
engine environment, and its figures put into the same record fields, labelled as the engine's.

What differs from kvbench's own measurement, and is said in the record: vLLM prefills all ``N`` context tokens and
samples the first new token there, so its decode steps are ``new_tokens - 1`` (kvbench feeds the last context token
in the first of ``new_tokens`` steps); ms per step and tok/s are per decode step either way. vLLM's figures come
from its own per-request timestamps within one ``generate`` call (:func:`~kvbench.engines.vllm_driver.batch_timings`). The cache bytes are
vLLM's block accounting (``kv_source: engine``), not tensors kvbench measured; the max batch is the engine's own:
the blocks its cache space holds ÷ the blocks one request needs (``source: engine_blocks``), with the cache space set
to the suite's memory budget minus the weights when a budget is given, so both sides fit the same total.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace

from kvbench.engines import vllm_launcher as vllm
from kvbench.engines.export import engine_model_dir
from kvbench.eval import efficiency as eff
from kvbench.results import EfficiencyPart

log = logging.getLogger(__name__)


def kv_space_gb(engine, budget_gb: float | None, model_bytes: int) -> float:
    """GiB for vLLM's KV cache: the suite's budget minus the weights (the same total as kvbench's max batch), else
    ``engine.kv_cache_space_gb``."""
    if budget_gb is None:
        return engine.kv_cache_space_gb
    return budget_gb - model_bytes / eff.GIB


def engine_run(plan, context, opts) -> Iterator[tuple[str, dict, EfficiencyPart]]:
    """Every point of ``plan`` through the engine in one subprocess, then ``(task, metrics, the record's part so
    far)`` per point and for the max batch (the suite makes them task results)."""
    protocol, engine = context.protocol, context.engine
    model_bytes = eff.model_nbytes(protocol.model)
    space = kv_space_gb(engine, opts.memory_budget_gb, model_bytes)
    engine = replace(engine, kv_cache_space_gb=space) if hasattr(engine, "__dataclass_fields__") else \
        _with(engine, kv_cache_space_gb=space)
    widest = max(b for _, b in plan["points"])
    lengths = sorted({n for n, _ in plan["points"]})
    workloads = {str(n): eff.prose_workload(context.tokenizer, widest, n, opts.seed, opts.corpus) for n in lengths}
    request = {"job": "efficiency", "model_dir": str(engine_model_dir(context.model_cfg)),
               "dtype": context.model_cfg.dtype, "max_model_len": max(lengths) + opts.new_tokens,
               "max_num_seqs": max(widest, 1), "seed": opts.seed, "new_tokens": opts.new_tokens,
               "repeats": opts.repeats, "warmup": opts.warmup, "workloads": workloads,
               "points": [{"context_length": n, "batch_size": b} for n, b in plan["points"]]}
    response = vllm.run_driver(engine, request)
    dtype_bytes = protocol.model.dtype.itemsize
    per_token = vllm.kv_bytes_per_token(protocol.reference_config, engine.kv_cache_dtype, dtype_bytes)
    full_per_token = vllm.kv_bytes_per_token(protocol.reference_config, "auto", dtype_bytes)
    points = vllm.engine_points(response, per_token, full_per_token)
    info = {**response["engine"], "kv_blocks": response.get("kv_blocks"), "block_size": response.get("block_size"),
            "kv_cache_space_gb": space, "decode_steps": "new_tokens - 1 (the prefill samples the first token)",
            "timing": "vLLM's per-request timestamps in one generate call: TTFT = first row queued -> last row's "
                      "first token; decode = -> last row's last token"}
    part = EfficiencyPart(workload={"corpus": opts.corpus, "seed": opts.seed, "new_tokens": opts.new_tokens,
                                    "repeats": opts.repeats, "warmup": opts.warmup, "eos": "ignored", "engine": info},
                          model_bytes=model_bytes, memory_source="engine", memory_reset=None)
    for index, point in enumerate(points):
        log.info("vLLM (%s KV) context %d, batch %d: %.1f tok/s, %.1f ms/step, TTFT %.2f s", engine.kv_cache_dtype,
                 point["context_length"], point["batch_size"], point["throughput_tok_s"],
                 point["decode_ms_per_step"], point["ttft_s"])
        yield (f"ctx{point['context_length']}_b{point['batch_size']}",
               {k: point[k] for k in ("throughput_tok_s", "decode_ms_per_step", "ttft_s")},
               replace(part, points=points[:index + 1]))
    found = response.get("max_batch") or {}
    if found.get("batch") is not None:
        max_batch = {**found, "budget_gb": opts.memory_budget_gb if opts.memory_budget_gb is not None else space,
                     "new_tokens": opts.new_tokens, "kv_cache_space_gb": space}
        yield "max_batch", {"batch": max_batch["batch"]}, replace(part, points=points, max_batch=max_batch)


def _with(node, **changes):
    """A copy of an OmegaConf engine node with ``changes`` (the runner passes the composed config)."""
    from omegaconf import OmegaConf

    copy = OmegaConf.create(OmegaConf.to_container(node))
    for key, value in changes.items():
        copy[key] = value
    return copy
