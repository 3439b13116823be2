"""Serving efficiency of one method: throughput, TTFT and decode latency per (batch, context), peak memory, and
the largest batch that fits a memory budget (EVALUATION.md, "Measuring memory and speed", "Why batch matters").

* :func:`prose_workload` -- ``B`` rows of exactly ``N`` tokens of prose from the local corpus (seeded windows of
  one tokenized stream), the same for every method; a smaller batch is a prefix of a larger one.
* :func:`measure_point` -- ``warmup`` untimed runs, then ``repeats`` timed ones of: prefill + compression of the
  batch (``ttft_s``), then exactly ``new_tokens`` greedy decode steps, EOS ignored (``decode_ms_per_step``,
  ``throughput_tok_s`` = B·new_tokens / decode time). Medians over the repeats, with min and max kept. Bytes are
  the cache's own (``nbytes``): ``kv_bytes`` right after prefill, ``kv_bytes_peak`` over the decode steps.
* Peak memory (:class:`MemoryProbe`): ``cuda_max_allocated`` (reset before each run) on CUDA; on CPU
  ``rss_high_water``: the process's resident-set high-water mark (``VmHWM``), reset before each run through
  ``/proc/self/clear_refs`` where Linux allows it (``memory_reset: true``), else the process's lifetime peak
  (``memory_reset: false``). RSS counts the whole process -- weights, Python, the allocator's free pages -- so on
  CPU it is an approximate upper bound of what the point needs, never a cache measurement (``kv_bytes`` is).
* Max batch: :func:`derived_max_batch` (CPU: weights + measured cache bytes per sequence at context + new tokens
  against the budget; labelled ``derived``, activations not counted) and :func:`search_max_batch` (CUDA: the
  largest batch that runs without an out-of-memory error under the budget, by doubling then bisection,
  :func:`largest_fitting`; every OOM is caught and the memory freed).
* Roofline (:func:`with_floor`): each point's floor ms per decode step on this machine and the measured
  ``decode_ms_per_step`` as a multiple of it (:mod:`kvbench.eval.roofline`).
"""

from __future__ import annotations

import gc
import math
import random
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from kvbench.cache.accounting import cache_nbytes, full_cache_nbytes
from kvbench.eval import roofline

GIB = 1 << 30
#: Where Linux lets a process reset its own RSS high-water mark (write "5"), and read it (VmHWM).
CLEAR_REFS, STATUS = Path("/proc/self/clear_refs"), Path("/proc/self/status")


# -- workload ---------------------------------------------------------------------------------------------
def prose_workload(tokenizer, rows: int, length: int, seed: int = 0, source: str = "pydoc") -> list[list[int]]:
    """``rows`` windows of exactly ``length`` tokens of corpus prose, at seeded offsets of one tokenized stream
    (documents shuffled by ``seed``). Row ``i`` does not depend on ``rows``, so batch B is a prefix of batch 2B."""
    stream = _token_stream(tokenizer, source, seed, min_tokens=length + 1)
    if len(stream) < length:
        raise ValueError(f"the corpus {source!r} holds {len(stream)} tokens, fewer than one {length}-token row")
    picker = random.Random(f"{seed}:{length}")
    return [stream[start:start + length] for start in (picker.randrange(len(stream) - length + 1) for _ in range(rows))]


_STREAMS: dict = {}


def _token_stream(tokenizer, source: str, seed: int, min_tokens: int) -> list[int]:
    from kvbench.corpus import load_texts

    key = (id(tokenizer), source, seed)
    if key not in _STREAMS:
        docs = load_texts(source, split="all")
        random.Random(seed).shuffle(docs)
        text = "\n\n".join(docs)
        _STREAMS.clear()
        _STREAMS[key] = tokenizer(text, add_special_tokens=False)["input_ids"]
    stream = _STREAMS[key]
    while len(stream) < min_tokens and stream:  # a short corpus: repeat it (prose still, never padding)
        stream = stream + stream
    return stream


