"""Long generations (issue 25): where along a trace a method's predictions leave ``full``'s, and whether a checkable
chain survives compression while decoding.

Reasoning models write thousands of tokens while their prompt is short, so the cache grows during decoding and
only decode-time compression (:mod:`kvbench.cache.decode_budget`) saves anything. A method's cost is then spread
along the trace, so a single mean hides where it happens. For one prompt, :func:`trace` runs

* ``full``'s greedy generation, whose step logits are full's log-probabilities on its own output;
* the method's own greedy generation (its length, and its answer when the prompt is checkable);
* the method teacher-forced on full's output (:func:`kvbench.eval.fidelity.teacher_forced_logprobs`), so both
  predict the same positions: per-position KL(full ‖ method) and top-1 agreement, averaged within position bins
  (:func:`bins`: 0–256, 256–1k, 1k+ unless ``suite.options.bins`` moves the edges);
* where the method's own output first departs from full's (:func:`first_disagreement`): the binned KL says how far
  the predictions drift, this says at which generated token the text itself changes.

Checkable prompts (:func:`progression_prompt`): a seeded arithmetic progression written out term by term ("Add 7
each time: 12, 19, 26, ..."); the model continues it, and :func:`correct_terms` counts the leading terms it got right
-- a chain of dependent steps whose answer is checked exactly, which a 135M model can follow for a while.

Open instructions (:data:`INSTRUCTIONS`, in the model's chat template): the answers *end on their own* (the
instruct model's end-of-turn token), so their length, and its change under compression, is a measurement and not
the ``max_new_tokens`` cap the two continuation tasks always reach.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch

from kvbench.eval.fidelity import per_position, teacher_forced_logprobs
from kvbench.eval.prompts import chat_wrap, encode, has_chat_template

#: Where the default position bins of a trace start (issue 25's 0–256, 256–1k, 1k+); ``suite.options.bins``.
BIN_EDGES = (256, 1024)
_NUMBER = re.compile(r"-?\d+")


@dataclass
class Trace:
    """One prompt: the method's and full's output lengths, per-bin divergence on full's output, decode time."""

    length: int
    full_length: int
    kl: float
    top1_agreement: float
    kl_bins: dict
    agreement_bins: dict
    decode_ms_per_step: float | None
    #: Leading generated tokens the method's output shares with full's; ``departed`` False when neither output
    #: differs from the other (then it is the common length: the departure lies beyond the trace, a censored value).
    first_disagreement: int
    departed: bool
    output: list
    full_output: list
    #: Rows of the batch whose step ``decode_ms_per_step`` times: 1, or ``2 × prompts`` of :func:`trace_batch`.
    decode_rows: int = 1


def label(position: int) -> str:
    """A bin edge as metric names spell it: 256, 1k, 2k (multiples of 1024 in k)."""
    return f"{position // 1024}k" if position and position % 1024 == 0 else str(position)


def bins(edges=BIN_EDGES) -> tuple:
    """``((name, first, end), ...)``: the bins the increasing ``edges`` cut a trace into, end excluded (None: to
    the end), named ``0_256``, ``256_1k``, ``1k_plus``."""
    starts = (0, *edges)
    return tuple((f"{label(first)}_{label(end)}" if end is not None else f"{label(first)}_plus", first, end)
                 for first, end in zip(starts, (*edges, None)))


def binned(values: torch.Tensor, edges=BIN_EDGES) -> dict:
    """Mean of a ``[L]`` series within each of :func:`bins` (None for a bin the trace does not reach)."""
    out = {}
    for name, first, end in bins(edges):
        part = values[first:end]
        out[name] = float(part.float().mean()) if len(part) else None
    return out


def first_disagreement(output: list, full_output: list) -> tuple[int, bool]:
    """``(position, departed)``: the index of the first generated token where ``output`` and ``full_output``
    differ (one ending before the other counts as a difference), and whether they differ at all."""
    for position, (mine, theirs) in enumerate(zip(output, full_output)):
        if mine != theirs:
            return position, True
    common = min(len(output), len(full_output))
    return common, len(output) != len(full_output)


#: full's generations already made in this process: ``{key: (output, log-probabilities)}`` (see :func:`full_trace`).
_FULL_TRACES: dict = {}
#: At most this many kept (a 1280-token trace's log-probabilities over a 49k vocabulary are ~250 MB).
FULL_TRACES_KEPT = 8


def _memo(key, prompt, max_new_tokens: int, eos_token_ids) -> tuple | None:
    return None if key is None else (key, tuple(prompt), max_new_tokens, tuple(eos_token_ids))


def _keep(memo, found) -> None:
    if memo is not None:
        while len(_FULL_TRACES) >= FULL_TRACES_KEPT:
            _FULL_TRACES.pop(next(iter(_FULL_TRACES)))
        _FULL_TRACES[memo] = found


