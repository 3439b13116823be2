"""Time SVD-GQA calibration on the bundled SmolLM2-135M with the default corpus and settings.

Prints the wall time of the calibration itself (tokenising the corpus, the forwards,
covariances and eigen-decompositions), then of a second ``apply`` that loads the saved
projections. Run: ``python experiments/svd_gqa_init/bench_calibration.py [--threads 2]``.
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

    t0 = time.perf_counter()
    calibrate(model, tok, spec, groups=args.kv_heads, head_dim=model.config.head_dim)
    calib_s = time.perf_counter() - t0
    print(f"calibration ({spec.n_sequences} x {spec.seq_len} tokens of {spec.source!r}, "
          f"{torch.get_num_threads()} threads): {calib_s:.1f} s")

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
