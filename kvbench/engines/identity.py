"""Is vLLM serving the same model as kvbench? (issue 29) Greedy continuations of the quick suite's prompts -- the
passkey prompts (``kvbench_passkey_short``, the ``limit`` the suite uses) and the opening of each held-out prose
passage (``kvbench_prose_ppl``) -- through vLLM and through kvbench's ``full`` (the Hugging Face model, which
``full`` reproduces: ARCHITECTURE.md), in the same dtype, from the same token ids, and each chosen token's
log-probability compared.

Where the two agree on every token so far, both conditioned on the same prefix, so their log-probabilities can be
compared one to one; after the first differing token the continuations part and nothing more is compared. The
tolerance is :data:`TOLERANCE` (nats, the same as ``full`` against lm-eval's ``hf``); kernels differ (vLLM's CPU
attention and its fused ops against torch's SDPA), so exact equality is not expected.

Run: ``python -m kvbench.engines.identity [model=smollm2_135m] [passkey=32] [prose=8] [new_tokens=12]
[out=reports/engine_identity.md]``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

#: The largest |log p(vLLM) - log p(kvbench)| accepted on a shared prefix, in nats.
TOLERANCE = 1e-3
NEW_TOKENS = 12
PASSKEY_PROMPTS = 32
PROSE_PROMPTS = 8
PROSE_TOKENS = 128


@dataclass
class Comparison:
    prompts: int
    all_tokens_equal: int
    tokens_compared: int
    first_divergence: list
    max_abs_logprob_diff: float
    mean_abs_logprob_diff: float

    def within(self, tolerance: float = TOLERANCE) -> bool:
        return self.max_abs_logprob_diff <= tolerance


def quick_prompts(tokenizer, passkey: int = PASSKEY_PROMPTS, prose: int = PROSE_PROMPTS) -> list[list[int]]:
    """Token ids of the quick suite's prompts: the first ``passkey`` passkey prompts (context + question, the
    suite's order) and the opening of the first ``prose`` prose passages."""
    from kvbench.eval.tasks import quick

    records = quick.passkey_records(n_per_length=16, lengths=quick.SHORT_PASSKEY_LENGTHS)[:passkey]
    prompts = [tokenizer(f"{r['context']}\n\n{r['question']}")["input_ids"] for r in records]
    prose = quick.prose_records()[:prose]
    return prompts + [tokenizer(r["text"])["input_ids"][:PROSE_TOKENS] for r in prose]


def kvbench_greedy(model, prompts: list[list[int]], new_tokens: int = NEW_TOKENS) -> list[dict]:
    """Greedy tokens and their log-probabilities from the Hugging Face model (EOS ignored, like the driver)."""
    import torch
    from transformers import DynamicCache

    rows = []
    with torch.inference_mode():
        for prompt in prompts:
            cache, tokens, logprobs = DynamicCache(config=model.config), [], []
            out = model(input_ids=torch.tensor([prompt]), cache=cache, use_cache=True)
            for _ in range(new_tokens):
                scores = torch.log_softmax(out.logits[0, -1].float(), -1)
                token = int(scores.argmax())
                tokens.append(token)
                logprobs.append(float(scores[token]))
                out = model(input_ids=torch.tensor([[token]]), cache=cache, use_cache=True)
            rows.append({"tokens": tokens, "logprobs": logprobs})
    return rows


def compare(ours: list[dict], theirs: list[dict]) -> Comparison:
    """Token agreement and log-probability differences over each prompt's shared prefix."""
    diffs, divergence, equal = [], [], 0
    for a, b in zip(ours, theirs):
        first = next((i for i, (x, y) in enumerate(zip(a["tokens"], b["tokens"])) if x != y), None)
        shared = len(a["tokens"]) if first is None else first + 1  # the differing step is still conditioned alike
        diffs += [abs(x - y) for x, y in zip(a["logprobs"][:shared], b["logprobs"][:shared])]
        equal += first is None
        divergence.append(first)
    return Comparison(len(ours), equal, len(diffs), divergence, max(diffs, default=0.0),
                      sum(diffs) / len(diffs) if diffs else 0.0)


