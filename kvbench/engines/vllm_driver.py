"""The script kvbench runs inside the engine environment (``.venv-vllm``, ``make engine-env``): it imports vLLM,
never kvbench, so kvbench's own environment keeps its lock (issue 29). Run as
``.venv-vllm/bin/python kvbench/engines/vllm_driver.py REQUEST.json RESPONSE.json``; the request and the
response are plain JSON, built and read by :mod:`kvbench.engines.vllm_launcher`.

Two jobs, both on token ids kvbench chose (``TokensPrompt``: vLLM never re-tokenizes):

* ``efficiency`` -- per (context, batch) point, the batch of prompts through vLLM's offline ``LLM.generate``
  with exactly ``new_tokens`` greedy tokens, EOS ignored, timed by vLLM's own per-request timestamps (engine core,
  ``disable_log_stats=False``) in that one call: TTFT is from the first row queued to the last row's first token
  (the prefill of the batch); decode time from there to the last row's last token, over ``new_tokens - 1`` steps;
  throughput is ``B * (new_tokens - 1) / decode time``, kvbench's definition (tokens of the decode steps / their
  time). One call, not a 1-token call subtracted from a whole one: on a loaded machine that difference can come out
  negative (at B=8, N=2048 the prefill is nearly all of the call). Medians over ``repeats`` with min and max. The max concurrency is vLLM's own KV block accounting: the blocks its cache
  holds (``kv_cache_memory_bytes``, what ``VLLM_CPU_KVCACHE_SPACE`` sets in whole GiB on CPU) divided by the blocks
  one request of context + new tokens needs.
* ``identity`` -- greedy continuations of the given prompts with each chosen token's log-probability, to compare
  with kvbench's ``full`` (:mod:`kvbench.engines.identity`).
* ``lm_eval`` -- lm-eval tasks through lm-eval's own ``vllm`` model (it builds the ``LLM``), one
  ``simple_evaluate`` per task as kvbench's lm_eval suite calls it, and vLLM's KV block accounting
  (:mod:`kvbench.engines.lm_eval_vllm` writes the tasks and reads the response).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time

# Run as a script, this file's directory (kvbench/engines) would be first on the path, and kvbench's modules there
# would shadow the engine's: the engine environment imports only from its own site-packages.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)


def _llm(request: dict):
    from vllm import LLM

    kwargs = dict(model=request["model_dir"], dtype=request.get("dtype", "float32"),
                  kv_cache_dtype=request.get("kv_cache_dtype", "auto"), max_model_len=request["max_model_len"],
                  seed=request.get("seed", 0), enforce_eager=request.get("enforce_eager", True),
                  max_num_seqs=request.get("max_num_seqs", 256), skip_tokenizer_init=False,
                  # every run must prefill: with prefix caching a repeat would reuse the previous run's blocks
                  enable_prefix_caching=False,
                  disable_log_stats=False)  # the per-request timestamps measure_point reads
    if request.get("kv_cache_memory_bytes"):  # the cache's size, exactly (what VLLM_CPU_KVCACHE_SPACE sets in GiB)
        kwargs["kv_cache_memory_bytes"] = int(request["kv_cache_memory_bytes"])
    if request.get("max_num_batched_tokens"):
        kwargs["max_num_batched_tokens"] = request["max_num_batched_tokens"]
    return LLM(**kwargs)


def _kv_blocks(llm) -> tuple[int | None, int | None]:
    """(blocks in vLLM's KV cache, tokens per block): its own accounting, as set when the engine started."""
    config = getattr(llm.llm_engine, "vllm_config", None)
    cache = getattr(config, "cache_config", None)
    blocks = getattr(cache, "num_gpu_blocks", None) or getattr(cache, "num_cpu_blocks", None)
    return blocks, getattr(cache, "block_size", None)


def _prompts(rows):
    from vllm.inputs import TokensPrompt

    return [TokensPrompt(prompt_token_ids=list(row)) for row in rows]


def _timed_generate(llm, prompts, params) -> tuple[float, list]:
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return time.perf_counter() - start, outputs


def _median_range(values: list[float], name: str) -> dict:
    return {name: statistics.median(values), f"{name}_min": min(values), f"{name}_max": max(values)}


def batch_timings(outputs) -> tuple[float, float]:
    """(TTFT, decode seconds) of one batch from vLLM's per-request timestamps (engine-core clock): from the first
    row queued to the last row's first token, and from there to the last row's last token."""
    stats = [output.metrics for output in outputs]
    if any(s is None or not getattr(s, "first_token_ts", 0.0) for s in stats):
        raise RuntimeError("vLLM returned no per-request timestamps (RequestOutput.metrics): this vLLM does not "
                           "report them with disable_log_stats=False")
    start = min(s.queued_ts or s.scheduled_ts for s in stats)
    first = max(s.first_token_ts for s in stats)
    return first - start, max(s.last_token_ts for s in stats) - first


def measure_point(llm, rows: list[list[int]], new_tokens: int, repeats: int, warmup: int) -> dict:
    """One (context, batch) point: TTFT, decode ms/step and throughput, medians over ``repeats``."""
    from vllm import SamplingParams

    prompts = _prompts(rows)
    whole = SamplingParams(temperature=0.0, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True)
    ttfts, steps, rates = [], [], []
    for run in range(warmup + repeats):
        _, outputs = _timed_generate(llm, prompts, whole)
        produced = [len(o.outputs[0].token_ids) for o in outputs]
        if produced != [new_tokens] * len(rows):
            raise RuntimeError(f"vLLM produced {produced} tokens, not {new_tokens} per row")
        if run < warmup:
            continue
        ttft, decode = batch_timings(outputs)
        ttfts.append(ttft)
        steps.append(1000 * decode / max(new_tokens - 1, 1))
        rates.append(len(rows) * max(new_tokens - 1, 1) / decode if decode > 0 else float("nan"))
    return {"batch_size": len(rows), "context_length": len(rows[0]), "new_tokens": new_tokens,
            **_median_range(ttfts, "ttft_s"), **_median_range(steps, "decode_ms_per_step"),
            **_median_range(rates, "throughput_tok_s")}


def max_concurrency(blocks: int | None, block_size: int | None, tokens_per_request: int) -> int | None:
    """How many requests of ``tokens_per_request`` tokens vLLM's KV cache holds at once (whole blocks each)."""
    if not blocks or not block_size:
        return None
    return blocks // math.ceil(tokens_per_request / block_size)


def efficiency(llm, request: dict) -> dict:
    points = []
    for point in request["points"]:
        rows = request["workloads"][str(point["context_length"])][:point["batch_size"]]
        points.append(measure_point(llm, rows, request["new_tokens"], request["repeats"], request["warmup"]))
    blocks, block_size = _kv_blocks(llm)
    longest = max(int(n) for n in request["workloads"])
    return {"points": points, "kv_blocks": blocks, "block_size": block_size,
            "max_batch": {"context_length": longest, "source": "engine_blocks",
                          "batch": max_concurrency(blocks, block_size, longest + request["new_tokens"])}}


def identity(llm, request: dict) -> dict:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=request["new_tokens"], logprobs=0, ignore_eos=True)
    outputs = llm.generate(_prompts(request["prompts"]), params, use_tqdm=False)
    rows = []
    for output in outputs:
        completion = output.outputs[0]
        tokens = list(completion.token_ids)
        logprobs = [step[token].logprob for step, token in zip(completion.logprobs, tokens)]
        rows.append({"tokens": tokens, "logprobs": logprobs})
    return {"rows": rows}


