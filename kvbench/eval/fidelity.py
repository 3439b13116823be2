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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


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