# -- memory -----------------------------------------------------------------------------------------------
class MemoryProbe:
    """Peak memory of one run: ``reset()`` before it, ``peak()`` after. ``source`` names what is measured."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.source = "cuda_max_allocated" if self.cuda else "rss_high_water"
        self.resettable = self.cuda or _can_reset_rss()

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            CLEAR_REFS.write_text("5")

    def peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        return rss_high_water()


def _can_reset_rss() -> bool:
    try:
        CLEAR_REFS.write_text("5")
        return rss_high_water(from_status=True) > 0
    except OSError:
        return False


def rss_high_water(from_status: bool = False) -> int:
    """The process's peak resident set in bytes: ``VmHWM`` (resettable), else ``ru_maxrss`` (lifetime)."""
    try:
        match = re.search(r"^VmHWM:\s+(\d+)\s+kB", STATUS.read_text(), re.MULTILINE)
        if match:
            return int(match.group(1)) * 1024
    except OSError:
        pass
    if from_status:
        return 0
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def model_nbytes(model) -> int:
    """Bytes of the model's weights and buffers as loaded (after the method's surgery)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.element_size() * t.nelement() for t in {id(t): t for t in tensors}.values())


# -- one point --------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(protocol, rows: torch.Tensor, new_tokens: int) -> dict:
    """Prefill + compress ``rows`` ``[B, N]`` (all but the last token, which the first decode step feeds), then
    exactly ``new_tokens`` greedy steps, EOS ignored. Times and cache bytes of this one run."""
    device = protocol.device
    batch, length = rows.shape
    _sync(device)
    start = time.perf_counter()
    cache = protocol.prefill_batch(rows[:, :-1].tolist(), then=new_tokens)
    _sync(device)
    ttft = time.perf_counter() - start
    kv_bytes = cache_nbytes(cache)
    kv_peak, decode_s = kv_bytes, 0.0
    pending = rows[:, -1:].to(device)
    with torch.inference_mode():
        for _ in range(new_tokens):
            start = time.perf_counter()
            pending = protocol.forward_batch(cache, pending, last_logits_only=True)[:, -1].argmax(-1)[:, None]
            _sync(device)
            decode_s += time.perf_counter() - start
            kv_peak = max(kv_peak, cache_nbytes(cache))
    protocol.stats.decode_s += decode_s
    protocol.stats.decode_tokens += batch * new_tokens
    full = batch * full_cache_nbytes(protocol.reference_config, length - 1, protocol.dtype)
    del cache
    return {"ttft_s": ttft, "decode_s": decode_s, "kv_bytes": kv_bytes, "kv_bytes_peak": kv_peak, "kv_full_bytes": full}


def measure_point(protocol, rows: Sequence[Sequence[int]], new_tokens: int, repeats: int, warmup: int,
                  probe: MemoryProbe | None = None) -> dict:
    """The efficiency record's entry for one (batch, context): medians over ``repeats`` (min and max kept)."""
    ids = protocol.batch_ids(rows)
    batch, length = ids.shape
    probe = probe or MemoryProbe(protocol.device)
    for _ in range(warmup):
        run_once(protocol, ids, new_tokens)
    runs, peaks = [], []
    for _ in range(repeats):
        gc.collect()
        probe.reset()
        runs.append(run_once(protocol, ids, new_tokens))
        peaks.append(probe.peak())
    point = {"batch_size": batch, "context_length": length, "new_tokens": new_tokens, "repeats": repeats}
    series = {
        "ttft_s": [r["ttft_s"] for r in runs],
        "decode_ms_per_step": [1000 * r["decode_s"] / new_tokens for r in runs],
        "throughput_tok_s": [batch * new_tokens / r["decode_s"] for r in runs],
    }
    for name, values in series.items():
        point[name] = statistics.median(values)
        point[f"{name}_min"], point[f"{name}_max"] = min(values), max(values)
    last = runs[-1]
    point.update(kv_bytes=last["kv_bytes"], kv_bytes_peak=max(r["kv_bytes_peak"] for r in runs),
                 kv_full_bytes=last["kv_full_bytes"], kv_ratio=last["kv_full_bytes"] / last["kv_bytes"],
                 peak_memory_bytes=max(peaks), memory_source=probe.source, memory_reset=probe.resettable)
    return point