def _engine_args(request: dict) -> dict:
    """``_llm``'s engine arguments, as lm-eval's ``vllm`` model passes them on to ``LLM``."""
    args = dict(pretrained=request["model_dir"], dtype=request.get("dtype", "float32"),
                kv_cache_dtype=request.get("kv_cache_dtype", "auto"), max_model_len=request["max_model_len"],
                seed=request.get("seed", 0), enforce_eager=True, enable_prefix_caching=False, batch_size="auto")
    if request.get("kv_cache_memory_bytes"):
        args["kv_cache_memory_bytes"] = int(request["kv_cache_memory_bytes"])
    return args


def _vllm_cpu_as_vllm() -> None:
    """lm-eval reads vLLM's version from the distribution named ``vllm`` (``importlib.metadata.version("vllm")``, at
    import); the CPU build installs as ``vllm-cpu``, the same package: that name is answered as vLLM itself reads it
    (``<vllm-cpu version>+cpu``, which is also how vLLM detects its CPU platform). Called before lm-eval's vllm
    model is imported (it binds ``version`` then)."""
    import importlib.metadata as metadata

    original = metadata.version
    if getattr(original, "vllm_cpu_aware", False):
        return

    def version(name: str) -> str:
        try:
            return original(name)
        except metadata.PackageNotFoundError:
            if name != "vllm":
                raise
            return original("vllm-cpu") + "+cpu"  # vLLM's own reading (platforms.vllm_version_matches_substr)

    version.vllm_cpu_aware = True
    metadata.version = version


