"""Divergence from ``full``: how far a method moves the model's next-token distributions, token by token.

Task scores of a 135M model sit at the floor on most retrieval tasks, so they rarely tell methods apart; how far the
compressed model's predictions move from the uncompressed model's carries information on any model (EVALUATION.md,
"Divergence from full"). The same token sequence is teacher-forced through ``full`` and through the method, under
the method's own protocol (prefill and compress the prompt, then feed the sequence one token at a time, exactly as
greedy decoding would; a single-pass simulation runs the whole sequence in one masked forward), and per position:

* ``KL(p_full ‖ p_method)`` in nats, the information lost by predicting with the method instead of full;
* top-1 agreement: whether both put the same token first;
* the first position where the two greedy choices differ (the sequence length when they never do).

Positions within one prompt are correlated, so the unit of the intervals is the prompt: each prompt contributes its
mean KL and agreement. ``full`` against itself runs the same operations on the same numbers and gives KL 0 and
agreement 1 exactly (tested).

The same measurement runs beside a decoding suite's own answers (``suite.fidelity=true``): :class:`DivergenceProbe`
teacher-forces full's greedy answer with the suite's prompt split (:func:`teacher_forced_after`), and
:func:`divergence_metrics` summarises a task's prompts.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kvbench.eval.intervals import bootstrap, mean


@dataclass
class Divergence:
    """One prompt's divergence from full over its teacher-forced positions."""

    kl: float
    top1_agreement: float
    first_disagreement: int
    positions: int


@torch.inference_mode()
def teacher_forced_logprobs(protocol, prompts: Sequence[Sequence[int]],
                            continuations: Sequence[Sequence[int]]) -> torch.Tensor:
    """``[B, L, vocab]`` float32 log-probabilities of each continuation token's position, the continuation fed after
    the prompt under ``protocol`` (``B`` equal-length prompts and continuations of length ``L``)."""
    if getattr(protocol.method, "single_pass", False):  # the masking simulation: one forward per sequence
        rows = []
        for prompt, continuation in zip(prompts, continuations):
            sequence = [*prompt, *continuation[:-1]]
            logits = protocol.forward(protocol.method.new_cache(protocol.model), sequence)
            rows.append(torch.log_softmax(logits[len(prompt) - 1:].float(), dim=-1))
        return torch.stack(rows)
    cache = protocol.prefill_batch([list(p[:-1]) for p in prompts])
    following = torch.tensor([list(c) for c in continuations], dtype=torch.long, device=protocol.device)
    pending = torch.tensor([[p[-1]] for p in prompts], dtype=torch.long, device=protocol.device)
    steps = []
    for step in range(following.shape[1]):
        logits = protocol.forward_batch(cache, pending, last_logits_only=True)[:, -1]
        steps.append(torch.log_softmax(logits.float(), dim=-1))
        pending = following[:, step:step + 1]
    protocol.measure(cache, len(prompts[0]) + following.shape[1] - 1, len(prompts))
    return torch.stack(steps, dim=1)