def with_floor(point: dict, machine: dict, weights: dict, attention: int) -> dict:
    """``point`` with its roofline: ``step_bytes`` and ``step_flops`` of one decode step (the weights and the cache
    after prefill, each read once; attention over the cache's stored share of the context), ``floor_ms_per_step``,
    ``floor_bound`` (``memory`` or ``compute``) and ``floor_multiple`` = ``decode_ms_per_step / floor``.
    ``machine`` is :func:`roofline.measure_machine`'s, ``weights`` :func:`roofline.weight_profile`'s."""
    cached_tokens = (point["context_length"] - 1) * point["kv_bytes"] / point["kv_full_bytes"]
    cost = roofline.step_cost(point["batch_size"], weights["weight_bytes"], weights["matmul_params"],
                              point["kv_bytes"], cached_tokens, attention)
    floor = roofline.floor_ms(cost["step_bytes"], cost["step_flops"], machine["bandwidth_bytes_s"],
                              machine["matmul_flop_s"])
    return {**point, **cost, **floor, "floor_multiple": point["decode_ms_per_step"] / floor["floor_ms_per_step"]}


# -- max batch --------------------------------------------------------------------------------------------
def derived_max_batch(budget_gb: float, model_bytes: int, point: dict) -> dict:
    """Largest B with weights + B × (cache bytes per sequence at context + new tokens, measured) ≤ the budget.

    ``point`` is a measured point at the context of interest; its ``kv_bytes_peak`` (the cache after the last
    decode step) divided by its batch is the per-sequence cost. Activations and allocator overhead are not
    counted: the figure is an upper bound, labelled ``derived``."""
    per_sequence = point["kv_bytes_peak"] / point["batch_size"]
    free = budget_gb * GIB - model_bytes
    return {"budget_gb": budget_gb, "context_length": point["context_length"], "new_tokens": point["new_tokens"],
            "batch": max(0, math.floor(free / per_sequence)), "source": "derived",
            "bytes_per_sequence": per_sequence, "model_bytes": model_bytes}


def largest_fitting(fits: Callable[[int], bool], cap: int = 1 << 16) -> tuple[int, list[int]]:
    """``(largest B ≤ cap with fits(B), the batches tried)``: 1, 2, 4, ... until one fails, then bisection
    between the last that fit and the first that did not. 0 if even B = 1 does not fit. Assumes fitting is
    monotone in B (a larger batch never needs less memory)."""
    tried: list[int] = []

    def check(batch: int) -> bool:
        tried.append(batch)
        return fits(batch)

    if not check(1):
        return 0, tried
    good, bad = 1, None
    while bad is None:
        if good >= cap:
            return cap, tried
        nxt = min(2 * good, cap)
        if check(nxt):
            good = nxt
        else:
            bad = nxt
    while bad - good > 1:
        mid = (good + bad) // 2
        if check(mid):
            good = mid
        else:
            bad = mid
    return good, tried


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "this batch does not fit" on this torch build."""
    errors: list[type[BaseException]] = []
    if hasattr(torch.cuda, "OutOfMemoryError"):
        errors.append(torch.cuda.OutOfMemoryError)
    if hasattr(torch, "OutOfMemoryError"):
        errors.append(torch.OutOfMemoryError)
    return tuple(dict.fromkeys(errors)) or (RuntimeError,)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def search_max_batch(protocol, rows: Sequence[Sequence[int]], new_tokens: int, budget_gb: float,
                     cap: int = 1 << 12, oom: tuple[type[BaseException], ...] | None = None) -> dict:
    """CUDA: the largest batch of the workload's ``rows`` (cycled) that prefills and decodes ``new_tokens`` steps
    within ``budget_gb`` (the allocator is capped to the budget with ``set_per_process_memory_fraction``, weights
    included), found by :func:`largest_fitting`. Each OOM is caught and its memory freed before the next try."""
    device = protocol.device
    oom = oom or out_of_memory_errors()
    base = protocol.batch_ids(rows)
    capped = device.type == "cuda"
    if capped:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_gb * GIB / total), device)

    def fits(batch: int) -> bool:
        ids = base[torch.arange(batch) % base.shape[0]]
        try:
            run_once(protocol, ids, new_tokens)
            return True
        except oom:
            return False
        finally:
            free_memory(device)

    try:
        batch, tried = largest_fitting(fits, cap)
    finally:
        if capped:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    return {"budget_gb": budget_gb, "context_length": base.shape[1], "new_tokens": new_tokens, "batch": batch,
            "source": "search", "tried": tried, "cap": cap}