def lm_eval_tasks(request: dict) -> dict:
    """Each task through lm-eval's ``vllm`` model: what ``simple_evaluate`` returns (results, samples, configs,
    higher_is_better), with the same seeds, limit, shots and generation overrides as kvbench's own run."""
    _vllm_cpu_as_vllm()
    import lm_eval
    from lm_eval import simple_evaluate
    from lm_eval.models.vllm_causallms import VLLM
    from lm_eval.tasks import TaskManager

    started = time.perf_counter()
    lm = VLLM(**_engine_args(request))
    startup = time.perf_counter() - started
    seed = request.get("seed", 0)
    manager = TaskManager(include_path=request["include_path"], include_defaults=request["include_defaults"],
                          metadata={"seed": seed})
    tasks = []
    for task in request["tasks"]:
        results = simple_evaluate(model=lm, tasks=[task], num_fewshot=request["num_fewshot"].get(task),
                                  limit=request.get("limit"), task_manager=manager, bootstrap_iters=0,
                                  log_samples=True, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                  fewshot_random_seed=seed, gen_kwargs=request.get("gen_kwargs"))
        tasks.append({key: results.get(key) for key in ("results", "samples", "configs", "higher_is_better")})
    blocks, block_size = _kv_blocks(lm.model)
    return {"tasks": tasks, "kv_blocks": blocks, "block_size": block_size, "lm_eval": lm_eval.__version__,
            "startup_s": startup}


def main(argv: list[str]) -> int:
    request_path, response_path = argv[1], argv[2]
    with open(request_path) as handle:
        request = json.load(handle)
    import torch
    import vllm

    started = time.perf_counter()
    if request["job"] == "lm_eval":  # lm-eval's vllm model builds the engine itself
        result = lm_eval_tasks(request)
        startup = result.pop("startup_s")
    else:
        llm = _llm(request)
        startup = time.perf_counter() - started
        result = {"efficiency": efficiency, "identity": identity}[request["job"]](llm, request)
    result["engine"] = {"name": "vllm", "version": vllm.__version__, "torch": torch.__version__,
                        "python": platform.python_version(), "kv_cache_dtype": request.get("kv_cache_dtype", "auto"),
                        "dtype": request.get("dtype"), "kv_cache_memory_bytes": request.get("kv_cache_memory_bytes"),
                        "threads": int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()),
                        "startup_s": startup}
    with open(response_path, "w") as handle:
        json.dump(result, handle, default=str)  # lm-eval's configs hold functions: their names are enough
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
