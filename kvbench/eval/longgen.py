"""Long generations (issue 25): where along a trace a method's predictions leave ``full``'s, and whether a checkable
chain survives compression while decoding.

Reasoning models write thousands of tokens while their prompt is short, so the cache grows during decoding and
only decode-time compression (:mod:`kvbench.cache.decode_budget`) saves anything. A method's cost is then spread
along the trace, so a single mean hides where it happens. For one prompt, :func:`trace` runs

* ``full``'s greedy generation, whose step logits are full's log-probabilities on its own output;
* the method's own greedy generation (its length, and its answer when the prompt is checkable);
* the method teacher-forced on full's output (:func:`kvbench.eval.fidelity.teacher_forced_logprobs`), so both
  predict the same positions: per-position KL(full ‖ method) and top-1 agreement, averaged within position bins
  (:data:`BINS`: 0–256, 256–1k, 1k+);
* where the method's own output first departs from full's (:func:`first_disagreement`): the binned KL says how far
  the predictions drift, this says at which generated token the text itself changes.

Checkable prompts (:func:`progression_prompt`): a seeded arithmetic progression written out term by term ("Add 7
each time: 12, 19, 26, ..."); the model continues it, and :func:`correct_terms` counts the leading terms it got right
-- a chain of dependent steps whose answer is checked exactly, which a 135M model can follow for a while.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch

from kvbench.eval.fidelity import per_position, teacher_forced_logprobs

#: Position bins of the trace: ``(name, first, end)``, end excluded (None: to the end).
BINS = (("0_256", 0, 256), ("256_1k", 256, 1024), ("1k_plus", 1024, None))
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


def binned(values: torch.Tensor) -> dict:
    """Mean of a ``[L]`` series within each of :data:`BINS` (None for a bin the trace does not reach)."""
    out = {}
    for name, first, end in BINS:
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


def trace(reference, protocol, prompt: list[int], max_new_tokens: int, eos_token_ids=()) -> Trace:
    """Generate with ``full`` (``reference``) and the method (``protocol``) from ``prompt``, and compare the method's
    predictions with full's along full's output."""
    [full_output], full_logits = reference.generate_batch([prompt], max_new_tokens, eos_token_ids, return_logits=True)
    full_logprobs = torch.log_softmax(full_logits[:, :len(full_output)].float(), dim=-1)
    before_s, before_n = protocol.stats.decode_s, protocol.stats.decode_tokens
    output = protocol.generate(prompt, max_new_tokens, eos_token_ids=eos_token_ids)
    steps = protocol.stats.decode_tokens - before_n
    ms = 1000 * (protocol.stats.decode_s - before_s) / steps if steps else None
    mine = teacher_forced_logprobs(protocol, [prompt], [full_output])
    kl, agree = per_position(full_logprobs, mine)
    return Trace(len(output), len(full_output), float(kl.mean()), float(agree.float().mean()), binned(kl[0]),
                 binned(agree[0]), ms, *first_disagreement(output, full_output), output, full_output)


def progression_prompt(rng: random.Random, shown: int = 6) -> tuple[str, int, int, int]:
    """``(text, start, step, shown)``: an arithmetic progression's first ``shown`` terms, to be continued."""
    start, step = rng.randrange(2, 60), rng.randrange(2, 10)
    terms = ", ".join(str(start + i * step) for i in range(shown))
    return f"Add {step} each time, and keep going: {terms},", start, step, shown


def correct_terms(text: str, start: int, step: int, shown: int) -> int:
    """How many terms after the ``shown`` ones the output ``text`` continues correctly, before its first error."""
    count = 0
    for found in _NUMBER.findall(text):
        if int(found) != start + (shown + count) * step:
            break
        count += 1
    return count
