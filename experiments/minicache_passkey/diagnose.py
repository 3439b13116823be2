"""Why does MiniCache lose the passkey at S = 22 on the bundled model? (issue 23, item 7)

At S = 22 only layers 22-29 of 30 are merged and prose perplexity is near full, yet the start-layer sweep
(``experiment=paper_minicache_start_layer_mini``) scores 0/6 on ``kvbench_passkey``. This script tells a defect
from the model by four checks on the same prompts (the first ``--prompts`` of ``kvbench_passkey``, chat template,
question fed after the compressed context, as the harness does):

1. **Ablation, one pair at a time**: retrieval (greedy, 8 tokens) and the answer's teacher-forced log-probability
   for ``full``, MiniCache at S = 22, each single merged pair (22,23) ... (28,29) alone, and controls (γ = 1 must
   equal full; the ``range`` retention rule; larger γ).
2. **Implementation vs the formula**: the states MiniCache restores from its store are compared with METHODS.md §4
   computed here independently in float64 from the unmerged states (SLERP, norms, retained tokens put back).
3. **Retained set vs the paper's rule**: the tokens the cache keeps exactly equal the ⌈γN⌉ largest angular
   distances (``top_fraction``); the ``range`` rule's set is counted too, and whether the passkey's tokens are in
   either.
4. **Restored passkey states**: cosine of restored vs unmerged K and V at the passkey's token positions, beside
   the mean over all positions, per merged layer.

Writes ``reports/minicache_passkey.md`` with the command, commit, lock digest and figures.

    python experiments/minicache_passkey/diagnose.py [--prompts 6] [--out reports]
"""

from __future__ import annotations

import argparse
import copy
import math
import re
import time
from pathlib import Path

import torch

from kvbench.cache.merging import retained_count
from kvbench.cache.minicache import MergedPairCache, merged_pairs
from kvbench.cache.base import PlainLayer
from kvbench.environment import script_provenance
from kvbench.eval.prompts import chat_wrap
from kvbench.eval.protocol import CompressionProtocol
from kvbench.eval.tasks.quick import passkey_records
from kvbench.methods.base import build_method
from kvbench.models import ModelConfig, load_model

START = 22
MAX_NEW = 12  # kvbench_passkey's max_gen_toks (the sweep overrode it with 8)


class OnlyPairs:
    """A ``minicache`` method whose cache merges only the listed pairs (the others stay plain layers)."""

    def __init__(self, keep: list[tuple[int, int]], **params):
        self.inner = build_method("minicache", start_layer=START, **params)
        self.keep = keep
        self.name = "minicache"

    def new_cache(self, model) -> MergedPairCache:
        cache = self.inner.new_cache(model)
        kept = []
        for (a, b), pair in zip(merged_pairs(len(cache.layers), START), cache.pairs):
            if (a, b) in self.keep:
                kept.append(pair)
            else:
                cache.layers[a], cache.layers[b] = PlainLayer(), PlainLayer()
        cache.pairs = kept
        return cache

    def compress(self, cache) -> None:
        cache.compress()


def variants() -> dict[str, object]:
    pairs = merged_pairs(30, START)
    out: dict[str, object] = {"full": build_method("full"), "S=22 (8 layers merged)": OnlyPairs(pairs)}
    out.update({f"pair {a},{b} only": OnlyPairs([(a, b)]) for a, b in pairs})
    out["S=22, gamma=1 (control)"] = OnlyPairs(pairs, gamma=1.0)
    out["S=22, retention=range"] = OnlyPairs(pairs, retention="range")
    out["S=22, gamma=0.5"] = OnlyPairs(pairs, gamma=0.5)
    return out


