"""RULER-style suite on the bundled SmolLM2-135M-Instruct, uncompressed (method=full).

Prints a table per task and length, and the wall time (the acceptance budget is 10
minutes on 2 CPU cores at the defaults of conf/suite/ruler.yaml).

    python experiments/ruler/run_ruler_full.py                       # conf/suite/ruler.yaml defaults
    python experiments/ruler/run_ruler_full.py --lengths 256 512 1024 --samples 10 --tasks niah_single passkey
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from kvbench.config import SuiteConfig  # noqa: E402
from kvbench.eval import synthetic  # noqa: E402
from kvbench.eval.protocol import CompressionProtocol  # noqa: E402
from kvbench.methods import build_method  # noqa: E402
from kvbench.models import ModelConfig, load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def default_suite() -> SuiteConfig:
    raw = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "suite" / "ruler.yaml"), resolve=True)
    raw.pop("defaults", None)
    return SuiteConfig(**raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="*", help="task names (default: the suite's)")
    parser.add_argument("--lengths", nargs="*", type=int, help="token lengths (default: the suite's)")
    parser.add_argument("--samples", type=int, help="samples per length (default: the suite's)")
    parser.add_argument("--method", default="full")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the budget is for 2 cores)")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("kvbench").setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    suite = default_suite()
    if args.tasks:
        suite.tasks = args.tasks
    if args.lengths:
        suite.options["lengths"] = args.lengths
    if args.samples:
        suite.options["samples_per_length"] = args.samples
    model_cfg = ModelConfig()
    synthetic.validate_suite(suite, model_cfg)

    start, cpu_start = time.perf_counter(), time.process_time()
    model, tokenizer = load_model(model_cfg)
    loaded, cpu_loaded = time.perf_counter(), time.process_time()
    protocol = CompressionProtocol(model, build_method(args.method))
    with tempfile.TemporaryDirectory() as out:
        metrics = synthetic.run_suite(protocol, tokenizer, model_cfg, suite, out)
    end, cpu_end = time.perf_counter(), time.process_time()

    lengths = suite.options.get("lengths")
    print(f"\nRULER-style suite, {model_cfg.name}, method={args.method}, "
          f"{suite.options.get('samples_per_length')} samples per length, torch threads={torch.get_num_threads()}")
    header = "| task | " + " | ".join(str(n) for n in lengths) + " |"
    print(header)
    print("|" + "---|" * (len(lengths) + 1))
    for task in suite.tasks:
        cells = []
        for n in lengths:
            m = metrics[f"{task}_{n}"]
            cell = f"{m['string_match_all']:.1f}"
            if "string_match_part" in m:
                cell += f" ({m['string_match_part']:.0f})"
            cells.append(cell)
        print(f"| {task} | " + " | ".join(cells) + " |")
    print("\nstring_match_all x100 (string_match_part in parentheses for multi-answer tasks)")
    stats = protocol.stats.summary()
    print(f"model load {loaded - start:.1f}s, evaluation {end - loaded:.1f}s, total {end - start:.1f}s; "
          f"prefill {stats['prefill_tok_s']:.0f} tok/s, decode {stats['decode_tok_s']:.1f} tok/s, "
          f"{stats['decode_tokens']} tokens decoded")
    # CPU time does not grow when other processes share the machine: with --threads 1 it bounds
    # the wall time of the same run on an otherwise idle machine with >= 1 free core.
    print(f"process CPU time: evaluation {cpu_end - cpu_loaded:.1f}s, total {cpu_end - cpu_start:.1f}s; "
          f"load average during the run: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
