"""How similar are adjacent layers' keys and values? (MiniCache's motivating observation, Fig. 1/2.)

Runs the bundled model over a few held-out Python-docs documents, and for every adjacent layer pair
(l, l+1) reports the mean per-token cosine similarity of K and of V (all KV heads concatenated, as
MiniCache merges them), plus the relative error of a SLERP merge at t = 0.6 with no retention. Then,
for every candidate ``start_layer`` S, the averages over the pairs MiniCache would merge from S and the
resulting cache size. Writes a markdown table and a plot under ``reports/``.

    python experiments/minicache_similarity/similarity.py [--docs 8] [--tokens 512] [--out reports]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import DynamicCache

from kvbench.cache.merging import restore, slerp_merge
from kvbench.cache.minicache import merged_pairs
from kvbench.corpus import load_texts
from kvbench.environment import script_provenance
from kvbench.models import ModelConfig, load_model


def layer_kv(model, tokenizer, text: str, max_tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :max_tokens]
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids, cache=cache, use_cache=True)
    return [(layer.keys, layer.values) for layer in cache.layers]


def pair_stats(x_a: torch.Tensor, x_b: torch.Tensor, t: float) -> tuple[float, float]:
    """Mean per-token cosine similarity (heads concatenated) and relative SLERP-merge error of both layers."""
    a, b = x_a.float(), x_b.float()
    cos = torch.nn.functional.cosine_similarity(a.transpose(1, 2).flatten(2), b.transpose(1, 2).flatten(2), dim=-1)
    m = slerp_merge(a, b, t)
    err = 0.0
    for x, r in ((a, m.norm_a), (b, m.norm_b)):
        err += ((restore(m.direction, r) - x).norm(dim=(1, 3)) / x.norm(dim=(1, 3)).clamp_min(1e-12)).mean().item()
    return cos.mean().item(), err / 2


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=8, help="number of held-out pydoc documents")
    p.add_argument("--tokens", type=int, default=512, help="tokens per document (truncated)")
    p.add_argument("--min-tokens", type=int, default=128, help="skip documents shorter than this")
    p.add_argument("--t", type=float, default=0.6)
    p.add_argument("--gamma", type=float, default=0.05, help="retention used in the cache-size column")
    p.add_argument("--out", default="reports", help="directory for minicache_similarity.{md,png}")
    args = p.parse_args(argv)

    model, tokenizer = load_model(ModelConfig())
    cfg = model.config
    n_layers, h = cfg.num_hidden_layers, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    docs = [t for t in load_texts("pydoc", split="eval") if len(tokenizer(t).input_ids) >= args.min_tokens]
    docs = docs[: args.docs]
    sums = torch.zeros(n_layers - 1, 4)  # cos K, cos V, merge err K, merge err V
    n_tokens = 0
    for text in docs:
        kv = layer_kv(model, tokenizer, text, args.tokens)
        n_tokens += kv[0][0].shape[-2]
        for layer in range(n_layers - 1):
            ck, ek = pair_stats(kv[layer][0], kv[layer + 1][0], args.t)
            cv, ev = pair_stats(kv[layer][1], kv[layer + 1][1], args.t)
            sums[layer] += torch.tensor([ck, cv, ek, ev])
    stats = sums / len(docs)

    lines = [
        "# Adjacent-layer KV similarity on the bundled model (MiniCache's observation)",
        "",
        script_provenance(f"{len(docs)} held-out pydoc documents (`kvbench.corpus.load_texts('pydoc', split='eval')`); "
                          "no run record: the figures are this script's output",
                          weights="GGUF Q4_1, dequantised to float32 (SmolLM2-135M-Instruct, bundled)"),
        "",
        f"Model: SmolLM2-135M-Instruct ({n_layers} layers, {h} KV heads × {d}). Data: {len(docs)} held-out pydoc "
        f"documents, ≤{args.tokens} tokens each ({n_tokens} tokens). Per token, all KV heads concatenated; "
        f"averaged over tokens, then documents. Merge error: ‖x̂ − x‖/‖x‖ of a SLERP merge at t = {args.t} with "
        "no retention, mean of both layers. Produced by `experiments/minicache_similarity/similarity.py`.",
        "",
        "| pair (l, l+1) | cos K | cos V | merge err K | merge err V |",
        "|---|---|---|---|---|",
    ]
    for layer in range(n_layers - 1):
        ck, cv, ek, ev = stats[layer].tolist()
        lines.append(f"| ({layer}, {layer + 1}) | {ck:.3f} | {cv:.3f} | {ek:.3f} | {ev:.3f} |")
    lines += [
        "",
        f"## Choosing `start_layer` (pairs merged from S: (S, S+1), (S+2, S+3), ...; γ = {args.gamma})",
        "",
        "Cache size relative to full: plain layers count 1, each merged layer 0.5 + 1/(h·d) + γ.",
        "",
        "| S | merged pairs | mean cos K | mean cos V | mean merge err K | mean merge err V | cache size |",
        "|---|---|---|---|---|---|---|",
    ]
    pair_ratio = 0.5 + 1 / (h * d) + args.gamma
    candidates = []
    for s in range(1, n_layers - 1):
        pairs = merged_pairs(n_layers, s)
        rows = torch.stack([stats[a] for a, _ in pairs]).mean(0).tolist()
        size = (n_layers - 2 * len(pairs) + 2 * len(pairs) * pair_ratio) / n_layers
        candidates.append((s, rows, size))
        lines.append(f"| {s}{' (L/2)' if s == n_layers // 2 else ''} | {len(pairs)} | {rows[0]:.3f} | {rows[1]:.3f} "
                     f"| {rows[2]:.3f} | {rows[3]:.3f} | {size:.3f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "minicache_similarity.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    plot(stats, candidates, n_layers, out / "minicache_similarity.png")
    print(f"\nwrote {out / 'minicache_similarity.md'} and {out / 'minicache_similarity.png'}")


def plot(stats: torch.Tensor, candidates, n_layers: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(n_layers - 1))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    ax1.plot(x, stats[:, 0], "o-", label="cos K")
    ax1.plot(x, stats[:, 1], "s-", label="cos V")
    ax1.set_xlabel("layer l (pair l, l+1)")
    ax1.set_ylabel("mean per-token cosine similarity")
    ax1.axvline(n_layers // 2, color="grey", ls=":", label="L/2 (default S)")
    ax1.set_title("Adjacent-layer similarity")
    ax1.grid(alpha=0.3)
    ax1.legend()
    ax1b = ax1.twinx()
    ax1b.plot(x, stats[:, 2], "--", color="C0", alpha=0.5)
    ax1b.plot(x, stats[:, 3], "--", color="C1", alpha=0.5)
    ax1b.set_ylabel("SLERP merge rel. error (dashed)")
    s = [c[0] for c in candidates]
    ax2.plot(s, [c[1][2] for c in candidates], "o-", label="merge err K")
    ax2.plot(s, [c[1][3] for c in candidates], "s-", label="merge err V")
    ax2.set_xlabel("start_layer S")
    ax2.set_ylabel("mean merge error over merged pairs")
    ax2b = ax2.twinx()
    ax2b.plot(s, [c[2] for c in candidates], "^-", color="C2", label="cache size (right)")
    ax2b.set_ylabel("cache size / full")
    ax2.set_title("Choosing start_layer")
    ax2.grid(alpha=0.3)
    lines = ax2.get_legend_handles_labels()
    lines2 = ax2b.get_legend_handles_labels()
    ax2.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
