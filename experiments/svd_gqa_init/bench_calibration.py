"""Time SVD-GQA calibration on the bundled SmolLM2-135M with the default corpus and settings.

Prints the wall time of the calibration itself (tokenising the corpus, the forwards,
covariances and eigen-decompositions), with the process CPU time and the machine's load
average (on a shared machine, CPU seconds / threads is what the wall time would be on
dedicated cores), then the time of a first ``apply`` (calibrates, saves) and of a second
one that loads the saved projections. Run: ``python experiments/svd_gqa_init/bench_calibration.py [--threads 2]``.
"""

import argparse
import copy
import os
import tempfile
import time

import torch

from kvbench.methods import build_method
from kvbench.models import ModelConfig, load_model
from kvbench.surgery.calibration import CalibrationSpec, calibrate

BUNDLED = ModelConfig()  # SmolLM2-135M-Instruct (bundled GGUF)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kv-heads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(BUNDLED)
    method = build_method("svd_gqa", kv_heads=args.kv_heads)
    spec = CalibrationSpec(method.calibration, method.calibration_sequences, method.calibration_length, method.seed)

    t0, cpu0 = time.perf_counter(), time.process_time()
    calibrate(model, tok, spec, groups=args.kv_heads, head_dim=model.config.head_dim)
    calib_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    print(f"calibration ({spec.n_sequences} x {spec.seq_len} tokens of {spec.source!r}, "
          f"{torch.get_num_threads()} threads): {calib_s:.1f} s wall, {cpu_s:.1f} s CPU "
          f"(= {cpu_s / torch.get_num_threads():.1f} s on {torch.get_num_threads()} dedicated cores); "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["KVBENCH_CACHE_DIR"] = tmp
        t0 = time.perf_counter()
        method.apply(copy.deepcopy(model), tok)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        method.apply(copy.deepcopy(model), tok)
        second = time.perf_counter() - t0
    print(f"apply, first run (calibrates + saves): {first:.1f} s; second run (loads from disk): {second:.1f} s")


if __name__ == "__main__":
    main()