def prompt_ids(tokenizer, record: dict):
    """(context ids, question ids, (ids of "The pass key is", of the key after it), passkey token positions in the
    context), split like
    ``kvbench/eval/lm.py``: the whole prompt tokenised, the question from its last occurrence on."""
    text = chat_wrap(tokenizer, f"{record['context']}\n\n{record['question']}")
    whole = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = whole.input_ids, whole.offset_mapping
    head = tokenizer(text[: text.rfind(record["question"])]).input_ids
    n = next((i for i, (x, y) in enumerate(zip(ids, head)) if x != y), min(len(ids), len(head)))
    spans = [(m.start(), m.end()) for m in re.finditer(record["answer"], text[: text.rfind(record["question"])])]
    key_pos = [i for i, (s, e) in enumerate(offsets[:n]) if any(s < e2 and e > s2 for s2, e2 in spans)]
    said = tokenizer(f"The pass key is {record['answer']}", add_special_tokens=False).input_ids
    prefix = tokenizer("The pass key is", add_special_tokens=False).input_ids
    assert said[: len(prefix)] == prefix, "the key's tokens must follow the phrase's"
    return ids[:n], ids[n:], (prefix, said[len(prefix):]), key_pos


def filled(method, model, exact):
    """The method's cache after a prefill whose states are ``exact``'s, compressed. MiniCache leaves every state
    as computed until ``compress()`` (the prefill's own attention reads the unmerged states), so this equals the
    harness's prefill + compress, one forward per prompt instead of one per variant (the γ = 1 row checks it)."""
    cache = method.new_cache(model)
    for i, layer in enumerate(exact.layers):
        cache.update(layer.keys, layer.values, i)
    method.compress(cache)
    return cache


@torch.inference_mode()
def retrieval(protocol: CompressionProtocol, tokenizer, exact, query, answer, key) -> tuple[bool, bool, float, str]:
    """Key found in the greedy answer within 8 tokens (the sweep's ``max_gen_toks``) / within the task's 12,
    log P(key's tokens | compressed context, question, "The pass key is"), and the generated text. Greedy decoding
    after the compressed context, the question fed afterwards, as ``CompressionProtocol.generate`` does (stop
    strings "\\n" and "." of ``kvbench_passkey`` applied to the text afterwards)."""
    cache = filled(protocol.method, protocol.model, exact)
    scored = copy.deepcopy(cache)
    generated, pending = [], list(query)
    for _ in range(MAX_NEW):
        token = int(protocol.forward(cache, pending, last_logits_only=True)[-1].argmax())
        generated.append(token)
        pending = [token]
    found = [key in re.findall(r"\d+", re.split(r"[\n.]", tokenizer.decode(generated[:n]))[0]) for n in (8, MAX_NEW)]
    prefix, digits = answer
    logits = protocol.forward(scored, query + prefix + digits)[len(query) + len(prefix) - 1: -1]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(digits)[:, None]).sum().item()
    return found[0], found[1], logp, re.split(r"[\n.]", tokenizer.decode(generated))[0].strip()