def _found(outputs, logits, row: int) -> tuple:
    """Row ``row``'s ``(output, [1, L, vocab] log-probabilities)`` of a batched generation with its logits."""
    output = outputs[row]
    return output, torch.log_softmax(logits[row:row + 1, :len(output)].float(), dim=-1)


def full_traces(load_reference, prompts: list[list[int]], max_new_tokens: int, eos_token_ids=(), key=None,
                reuse: bool = True) -> list:
    """``[(output, [1, L, vocab] log-probabilities)]`` of ``full``'s greedy generation from each of the
    equal-length ``prompts``, by the protocol ``load_reference()`` returns (called, once for all the prompts not
    kept already, only when there are such).

    A sweep runs every method of ``experiment=longgen`` in one process against the same ``full`` generations, and
    on two cores each costs as much as the method's own: with a ``key`` naming the reference model (its config and
    a fingerprint of its weights), a generation is made once per process and reused, and the reference model is
    not even loaded again (greedy decoding of the same weights is deterministic, so the reuse changes no number).
    Without a key nothing is kept; with ``reuse=False`` the generations are made (and kept) even when kept already.
    """
    memos = [_memo(key, prompt, max_new_tokens, eos_token_ids) for prompt in prompts]
    found = {i: _FULL_TRACES[memo] for i, memo in enumerate(memos) if reuse and memo in _FULL_TRACES}
    missing = [i for i in range(len(prompts)) if i not in found]
    if missing:
        outputs, logits = load_reference().generate_batch([prompts[i] for i in missing], max_new_tokens,
                                                          eos_token_ids, return_logits=True)
        for row, i in enumerate(missing):
            found[i] = _found(outputs, logits, row)
            _keep(memos[i], found[i])
    return [found[i] for i in range(len(prompts))]


def full_trace(load_reference, prompt: list[int], max_new_tokens: int, eos_token_ids=(), key=None,
               reuse: bool = True):
    """``(output, [1, L, vocab] log-probabilities)`` of ``full``'s greedy generation from ``prompt``:
    :func:`full_traces` of one prompt."""
    return full_traces(load_reference, [prompt], max_new_tokens, eos_token_ids, key, reuse)[0]


def decode_ms(protocol, run):
    """``(run(), decode ms per generated token)`` of what ``run`` generates under ``protocol`` (None: no step)."""
    before_s, before_n = protocol.stats.decode_s, protocol.stats.decode_tokens
    result = run()
    steps = protocol.stats.decode_tokens - before_n
    return result, (1000 * (protocol.stats.decode_s - before_s) / steps if steps else None)


def _full_against_itself(output: list, ms, edges, rows: int = 1) -> Trace:
    zeros = torch.zeros(len(output))
    return Trace(len(output), len(output), 0.0, 1.0, binned(zeros, edges), binned(zeros + 1, edges), ms,
                 *first_disagreement(output, output), output, output, rows)


def _against(full_output: list, full_logprobs, output: list, mine, ms, edges, rows: int = 1) -> Trace:
    kl, agree = per_position(full_logprobs, mine)
    return Trace(len(output), len(full_output), float(kl.mean()), float(agree.float().mean()),
                 binned(kl[0], edges), binned(agree[0], edges), ms, *first_disagreement(output, full_output), output,
                 full_output, rows)


def trace(load_reference, protocol, prompt: list[int], max_new_tokens: int, eos_token_ids=(), key=None,
          edges=BIN_EDGES) -> Trace:
    """Generate with ``full`` (``load_reference``, kept per ``key``: :func:`full_trace`) and the method
    (``protocol``) from ``prompt``, and compare the method's predictions with full's along full's output.

    ``full`` itself is traced in one pass, not three: its own generation *is* the reference (made by ``protocol``,
    so the run's decode time and bytes are measured), and its divergence from itself is zero by definition (the
    three-pass identity is tested: tests/suites/test_longgen.py). It is always generated (its run measures it),
    and kept for the methods after it."""
    if protocol.method.name == "full":
        (output, _), ms = decode_ms(protocol, lambda: full_trace(lambda: protocol, prompt, max_new_tokens,
                                                                eos_token_ids, key, reuse=False))
        return _full_against_itself(output, ms, edges)
    full_output, full_logprobs = full_trace(load_reference, prompt, max_new_tokens, eos_token_ids, key)
    output, ms = decode_ms(protocol, lambda: protocol.generate(prompt, max_new_tokens, eos_token_ids=eos_token_ids))
    mine = teacher_forced_logprobs(protocol, [prompt], [full_output])
    return _against(full_output, full_logprobs, output, mine, ms, edges)


