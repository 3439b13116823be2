"""Measured vs expected bytes of ``method=combined`` on the bundled SmolLM2-135M (METHODS.md §5).

Default combination (conf/method/combined.yaml): svd_gqa 3 -> 1 KV head, MiniCache from layer 15, H2O 10% heavy
+ 10% recent. For each context length (Python-docs prose, eval split) it prints each component's compression
ratio measured alone on the same tokens, their product (the expected ratio), the combined method's measured
ratio, and the gap. Two ways of measuring a component alone:

* ``runner`` -- :func:`kvbench.eval.component_ratios.component_ratios` on the converted model (what the runner
  records): layers and tokens run on the 1-KV-head model;
* ``original`` -- MiniCache and H2O each alone on the original 3-KV-head model (svd_gqa's ratio is the same).

Optionally (``--nll``) the mean next-token NLL of a continuation scored after each compressed context, per method.

Run: ``python experiments/combined/measure_bytes.py [--lengths 256 1024 2048] [--nll 64] [--threads 2]``
"""

from __future__ import annotations

import argparse
import copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--nll", type=int, default=0, help="continuation tokens to score per method (0 = skip)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from kvbench.corpus import pydoc_documents
    from kvbench.eval.component_ratios import component_ratios
    from kvbench.eval.protocol import CompressionProtocol
    from kvbench.methods import build_method
    from kvbench.models import ModelConfig, load_model

    torch.set_num_threads(args.threads)
    model, tok = load_model(ModelConfig())
    reference = copy.deepcopy(model.config)
    ids = tok("\n\n".join(pydoc_documents("eval")))["input_ids"]
    combined = build_method("combined")  # the YAML's defaults are the dataclass defaults
    converted = combined.apply(copy.deepcopy(model), tok)
    alone = {"minicache": (model, build_method("minicache")), "h2o": None}
    h2o = build_method("h2o")
    alone["h2o"] = (h2o.apply(copy.deepcopy(model)), h2o)

    def ratio_alone(name: str, tokens: list[int]) -> float:
        mdl, method = alone[name]
        protocol = CompressionProtocol(mdl, method, reference)
        protocol.prefill(tokens)
        return protocol.stats.full_bytes / protocol.stats.stored_bytes

    print(f"{'N':>5} | {'svd_gqa':>7} {'minicache':>9} {'h2o':>6} {'product':>8} | {'measured':>8} {'gap':>6} "
          f"| original model: {'minicache':>9} {'h2o':>6} {'product':>8} {'gap':>6}")
    for n in args.lengths:
        tokens = ids[:n]
        protocol = CompressionProtocol(converted, combined, reference)
        protocol.prefill(tokens)
        r = component_ratios(protocol)
        mc, hh = ratio_alone("minicache", tokens), ratio_alone("h2o", tokens)
        prod = r["svd_gqa"] * mc * hh
        print(f"{n:>5} | {r['svd_gqa']:>7.3f} {r['minicache']:>9.4f} {r['h2o']:>6.3f} {r['product']:>8.3f} | "
              f"{r['measured']:>8.3f} {r['measured'] / r['product'] - 1:>+6.1%} | {'':>15} {mc:>9.4f} {hh:>6.3f} "
              f"{prod:>8.3f} {r['measured'] / prod - 1:>+6.1%}")

    if args.nll:
        n = max(args.lengths)
        context, continuation = ids[:n], ids[n:n + args.nll]
        runs = {"full": (model, build_method("full")), "svd_gqa": (converted, build_method("full")),
                "minicache": alone["minicache"], "h2o": alone["h2o"], "combined": (converted, combined)}
        print(f"\nmean NLL of {len(continuation)} tokens after a {n}-token compressed context")
        for label, (mdl, method) in runs.items():
            protocol = CompressionProtocol(mdl, method, reference)
            [(logprob, _)] = protocol.score_continuations(context, [continuation])
            print(f"{label:>10}: {-logprob / len(continuation):.4f}   ratio {protocol.stats.summary()['ratio']:.2f}")


if __name__ == "__main__":
    main()
