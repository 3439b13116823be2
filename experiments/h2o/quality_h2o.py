"""Sanity check of H2O's quality on the bundled SmolLM2-135M: perplexity of a continuation decoded
token by token after a compressed context, for full, h2o (10% + 10%) and h2o_local (20% recent).

The paper's claim to reproduce in miniature: at the same 20% budget, heavy hitters + recent tokens
lose far less than recent tokens alone. Uses the evaluation protocol (kvbench.eval.protocol).

Run: ``python experiments/h2o/quality_h2o.py [--context 512] [--continuation 64] [--docs 2]``
"""

from __future__ import annotations

import argparse
import copy
import math


def main():
    import torch

    from kvbench.corpus import pydoc_documents
    from kvbench.eval.protocol import CompressionProtocol
    from kvbench.methods import build_method
    from kvbench.models import ModelConfig, load_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--continuation", type=int, default=64)
    parser.add_argument("--docs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tok = load_model(ModelConfig())
    need = args.context + args.continuation
    texts = [ids for ids in (tok(d).input_ids for d in pydoc_documents("eval")) if len(ids) >= need][: args.docs]
    methods = {"full": build_method("full"), "h2o": build_method("h2o"),
               "h2o_local": build_method("h2o", heavy_ratio=0.0, recent_ratio=0.2)}
    print(f"{len(texts)} documents, context {args.context} tokens, {args.continuation} tokens decoded one by one")
    for label, method in methods.items():
        protocol = CompressionProtocol(method.apply(copy.deepcopy(model), tok), method, model.config)
        nll = 0.0
        for ids in texts:
            nll -= protocol.stream_logprob(ids[: args.context], ids[args.context:need], chunk=1)
        stats = protocol.stats.summary()
        ppl = math.exp(nll / (len(texts) * args.continuation))
        print(f"{label:<10} perplexity {ppl:8.3f}   cache after prefill: "
              f"{stats['stored_bytes'] / stats['full_bytes']:.3f} of full")


if __name__ == "__main__":
    main()