def trace_batch(load_reference, protocol, prompts: list[list[int]], max_new_tokens: int, eos_token_ids=(),
                key=None, edges=BIN_EDGES) -> list[Trace]:
    """:func:`trace` of equal-length ``prompts`` at once (``suite.options.batch``): ONE batch of
    ``2 × len(prompts)`` rows, the method's own generation of each prompt and its teacher-forced pass on full's
    output of it (the ``forced`` rows of :meth:`~kvbench.eval.protocol.CompressionProtocol.generate_batch`).

    Decoding a small model on a CPU is bound by reading the weights, so a step of 6 rows costs about twice a
    step of one (SmolLM2-135M, 2 threads: ~150 vs ~70 ms): the three passes of :func:`trace` per prompt become a
    fraction of one. ``full`` runs the same rows (its generation twice: teacher-forced on its own output it
    predicts what it generates), so ``decode_ms_per_step`` -- here the step time of the whole batch, its rows in
    ``decode_rows`` -- compares across methods at one batch shape, and the record's peak bytes are the batch's.
    Per prompt the numbers equal :func:`trace`'s up to the float rounding of batched kernels (a test)."""
    n = len(prompts)
    rows = 2 * n
    if protocol.method.name == "full":
        (outputs, logits), ms = batch_decode_ms(protocol, lambda: protocol.generate_batch(
            [*prompts, *prompts], max_new_tokens, eos_token_ids, return_logits=True))
        traces = []
        for i, prompt in enumerate(prompts):
            found = _found(outputs, logits, i)
            _keep(_memo(key, prompt, max_new_tokens, eos_token_ids), found)
            traces.append(_full_against_itself(found[0], ms, edges, rows))
        return traces
    references = full_traces(load_reference, prompts, max_new_tokens, eos_token_ids, key)
    (outputs, logits), ms = batch_decode_ms(protocol, lambda: protocol.generate_batch(
        [*prompts, *prompts], max_new_tokens, eos_token_ids, return_logits=True,
        forced=[None] * n + [output for output, _ in references]))
    return [_against(full_output, full_logprobs, outputs[i], _found(outputs, logits, n + i)[1], ms, edges, rows)
            for i, (full_output, full_logprobs) in enumerate(references)]  # a forced row's output is full's


def batch_decode_ms(protocol, run):
    """``(run(), decode ms per step of the batch)`` for a ``run`` returning ``(rows, logits)`` from
    :meth:`~kvbench.eval.protocol.CompressionProtocol.generate_batch`: the steps are its longest row's."""
    before_s = protocol.stats.decode_s
    result = run()
    steps = max(map(len, result[0]))
    return result, 1000 * (protocol.stats.decode_s - before_s) / steps


def progression_prompt(rng: random.Random, shown: int = 6) -> tuple[str, int, int, int]:
    """``(text, start, step, shown)``: an arithmetic progression's first ``shown`` terms, to be continued."""
    start, step = rng.randrange(2, 60), rng.randrange(2, 10)
    terms = ", ".join(str(start + i * step) for i in range(shown))
    return f"Add {step} each time, and keep going: {terms},", start, step, shown


#: Open instructions for the ``instruct`` task: written for kvbench (not from a dataset), each asking for an answer
#: of a few hundred tokens that the model ends itself.
INSTRUCTIONS = (
    "Explain how a refrigerator keeps food cold.",
    "Describe, step by step, how to plant a tree.",
    "What causes the seasons on Earth? Explain in detail.",
    "Explain how bread rises when it is baked.",
    "Describe how a bill becomes a law in a parliament.",
    "Explain why the sky is blue, for a curious child.",
    "Give detailed advice to someone preparing for their first marathon.",
    "Explain how vaccines train the immune system.",
    "Describe the water cycle from the ocean to the rain and back.",
    "Explain how a bicycle stays upright while it moves.",
    "Describe how to cook a simple vegetable soup, step by step.",
    "Explain what a budget is and how a family could make one.",
    "Describe how bees make honey.",
    "Explain how a compass finds north.",
    "Give a detailed plan for learning a new language in one year.",
    "Explain how electricity reaches a house from a power station.",
)


def instruct_prompt(tokenizer, instruction: str) -> list[int]:
    """``instruction`` as the prompt's token ids: one user turn in the tokenizer's chat template when it has one
    (then the answer ends with the end-of-turn token), else ``Question: ... Answer:``."""
    text = chat_wrap(tokenizer, instruction) if has_chat_template(tokenizer) else f"Question: {instruction}\nAnswer:"
    return encode(tokenizer, text, add_special_tokens=False)


def correct_terms(text: str, start: int, step: int, shown: int) -> int:
    """How many terms after the ``shown`` ones the output ``text`` continues correctly, before its first error."""
    count = 0
    for found in _NUMBER.findall(text):
        if int(found) != start + (shown + count) * step:
            break
        count += 1
    return count
