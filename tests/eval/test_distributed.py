"""The data-parallel helpers: the process group is gone before the interpreter finalizes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest


@pytest.mark.slow  # a process of its own: what happens at interpreter exit
def test_the_process_group_is_destroyed_by_the_exit_handlers():
    # A gloo group left to interpreter finalization can abort a finished rank (SIGABRT): kvbench tears it down
    # in an exit handler. One process stands for a rank of a torchrun job.
    script = textwrap.dedent("""
        import atexit
        import torch.distributed as dist
        from kvbench.eval import distributed
        distributed.accelerator()
        print("initialized", dist.is_initialized())
        atexit._run_exitfuncs()
        print("after exit handlers", dist.is_initialized())
    """)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    env = dict(os.environ, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-2:] == ["initialized True", "after exit handlers False"]