def markdown(result: Comparison, model_name: str, dtype: str, engine: dict, new_tokens: int = NEW_TOKENS) -> str:
    verdict = "within" if result.within() else "outside"
    diverged = [(i, d) for i, d in enumerate(result.first_divergence) if d is not None]
    return "\n".join([
        "# vLLM against kvbench `full`: the identity check (issue 29)", "",
        f"Model `{model_name}` in {dtype} (the bundled GGUF dequantized by transformers and saved as safetensors, so "
        f"both run the same weights). {result.prompts} prompts of the quick suite (passkey prompts, then prose "
        f"openings of {PROSE_TOKENS} tokens), {new_tokens} greedy tokens each, EOS ignored.", "",
        f"- engine: vLLM {engine.get('version')} (torch {engine.get('torch')}, {engine.get('threads')} threads), "
        f"kv_cache_dtype={engine.get('kv_cache_dtype')}",
        f"- every token equal: {result.all_tokens_equal}/{result.prompts} prompts"
        + (f"; first differing step per differing prompt (index: step): {diverged}" if diverged else ""),
        f"- log-probabilities compared on shared prefixes: {result.tokens_compared}; max |Δ| = "
        f"{result.max_abs_logprob_diff:.3g} nats, mean {result.mean_abs_logprob_diff:.3g}",
        f"- tolerance {TOLERANCE:g} nats: **{verdict}**. What differs: the kernels (vLLM's CPU paged attention and "
        "fused ops against torch's SDPA and eager ops), not the weights or the dtype.", ""])


def model_config(name: str):
    """``conf/model/<name>.yaml`` as a :class:`~kvbench.config.ModelConfig` (its fields over the schema's)."""
    from omegaconf import OmegaConf

    from kvbench import config

    fields = OmegaConf.to_container(OmegaConf.load(config.CONF_DIR / "model" / f"{name}.yaml"))
    fields.pop("defaults", None)
    return config.ModelConfig(**fields)


def main(argv: list[str]) -> int:
    from kvbench.config import EngineConfig
    from kvbench.engines import vllm_launcher as vllm
    from kvbench.engines.export import engine_model_dir
    from kvbench.models import load_model

    args = dict(a.split("=", 1) for a in argv)
    cfg = model_config(args.get("model", "smollm2_135m"))
    model, tokenizer = load_model(cfg)
    new_tokens = int(args.get("new_tokens", NEW_TOKENS))
    prompts = quick_prompts(tokenizer, int(args.get("passkey", PASSKEY_PROMPTS)), int(args.get("prose", PROSE_PROMPTS)))
    ours = kvbench_greedy(model, prompts, new_tokens)
    engine = EngineConfig(name="vllm", backend="vllm", kv_cache_dtype=args.get("kv_cache_dtype", "auto"))
    response = vllm.run_driver(engine, {"job": "identity", "model_dir": str(engine_model_dir(cfg)),
                                        "dtype": cfg.dtype, "max_model_len": max(map(len, prompts)) + new_tokens,
                                        "new_tokens": new_tokens, "prompts": prompts, "max_num_seqs": 8})
    result = compare(ours, response["rows"])
    from kvbench.environment import script_provenance  # the report names its command, commit and lock (issue 23)

    text = markdown(result, cfg.name, cfg.dtype, response["engine"], new_tokens)
    text = text.replace("\n\n", "\n\n" + script_provenance(
        f"{len(prompts)} quick-suite prompts, {new_tokens} greedy tokens", "GGUF Q4_1, dequantised to float32",
        ["python", "-m", "kvbench.engines.identity", *argv]) + "\n\n", 1)
    out = args.get("out")
    if out:
        with open(out, "w") as handle:
            handle.write(text)
    print(text)
    return 0 if result.within() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
