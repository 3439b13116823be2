"""The kvbench lm-eval model: parity with lm-eval's own HF model, and the compression protocol."""

from __future__ import annotations

import pytest
import torch
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from kvbench.suites.lm_eval import task_manager
from kvbench.eval.lm import KvbenchLM
from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import build_method

QUICK_TASKS = ["kvbench_passkey", "kvbench_recall_mc", "kvbench_prose_ppl"]


def _kvbench_lm(model, tokenizer, method="full", **kwargs):
    return KvbenchLM(model=model, tokenizer=tokenizer, method_obj=build_method(method), max_length=2048, **kwargs)


def _responses(samples):
    """Per-request responses: log-likelihoods (floats) or generated strings, in request order."""
    out = []
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        for resp in sample["resps"]:
            out.append(resp[0][0] if isinstance(resp[0], (tuple, list)) else resp[0])
    return out


@pytest.mark.slow  # lm-eval runs the bundled model twice (kvbench and hf): about 2 minutes on 2 cores
def test_full_reproduces_lm_eval_hf_model_metrics_and_loglikelihoods(smollm2_shared):
    model, tokenizer = smollm2_shared
    kwargs = dict(tasks=QUICK_TASKS, limit=3, task_manager=task_manager(QUICK_TASKS), bootstrap_iters=0,
                  log_samples=True, random_seed=0)
    ours = simple_evaluate(model=_kvbench_lm(model, tokenizer), **kwargs)
    reference = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, max_length=2048), **kwargs)
    for task in QUICK_TASKS:
        assert ours["results"][task] == reference["results"][task], task
        got, want = _responses(ours["samples"][task]), _responses(reference["samples"][task])
        assert len(got) == len(want) > 0
        for a, b in zip(got, want):
            if isinstance(a, str):
                assert a == b
            else:
                assert a == pytest.approx(b, abs=1e-3)


def _mc_requests(lm, contexts, choices):
    requests = []
    for doc_id, context in enumerate(contexts):
        for i, choice in enumerate(choices):
            requests.append(Instance(request_type="loglikelihood", doc={}, arguments=(context, choice), idx=i,
                                     metadata=("t", doc_id, 1)))
    return requests


def test_multiple_choice_requests_sharing_a_context_are_prefilled_once(tiny_gqa):
    model, tokenizer = tiny_gqa
    lm = _kvbench_lm(model, tokenizer)
    contexts = ["Alice lives in Paris. Bob lives in Rome. Where does Bob live?", "The sky is blue. What colour is it?"]
    choices = [" Paris", " Rome", " Lima", " Oslo", " Quito"]
    calls = []
    hook = model.model.register_forward_hook(lambda mod, args, kw, out: calls.append(tuple(kw["input_ids"].shape)),
                                             with_kwargs=True)
    try:
        results = lm.loglikelihood(_mc_requests(lm, contexts, choices))
    finally:
        hook.remove()
    assert len(results) == len(contexts) * len(choices)
    assert lm.protocol.stats.n_prefills == len(contexts)
    # full's cache is rewound, never copied: one prefill forward per context, then one forward per continuation
    # length, its rows the continuations of that length
    lengths = sorted(len(lm.tok_encode(c)) for c in choices)
    per_length = {n: lengths.count(n) for n in lengths}
    assert len(per_length) > 1  # the test needs continuations of different lengths
    for context in contexts:
        prefill, *scoring = calls[:1 + len(per_length)]
        del calls[:1 + len(per_length)]
        assert prefill == (1, len(lm.tok_encode(context)) - 1)
        assert sorted(scoring) == sorted((rows, n) for n, rows in per_length.items())
    assert calls == []
    prefilled = sum(len(lm.tok_encode(c)) - 1 for c in contexts)
    assert lm.protocol.stats.prefill_tokens == prefilled
    assert lm.protocol.stats.scored_tokens == len(contexts) * sum(lengths)


def test_shared_prefill_gives_the_same_scores_as_scoring_each_request_alone(tiny_gqa):
    model, tokenizer = tiny_gqa
    context, choices = "one two three four", [" five", " six", " seven"]
    together = _kvbench_lm(model, tokenizer).loglikelihood(_mc_requests(None, [context], choices))
    alone = [_kvbench_lm(model, tokenizer).loglikelihood(_mc_requests(None, [context], [c]))[0] for c in choices]
    for (a, greedy_a), (b, greedy_b) in zip(together, alone):
        assert a == pytest.approx(b, abs=1e-5) and greedy_a == greedy_b


@pytest.mark.parametrize("chunk", [1, 7])
def test_streamed_perplexity_matches_a_single_forward_for_full(tiny_gqa, chunk):
    model, tokenizer = tiny_gqa
    ids = tokenizer("A streamed sentence, scored token by token against the cache.").input_ids
    protocol = CompressionProtocol(model, build_method("full"))
    streamed = protocol.stream_logprob(ids[:1], ids[1:], chunk)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
    expected = float(logprobs[:-1].gather(-1, torch.tensor(ids[1:])[:, None]).sum())
    assert streamed == pytest.approx(expected, abs=1e-4)


def test_full_method_measured_bytes_equal_the_uncompressed_formula(tiny_gqa):
    model, tokenizer = tiny_gqa
    protocol = CompressionProtocol(model, build_method("full"))
    protocol.generate(list(range(40)), max_new_tokens=5)
    cfg = model.config
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 4
    assert protocol.stats.stored_bytes == protocol.stats.full_bytes == 39 * per_token
    assert protocol.stats.peak_stored_bytes == (40 + 5 - 1) * per_token


def test_greedy_generation_matches_model_generate(tiny_gqa):
    model, tokenizer = tiny_gqa
    ids = tokenizer("Greedy decoding must agree:").input_ids
    protocol = CompressionProtocol(model, build_method("full"))
    ours = protocol.generate(ids, max_new_tokens=12)
    with torch.no_grad():
        theirs = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert ours == theirs[0, len(ids):].tolist()