def per_position(reference: torch.Tensor, method: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(KL(reference ‖ method), top-1 agreement)``, each ``[B, L]``, from ``[B, L, vocab]`` log-probabilities."""
    if reference.shape != method.shape:
        raise ValueError(f"log-probabilities of shapes {tuple(reference.shape)} and {tuple(method.shape)} "
                         "cannot be compared position by position")
    kl = (reference.exp() * (reference - method)).sum(-1)  # [B, L]; exactly 0 where the two are identical
    return kl, reference.argmax(-1) == method.argmax(-1)


def divergence(reference: torch.Tensor, method: torch.Tensor) -> list[Divergence]:
    """Per row of ``[B, L, vocab]`` log-probabilities: mean KL(reference ‖ method), top-1 agreement, first
    disagreeing position."""
    kl, agree = per_position(reference, method)
    results = []
    for row_kl, row_agree in zip(kl, agree):
        disagreements = torch.nonzero(~row_agree).flatten()
        first = int(disagreements[0]) if len(disagreements) else len(row_agree)
        results.append(Divergence(float(row_kl.mean()), float(row_agree.float().mean()), first, len(row_agree)))
    return results


@torch.inference_mode()
def teacher_forced_after(protocol, context: Sequence[int], query: Sequence[int], query_aware: bool,
                         continuation: Sequence[int]) -> torch.Tensor:
    """``[L, vocab]`` float32 log-probabilities of each position of ``continuation``, fed after ``context`` and
    ``query`` exactly as :meth:`~kvbench.eval.protocol.CompressionProtocol.generate` decodes an answer: the context
    compressed, the query after it (inside the compressed prompt with ``query_aware``), then one token per step."""
    prompt = [*context, *query]
    if getattr(protocol.method, "single_pass", False):  # the masking simulation: one forward over everything
        logits = protocol.forward(protocol.method.new_cache(protocol.model), [*prompt, *continuation[:-1]])
        return torch.log_softmax(logits[len(prompt) - 1:].float(), dim=-1)
    cache, pending = protocol.prefill_prompt(context, query, query_aware)
    steps = []
    for token in continuation:
        steps.append(torch.log_softmax(protocol.forward(cache, pending, last_logits_only=True)[-1].float(), dim=-1))
        pending = [token]
    return torch.stack(steps)


class DivergenceProbe:
    """Divergence from ``full`` along the answers a decoding suite generates (``suite.fidelity=true``).

    For each prompt the reference (the model before the method, under ``full``) writes its own greedy answer; that
    answer is teacher-forced through the reference and through the method with the suite's own prompt split
    (:func:`teacher_forced_after`), and :func:`divergence` gives the mean KL, the top-1 agreement and the first
    disagreeing position. The extra passes leave the method's measurements (bytes, times) untouched: the probe
    restores the protocol's statistics after it runs, so a record's efficiency figures are the task's alone."""

    def __init__(self, reference):
        self.reference = reference

    def measure(self, protocol, context: Sequence[int], query: Sequence[int], query_aware: bool,
                max_new_tokens: int, eos_token_ids: Sequence[int] = ()) -> dict:
        """The row fields ``kl_vs_full``, ``top1_vs_full``, ``first_disagreement_vs_full``, ``reference_tokens``."""
        saved = [(p, copy.deepcopy(p.stats), list(p.longest_context)) for p in (self.reference, protocol)]
        try:
            answer = self.reference.generate(context, max_new_tokens, eos_token_ids=eos_token_ids, query=query,
                                             query_aware=query_aware)
            found = divergence(teacher_forced_after(self.reference, context, query, query_aware, answer)[None],
                               teacher_forced_after(protocol, context, query, query_aware, answer)[None])[0]
        finally:
            for p, stats, longest in saved:
                p.stats, p.longest_context = stats, longest
        return {"kl_vs_full": found.kl, "top1_vs_full": found.top1_agreement,
                "first_disagreement_vs_full": found.first_disagreement, "reference_tokens": found.positions}


#: The per-row fields :meth:`DivergenceProbe.measure` adds, summarised per task by :func:`divergence_metrics`.
PROBE_FIELDS = ("kl_vs_full", "top1_vs_full", "first_disagreement_vs_full")


def divergence_metrics(rows: Sequence[dict]) -> dict[str, float]:
    """Per task: the mean of each probe field over the rows that carry it, and a 95% bootstrap interval of the mean
    KL over prompts (``kl_vs_full_low``/``_high``; the prompt is the unit: positions within one are correlated)."""
    probed = [row for row in rows if "kl_vs_full" in row]
    if not probed:
        return {}
    metrics = {name: mean([row[name] for row in probed]) for name in PROBE_FIELDS}
    found = bootstrap([row["kl_vs_full"] for row in probed], mean)
    if found is not None:
        metrics["kl_vs_full_low"], metrics["kl_vs_full_high"] = found[0], found[1]
    return metrics
