"""The roofline of a decode step on the machine that runs it: the absolute anchor of the efficiency tables
(issue 30, item 3; Williams, Waterman & Patterson 2009, "Roofline: an insightful visual performance model").

A ratio to ``full`` says nothing about whether ``full`` itself is near what the hardware allows. A decode step
must at least read every weight and the cache once (bytes / memory bandwidth) and do its matrix products
(FLOPs / matmul rate); whichever is larger is a floor no implementation can beat. The efficiency record keeps
that floor per point and ``decode_ms_per_step`` as a multiple of it.

* :func:`measure_machine` -- measured once per process and device (cached): the memory bandwidth, a copy of a
  buffer four times the last-level cache (256 MiB at least, 1 GiB on CUDA), best of several; and the matmul
  rate, a GEMM ``[M, hidden] @ [hidden, intermediate]`` in the model's dtype with ``M`` large enough to be
  compute-bound, best of several. CPU: ``time.perf_counter``; CUDA: ``torch.cuda`` events.
* :func:`step_cost` -- the bytes and FLOPs one decode step of the model needs at a (batch, cache) point.
* :func:`floor_ms` -- ``max(bytes / bandwidth, flops / rate)`` in milliseconds, and which bound it is.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

MIB = 1 << 20
#: Smallest copy buffer: well past the last-level cache of the machines kvbench runs on (CPU); 1 GiB on CUDA.
MIN_CPU_BUFFER, CUDA_BUFFER = 256 * MIB, 1024 * MIB
#: Rows of the GEMM: enough for the product to be compute-bound at any hidden size kvbench runs.
GEMM_ROWS = 512
_MEASURED: dict = {}


def last_level_cache_bytes() -> int:
    """The largest CPU cache Linux reports (``/sys/devices/system/cpu/cpu0/cache``), 0 if unknown."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = index.read_text().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=0)


class _Timer:
    """Seconds of ``fn()``: ``perf_counter`` on CPU, CUDA events (on the current stream) on a GPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.name = "cuda_events" if self.cuda else "perf_counter"

    def best(self, fn, repeats: int) -> float:
        fn()  # warm-up: first-touch page faults, kernel selection
        times = []
        for _ in range(repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
        return min(times)


def measure_bandwidth(device: torch.device, buffer_bytes: int | None = None, repeats: int = 5) -> dict:
    """Bytes per second of a copy (each byte read once and written once) of a buffer larger than the caches."""
    if buffer_bytes is None:
        buffer_bytes = CUDA_BUFFER if device.type == "cuda" else max(MIN_CPU_BUFFER, 4 * last_level_cache_bytes())
    src = torch.ones(buffer_bytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = _Timer(device).best(lambda: dst.copy_(src), repeats)
    return {"bandwidth_bytes_s": 2 * src.nbytes / seconds, "buffer_bytes": src.nbytes}


def measure_matmul_rate(device: torch.device, dtype: torch.dtype, hidden: int, intermediate: int,
                        rows: int = GEMM_ROWS, repeats: int = 5) -> dict:
    """FLOPs per second of ``[rows, hidden] @ [hidden, intermediate]`` (the model's MLP shape, its dtype)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, hidden, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(hidden, intermediate, generator=generator).to(device=device, dtype=dtype)
    out = torch.empty(rows, intermediate, device=device, dtype=dtype)
    with torch.inference_mode():
        seconds = _Timer(device).best(lambda: torch.matmul(a, b, out=out), repeats)
    return {"matmul_flop_s": 2 * rows * hidden * intermediate / seconds,
            "gemm_shape": [rows, hidden, intermediate], "gemm_dtype": str(dtype).removeprefix("torch.")}


def measure_machine(device: torch.device, dtype: torch.dtype, hidden: int, intermediate: int) -> dict:
    """The memory bandwidth and matmul rate of this machine, measured once per process for each (device, dtype,
    shape) and reused: every point of a run, and every run of a sweep in one process, shares the figures."""
    key = (str(device), dtype, hidden, intermediate, torch.get_num_threads())
    if key not in _MEASURED:
        figures = {**measure_bandwidth(device), **measure_matmul_rate(device, dtype, hidden, intermediate)}
        figures.update(timer=_Timer(device).name, threads=torch.get_num_threads())
        _MEASURED[key] = figures
    return dict(_MEASURED[key])


def model_shapes(model) -> tuple[int, int]:
    """``(hidden_size, intermediate_size)`` of a Hugging Face decoder's config."""
    config = model.config
    return int(config.hidden_size), int(getattr(config, "intermediate_size", None) or 4 * config.hidden_size)


def weight_profile(model) -> dict:
    """``weight_bytes``: the bytes a decode step reads from the weights (every parameter and buffer once, minus
    input embedding tables no linear layer shares: a step reads only its tokens' rows); ``matmul_params``: the
    weights of every linear layer (the LM head included), each multiplied once per token."""
    linear_weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    shared = {id(w) for w in linear_weights}
    embeddings = {id(m.weight): m.weight for m in model.modules()
                  if isinstance(m, torch.nn.Embedding) and id(m.weight) not in shared}
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()] if id(t) not in embeddings}
    return {"weight_bytes": sum(t.element_size() * t.nelement() for t in tensors.values()),
            "matmul_params": sum(w.nelement() for w in linear_weights)}


def attention_size(model) -> int:
    """``layers × query heads × head dim``: the attention FLOPs per cached token are four times this."""
    config = model.config
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return int(config.num_hidden_layers) * heads * head_dim


def step_cost(batch: int, weight_bytes: int, matmul_params: int, cache_bytes: int, cached_tokens: float,
              attention: int) -> dict:
    """Bytes and FLOPs of one decode step of ``batch`` sequences: the weights and the whole cache read once;
    ``2·params`` FLOPs per token for the linear layers and ``4·layers·heads·head_dim`` per cached token for
    attention (``QKᵀ`` and ``AV``). ``cached_tokens`` is per sequence."""
    flops = 2 * batch * matmul_params + 4 * batch * attention * cached_tokens
    return {"step_bytes": int(weight_bytes + cache_bytes), "step_flops": float(flops)}


def floor_ms(step_bytes: float, step_flops: float, bandwidth_bytes_s: float, matmul_flop_s: float) -> dict:
    """The roofline floor of a step in ms (``max(bytes / bandwidth, FLOPs / rate)``) and its ``bound``."""
    memory_ms, compute_ms = 1000 * step_bytes / bandwidth_bytes_s, 1000 * step_flops / matmul_flop_s
    return {"floor_ms_per_step": max(memory_ms, compute_ms),
            "floor_bound": "memory" if memory_ms >= compute_ms else "compute"}
