"""Data-parallel evaluation inside one job: ``accelerate launch -m kvbench ...`` (EVALUATION.md).

Every rank holds the whole model with the method applied; lm-eval splits the requests of each task over
the ranks and gathers the per-sample results to rank 0, which alone scores them, writes the record and
logs to W&B. The cache measurements are combined here: bytes and token counts are *sums* over the ranks
(the same requests, measured once each, as in a single process), peaks are the *maximum* over ranks, and
times are summed too, so ``prefill_tok_s`` and ``decode_tok_s`` stay per-process throughputs comparable
with a single-process run (the wall time of the job is rank 0's).

Ranks come from the launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``): on GPUs
``accelerate launch --multi_gpu --num_processes N -m kvbench ...``; on CPU ``torchrun --nproc_per_node N -m
kvbench ...`` (accelerate's own launcher runs one CPU process unless MPI is set up), where accelerate uses
the gloo backend, which is how the tests check that two processes give one process's results.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import fields

from kvbench.eval.protocol import ProtocolStats

_ACCELERATOR = None


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def accelerator():
    """The job's ``accelerate.Accelerator`` (it sets up the process group), created once."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        import torch
        from accelerate import Accelerator

        # without a GPU, accelerate sets up the CPU process group (gloo) only when asked for the CPU
        _ACCELERATOR = Accelerator(cpu=not torch.cuda.is_available())
        atexit.register(_destroy_process_group)
    return _ACCELERATOR


def _destroy_process_group() -> None:
    """Tear the process group down while the interpreter is alive: a gloo group left to interpreter finalization
    can abort the process (SIGABRT, "terminate called without an active exception") after its work is done."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def combined_stats(stats: ProtocolStats) -> ProtocolStats:
    """Every rank's measurements combined on every rank: sums, and maxima for the peaks."""
    if world_size() <= 1:
        return stats
    import torch.distributed as dist

    accelerator()
    everyone: list = [None] * world_size()
    dist.all_gather_object(everyone, stats)
    out = ProtocolStats()
    for f in fields(ProtocolStats):
        values = [getattr(s, f.name) for s in everyone]
        if isinstance(values[0], dict):  # counters (e.g. notes): summed key by key
            merged: dict = {}
            for value in values:
                for key, count in value.items():
                    merged[key] = merged.get(key, 0) + count
            setattr(out, f.name, merged)
        else:
            setattr(out, f.name, max(values) if f.name.startswith("peak_") else sum(values))
    peak_owner = max(everyone, key=lambda s: s.peak_stored_bytes)
    out.peak_full_bytes = peak_owner.peak_full_bytes
    return out