def slerp_reference(xa: torch.Tensor, xb: torch.Tensor, t: float, gamma: float):
    """METHODS.md §4 in float64, concat norms: restored a, restored b, distance per token, retained set."""
    a, b = xa[0].double().transpose(0, 1).flatten(1), xb[0].double().transpose(0, 1).flatten(1)  # [N, h*d]
    ra, rb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / ra, b / rb
    omega = torch.arccos((ua * ub).sum(-1, keepdim=True).clamp(-1, 1))
    e = (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / torch.sin(omega)
    e = e / e.norm(dim=-1, keepdim=True)
    d = (omega / math.pi).squeeze(-1)
    kept = set(d.argsort(descending=True, stable=True)[: retained_count(gamma, d.numel())].tolist())
    rest_a, rest_b = e * ra, e * rb
    for n in kept:
        rest_a[n], rest_b[n] = a[n], b[n]
    return rest_a, rest_b, a, b, d, kept


def flat(x: torch.Tensor) -> torch.Tensor:
    return x[0].double().transpose(0, 1).flatten(1)


def cos(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(x, y, dim=-1)


@torch.inference_mode()
def prefill_exact(model, ctx):
    """The unmerged K/V of every layer after a prefill of ``ctx`` (a plain cache)."""
    exact = build_method("full").new_cache(model)
    model(input_ids=torch.tensor([ctx]), cache=exact, use_cache=True)
    return exact


@torch.inference_mode()
def state_checks(model, exact, key_pos) -> list[dict]:
    """Per merged layer and K/V: implementation-vs-formula error, cosine restored vs exact (passkey, all),
    passkey tokens in the retained set (top_fraction, the cache's own), in the range rule's set, distance ranks."""
    cache = filled(OnlyPairs(merged_pairs(30, START)), model, exact)
    rows = []
    for (la, lb), pair in zip(merged_pairs(30, START), cache.pairs):
        for kind, idx in (("K", 0), ("V", 1)):
            xa = (exact.layers[la].keys, exact.layers[la].values)[idx]
            xb = (exact.layers[lb].keys, exact.layers[lb].values)[idx]
            store = pair.keys if kind == "K" else pair.values
            ref_a, ref_b, a, b, d, kept = slerp_reference(xa, xb, 0.6, 0.05)
            got_a, got_b = flat(store.restore(0)), flat(store.restore(1))
            impl_err = max(((got_a - ref_a).norm(dim=-1) / a.norm(dim=-1)).max().item(),
                           ((got_b - ref_b).norm(dim=-1) / b.norm(dim=-1)).max().item())
            cache_kept = set(store.kept_idx.long().tolist())  # batch 1, concat: the flat index is the token
            span = d.max() - d.min()
            range_set = set((d > d.max() - 0.05 * span).nonzero().flatten().tolist())
            rank = d.argsort(descending=True).argsort()
            rows.append({
                "pair": f"{la},{lb}", "kv": kind, "impl_err": impl_err, "same_kept": cache_kept == kept,
                "n_kept": len(kept), "n_range": len(range_set), "n_tokens": d.numel(),
                "key_kept": sum(p in kept for p in key_pos), "key_range": sum(p in range_set for p in key_pos),
                "n_key": len(key_pos), "d_key": d[key_pos].mean().item(), "d_all": d.mean().item(),
                "rank_key": rank[key_pos].float().median().item(),
                "cos_ab_key": cos(a[key_pos], b[key_pos]).mean().item(),
                "cos_a_key": cos(got_a[key_pos], a[key_pos]).mean().item(),
                "cos_b_key": cos(got_b[key_pos], b[key_pos]).mean().item(),
                "cos_a_all": cos(got_a, a).mean().item(), "cos_b_all": cos(got_b, b).mean().item(),
            })
    return rows


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def report(args, results: dict, states: list[list[dict]], n_prompts: int, seconds: float, full_texts) -> str:
    data = (f"the first {n_prompts} prompts of `kvbench_passkey` (seed 0, made by "
            "`kvbench.eval.tasks.quick.passkey_records`); no run record: the figures are this script's output")
    lines = [
        "# MiniCache at S = 22 loses the passkey: defect or model? (generated)",
        "",
        script_provenance(data, weights="GGUF Q4_1, dequantised to float32 (SmolLM2-135M-Instruct, bundled)")
        + f" Took {seconds:.0f} s. MiniCache defaults: t = 0.6, γ = 0.05, `top_fraction`, concat norms.",
        "",
        "## 1. Retrieval, merging one pair at a time",
        "",
        "Greedy answer contains the key within 8 generated tokens (the sweep's `max_gen_toks: 8`) / within 12 "
        "(`kvbench_passkey`'s own budget); log P of the key's tokens given the compressed context, the question and "
        "\"The pass key is\" (teacher-forced, the phrase the model answers with), summed over the key's tokens, mean "
        "over prompts.",
        "",
        "| variant | found in 8 tokens | found in 12 | mean log P(key) | Δ vs full |",
        "|:--|--:|--:|--:|--:|",
    ]
    base = mean(r[2] for r in results["full"])
    for name, rows in results.items():
        lp = mean(r[2] for r in rows)
        lines.append(f"| {name} | {sum(r[0] for r in rows)}/{len(rows)} | {sum(r[1] for r in rows)}/{len(rows)} "
                     f"| {lp:.2f} | {lp - base:+.2f} |")
    lines += ["", "Generated by full: " + "; ".join(f"`{t}`" for t in full_texts) + ".", ""]
    flat_rows = [r for per_prompt in states for r in per_prompt]
    lines += [
        "## 2-4. Restored states (S = 22), mean over prompts",
        "",
        "impl err: max over tokens of ‖restored(cache) − restored(formula, float64)‖/‖x‖ (0 = the cache is "
        "METHODS.md §4); same set: the cache's retained tokens equal the ⌈γN⌉ largest distances on every prompt; "
        "kept: tokens retained (top_fraction) / in the range rule's set, passkey tokens among them; rank: median "
        "distance rank of the passkey tokens (0 = most distant); cos(a,b): unmerged layers a and b at the passkey; "
        "cos restored vs exact at the passkey (layer a, b) and over all tokens.",
        "",
        "| pair | K/V | impl err | same set | kept (key) | range (key) | key rank / N | d key / all | cos(a,b) key "
        "| cos key a, b | cos all a, b |",
        "|:--|:--|--:|:--|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for pair in dict.fromkeys(r["pair"] for r in flat_rows):
        for kv in ("K", "V"):
            rs = [r for r in flat_rows if r["pair"] == pair and r["kv"] == kv]
            m = {k: mean(r[k] for r in rs) for k in rs[0] if isinstance(rs[0][k], (int, float))
                 and not isinstance(rs[0][k], bool)}
            lines.append(
                f"| {pair} | {kv} | {max(r['impl_err'] for r in rs):.1e} | {all(r['same_kept'] for r in rs)} "
                f"| {m['n_kept']:.0f} ({sum(r['key_kept'] for r in rs)}/{sum(r['n_key'] for r in rs)}) "
                f"| {m['n_range']:.1f} ({sum(r['key_range'] for r in rs)}/{sum(r['n_key'] for r in rs)}) "
                f"| {m['rank_key']:.0f} / {m['n_tokens']:.0f} | {m['d_key']:.2f} / {m['d_all']:.2f} "
                f"| {m['cos_ab_key']:.2f} | {m['cos_a_key']:.2f}, {m['cos_b_key']:.2f} "
                f"| {m['cos_a_all']:.2f}, {m['cos_b_all']:.2f} |")
    lines += ["", "The reading of these figures is in `experiments/minicache_passkey/README.md`.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=6, help="first N prompts of kvbench_passkey")
    p.add_argument("--out", default="reports", help="directory for minicache_passkey.md")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tokenizer = load_model(ModelConfig())
    prompts = [prompt_ids(tokenizer, r) + (r["answer"],) for r in passkey_records()[: args.prompts]]
    exacts = [prefill_exact(model, ctx) for ctx, *_ in prompts]
    results: dict[str, list] = {}
    full_texts = []
    for name, method in variants().items():
        protocol = CompressionProtocol(model, method)
        results[name] = [retrieval(protocol, tokenizer, exact, q, ans, key)
                         for exact, (_, q, ans, _, key) in zip(exacts, prompts)]
        if name == "full":
            full_texts = [r[3] for r in results[name]]
        print(f"{name}: {sum(r[0] for r in results[name])}/{len(prompts)} in 8 tokens, "
              f"{sum(r[1] for r in results[name])}/{len(prompts)} in {MAX_NEW}, "
              f"log P {mean(r[2] for r in results[name]):.2f}", flush=True)
    states = [state_checks(model, exact, pos) for exact, (_, _, _, pos, _) in zip(exacts, prompts)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "minicache_passkey.md").write_text(report(args, results, states, len(prompts),
                                                     time.perf_counter() - start, full_texts))
    print(f"wrote {out / 'minicache_passkey.md'}")


if __name__ == "__main__":
    main()
