"""The context-compression protocol every method is measured under (ARCHITECTURE.md).

For each request: prefill the context into the method's cache, let the method compress
it, then score a continuation or generate greedily against the compressed cache, with
the method's decode-time policy active. The last context token is fed *after*
compression, so every scored or generated token sees only what the method kept.

:class:`CompressionProtocol` also measures what the cache really holds (bytes summed
over its tensors, next to what an uncompressed cache would hold for the same tokens)
and times prefill and decoding (:mod:`kvbench.eval.measurements`). The lm-eval model, LongBench and the synthetic tasks
all go through it, so a method is measured the same way everywhere.

Single-pass methods (``method.single_pass``: H2O's masking simulation, ``h2o protocol=simulate``) are
measured differently, as their paper did, by :class:`SinglePassProtocol`: each request's whole sequence goes
through ONE forward on a fresh cache (the method masks attention inside it), its continuation's log-probs read
from that forward; generation re-runs the whole sequence once per new token. Nothing is compressed, so bytes
are full bytes. ``CompressionProtocol(model, method)`` builds the right one of the two.

Query-agnostic vs query-aware (:meth:`CompressionProtocol.generate`): by default a question kept apart
from its document is fed *after* compression (the method never sees it when choosing what to keep, as
kvpress does); ``query_aware=True`` puts it inside the compressed prompt, the setting SnapKV and PyramidKV
assume. Suites pass their ``suite.query_aware``; records and reports carry it.

The module is a little over 300 lines because both protocols live here: ``CompressionProtocol(...)`` chooses
between them, which a second module could only do through an import cycle.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence

import torch

from kvbench.cache.accounting import cache_nbytes, full_cache_nbytes
from kvbench.errors import KvbenchError
from kvbench.eval.measurements import CacheNotWrittenError, ProtocolStats, check_cache_written

__all__ = ["CacheNotWrittenError", "CompressionProtocol", "PaddingError", "ProtocolStats", "SinglePassError",
           "SinglePassProtocol", "check_cache_written"]


class SinglePassError(KvbenchError, ValueError):
    """A batched cache asked of a single-pass simulation (nothing is cached)."""


class PaddingError(KvbenchError, ValueError):
    """Prompts of different lengths in one batch: kvbench never pads (masks over evicted or merged caches would be
    inexact), so a batch is refused rather than silently approximated."""


class CompressionProtocol:
    """Prefill → compress → score/generate for one model and one method: batch 1, or a batch of equal-length
    prompts (``prefill_batch`` / ``generate_batch``; never padded).

    ``reference_config`` is the model's config *before* any weight surgery: the
    uncompressed byte count of a request is measured against it.

    The protocol is chosen once, from the method: ``CompressionProtocol(model, method, ...)`` with a single-pass
    method (``method.single_pass``) builds a :class:`SinglePassProtocol` (as ``pathlib.Path`` builds a
    ``PosixPath``), so every caller measures a method under its own protocol.
    """

    def __new__(cls, model=None, method=None, reference_config=None):
        if cls is CompressionProtocol and getattr(method, "single_pass", False):
            cls = SinglePassProtocol
        return super().__new__(cls)

    def __init__(self, model, method, reference_config=None):
        self.model = model
        self.method = method
        self.reference_config = reference_config if reference_config is not None else copy.deepcopy(model.config)
        self.stats = ProtocolStats()
        #: The longest context prefilled so far (for measurements that replay a real sequence).
        self.longest_context: list[int] = []
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device

    # -- primitives -------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, cache, token_ids: Sequence[int], last_logits_only: bool = False) -> torch.Tensor:
        """Run ``token_ids`` through the model on ``cache``; returns logits ``[len, vocab]``
        (``[1, vocab]`` with ``last_logits_only``: prefill and decoding skip the LM head elsewhere,
        as transformers' ``generate`` does)."""
        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self.device)
        return self.forward_batch(cache, ids, last_logits_only)[0]

    @torch.inference_mode()
    def forward_batch(self, cache, ids: torch.Tensor, last_logits_only: bool = False) -> torch.Tensor:
        """Run a batch ``ids`` ``[B, n]`` (equal-length rows, no padding) through the model on ``cache``;
        returns logits ``[B, n, vocab]`` (``[B, 1, vocab]`` with ``last_logits_only``)."""
        extra = {"logits_to_keep": 1} if last_logits_only else {}
        out = self.model(input_ids=ids.to(self.device), cache=cache, use_cache=True, **extra)
        return out.logits

    def batch_ids(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        """``batch`` as a ``[B, n]`` tensor; prompts of different lengths are a :class:`PaddingError`."""
        rows = [list(row) for row in batch]
        lengths = sorted({len(row) for row in rows})
        if not rows or not lengths[0]:
            raise PaddingError("a batch needs at least one prompt of at least one token")
        if len(lengths) > 1:
            raise PaddingError(
                f"a batch of prompts of {', '.join(map(str, lengths))} tokens would need padding, which kvbench does "
                "not support: masks over evicted or merged caches would be inexact (give prompts of equal length)")
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def measure(self, cache, n_tokens: int, batch: int = 1) -> tuple[int, int]:
        """``(stored, full)`` bytes for a cache of ``batch`` sequences that has seen ``n_tokens`` tokens each;
        tracks the peak."""
        stored = cache_nbytes(cache)
        full = batch * full_cache_nbytes(self.reference_config, n_tokens, self.dtype)
        self._track_peak(stored, full)
        return stored, full

    def _track_peak(self, stored: int, full: int) -> None:
        if stored > self.stats.peak_stored_bytes:
            self.stats.peak_stored_bytes, self.stats.peak_full_bytes = stored, full

    def prefill(self, token_ids: Sequence[int], chunk: int | None = None):
        """A fresh cache holding ``token_ids``, compressed by the method (after each chunk if streaming)."""
        if not token_ids:
            return self.method.new_cache(self.model)
        if len(token_ids) > len(self.longest_context):
            self.longest_context = list(token_ids)
        return self._prefill(torch.tensor([list(token_ids)], dtype=torch.long, device=self.device), chunk)

    def prefill_batch(self, batch: Sequence[Sequence[int]], chunk: int | None = None, then: int = 0):
        """A fresh cache holding ``B`` equal-length prompts (a ``[B, n]`` batch, no padding), compressed by the
        method. Every row equals a batch-1 :meth:`prefill` of that prompt (tested per method). ``then``: the
        tokens that will follow, so a preallocating cache reserves ``n + then`` slots (``KVCache.reserve``)."""
        ids = self.batch_ids(batch)
        if ids.shape[1] > len(self.longest_context):
            self.longest_context = ids[0].tolist()
        return self._prefill(ids, chunk, then)

    def _prefill(self, ids: torch.Tensor, chunk: int | None, then: int = 0):
        cache = self.method.new_cache(self.model)
        batch, n = ids.shape
        if then and hasattr(cache, "reserve"):
            cache.reserve(n + then)
        start = time.perf_counter()
        step = chunk or n
        for i in range(0, n, step):
            self.forward_batch(cache, ids[:, i : i + step], last_logits_only=True)
            self.method.compress(cache)
        seconds = time.perf_counter() - start
        for note in cache.notes() if hasattr(cache, "notes") else ():
            self.stats.notes[note] = self.stats.notes.get(note, 0) + 1
        self._count_prefill(cache, n, batch, seconds)
        return cache

    def _count_prefill(self, cache, n_tokens: int, batch: int, seconds: float) -> None:
        """Add a prefill of ``batch`` × ``n_tokens`` tokens to the stats: its time, tokens and the bytes its cache
        holds (a cache that holds nothing is a :class:`CacheNotWrittenError`)."""
        self.stats.prefill_s += seconds
        self.stats.prefill_tokens += batch * n_tokens
        self.stats.n_prefills += batch
        stored, full = self.measure(cache, n_tokens, batch)
        check_cache_written(cache, n_tokens, stored, getattr(self.method, "name", type(self.method).__name__))
        self.stats.add_bytes(stored, full, "prefills", batch)

    # -- scoring ------------------------------------------------------------------------------
    def score_continuations(self, context: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[tuple[float, bool]]:
        """Log-likelihood and greedy-match of each continuation after one shared, compressed context.

        ``context`` must be non-empty. Its last token is fed with the continuation so every
        scored position sees the compressed cache.

        A cache that a crop puts back exactly (``cache.is_croppable``, no sliding layer: the plain caches of ``full``
        and the head methods) is never copied: the continuations of one length are scored in one forward of that
        many rows (no padding) and the cache is cropped back to the context after it, so a context costs one
        prefill and one forward per distinct continuation length, as few forwards as lm-eval's ``hf`` model's one
        per request or fewer. Any other cache (one that evicts, merges or quantizes while it scores) is deep-copied
        per continuation. The peak bytes are per sequence either way.
        """
        cache = self.prefill(context[:-1])
        if len(context) > 1 and rewinds_exactly(cache):
            return self._score_rewinding(cache, context, continuations)
        results = []
        for i, continuation in enumerate(continuations):
            own = cache if i == len(continuations) - 1 else copy.deepcopy(cache)
            logits = self.forward(own, [context[-1], *continuation[:-1]])
            self.stats.scored_tokens += len(continuation)
            results.append(_continuation_logprob(logits, continuation))
            self.measure(own, len(context) + len(continuation) - 1)
        return results

    def _score_rewinding(self, cache, context: Sequence[int], continuations: Sequence[Sequence[int]]):
        """:meth:`score_continuations` on a cache that ``crop`` rewinds: each group of equal-length continuations in
        one batched forward on the cache repeated to that many rows, then cropped and cut back to one row."""
        by_length: dict[int, list[int]] = {}
        for i, continuation in enumerate(continuations):
            by_length.setdefault(len(continuation), []).append(i)
        results: list = [None] * len(continuations)
        for length, indices in by_length.items():
            rows = len(indices)
            if rows > 1:
                cache.batch_repeat_interleave(rows)
            ids = self.batch_ids([[context[-1], *continuations[i][:-1]] for i in indices])
            logits = self.forward_batch(cache, ids)
            for row, i in enumerate(indices):
                results[i] = _continuation_logprob(logits[row], continuations[i])
            self.stats.scored_tokens += rows * length
            self._track_peak(cache_nbytes(cache) // rows,
                             full_cache_nbytes(self.reference_config, len(context) + length - 1, self.dtype))
            cache.crop(-length)
            if rows > 1:
                cache.batch_select_indices(torch.zeros(1, dtype=torch.long, device=self.device))
        return results

    def stream_logprob(self, context: Sequence[int], continuation: Sequence[int], chunk: int) -> float:
        """Sum of log-probs of ``continuation`` streamed through the cache ``chunk`` tokens at a time,
        compressing after each chunk (perplexity; ``chunk=1`` is exact token-by-token decoding). A window with no
        context to prefill (lm-eval's rolling windows) counts the bytes its cache holds at the window's end, so a
        perplexity run has a compression ratio too."""
        cache = self.prefill(context[:-1])
        inputs = [context[-1], *continuation[:-1]]
        total = 0.0
        seen = len(context) - 1
        for i in range(0, len(inputs), chunk):
            logits = self.forward(cache, inputs[i : i + chunk])
            total += _continuation_logprob(logits, continuation[i : i + chunk])[0]
            seen += len(inputs[i : i + chunk])
            self.method.compress(cache)
        self.stats.scored_tokens += len(continuation)
        stored, full = self.measure(cache, seen)
        if len(context) <= 1:  # nothing prefilled (a rolling window): the window's bytes at its end are its bytes
            self.stats.add_bytes(stored, full, "windows")
        return total

    # -- generation ---------------------------------------------------------------------------
    def generate(
        self,
        context: Sequence[int],
        max_new_tokens: int,
        stop: Callable[[list[int]], bool] | None = None,
        eos_token_ids: Sequence[int] = (),
        query: Sequence[int] = (),
        query_aware: bool = False,
    ) -> list[int]:
        """Greedy decoding after a compressed context.

        ``query`` tokens (e.g. a question kept apart from the document, as RULER and
        LongBench-style tasks want) are fed after compression, uncompressed by design of
        the protocol, followed by greedy decoding (query-agnostic). With ``query_aware``
        they are part of the compressed prompt instead: everything but the prompt's last
        token is prefilled and compressed. Stops at ``max_new_tokens``, an EOS id, or when
        ``stop(generated_ids)`` is true.
        """
        cache, pending = self.prefill_prompt(context, query, query_aware)
        return self.decode(cache, pending, max_new_tokens, stop, eos_token_ids)

    def prefill_prompt(self, context: Sequence[int], query: Sequence[int] = (), query_aware: bool = False):
        """``(cache, pending)``: the part of ``context + query`` that :meth:`generate` compresses, prefilled, and the
        tokens it feeds afterwards (the query when it is kept apart, else the prompt's last token)."""
        prompt = list(context) + list(query)
        split = len(context) if query and not query_aware else len(prompt) - 1
        return self.prefill(prompt[:split]), prompt[split:]

    def decode(self, cache, pending: Sequence[int], max_new_tokens: int,
               stop: Callable[[list[int]], bool] | None = None, eos_token_ids: Sequence[int] = ()) -> list[int]:
        """Greedy decoding on an existing ``cache``: feed ``pending`` (≥ 1 token), then one token per step. The
        bytes are measured after every step (its decode-time compression included): the generation's peak and
        final bytes go to the stats."""
        self._note_decode_budget(cache.get_seq_length() + len(pending) + max_new_tokens - 1)
        pending = list(pending)
        generated: list[int] = []
        eos = set(eos_token_ids)
        peak, measuring = 0, 0.0
        start = time.perf_counter()
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                logits = self.forward(cache, pending, last_logits_only=True)
                tick = time.perf_counter()
                peak = max(peak, self.measure(cache, cache.get_seq_length())[0])  # after the step's compression
                measuring += time.perf_counter() - tick
                token = int(logits[-1].argmax())
                generated.append(token)
                if token in eos or (stop is not None and stop(generated)):
                    break
                pending = [token]
        self.stats.decode_s += time.perf_counter() - start - measuring  # decoding, not the byte counting
        self.stats.decode_tokens += len(generated)
        final, _ = self.measure(cache, cache.get_seq_length())
        self.stats.add_generation(peak, final)
        return generated

    def _note_decode_budget(self, longest: int) -> None:
        """Warn (a note in the record) when the method's decode budget can never be reached by this generation:
        ``decode_budget_tokens`` ≥ prompt + ``max_new_tokens``, so decoding keeps every token (allowed: that is
        the identity run, equal to full)."""
        tokens = getattr(self.method, "decode_budget_tokens", None)
        if tokens is not None and tokens >= longest:
            note = (f"{self.method.name}: decode_budget_tokens={tokens} >= prompt + max_new_tokens ({longest}): "
                    "never reached, decoding kept every token")
            self.stats.notes[note] = self.stats.notes.get(note, 0) + 1

    def generate_batch(self, contexts: Sequence[Sequence[int]], max_new_tokens: int, eos_token_ids: Sequence[int] = (),
                       return_logits: bool = False, forced: Sequence[Sequence[int] | None] | None = None):
        """Greedy decoding of ``B`` equal-length contexts at once (no padding: a :class:`PaddingError` otherwise).

        Row ``i`` of the result equals ``generate(contexts[i], max_new_tokens, eos_token_ids=...)``: each row stops
        at its first EOS (kept, as :meth:`generate` keeps it), the batch when every row has stopped. With
        ``return_logits`` also the last-position logits of every step ``[B, steps, vocab]``.

        ``forced[i]``, when given for row ``i``, teacher-forces that row instead: it is fed those tokens, not its
        own argmax, and stops after them (its result row is ``forced[i]``; its logits are the predictions of their
        positions, as :func:`kvbench.eval.fidelity.teacher_forced_logprobs` gives them). A method's own generation
        and its predictions on another's output then run as rows of one batch (``suite=longgen``'s ``batch``)."""
        ids = self.batch_ids(contexts)
        batch = ids.shape[0]
        forced = [None] * batch if forced is None else [None if f is None else list(f) for f in forced]
        if len(forced) != batch or any(f is not None and not 1 <= len(f) <= max_new_tokens for f in forced):
            raise ValueError(f"forced: one entry per context ({batch}), each None or 1..max_new_tokens "
                             f"({max_new_tokens}) tokens")
        cache = self.prefill_batch(ids[:, :-1].tolist()) if ids.shape[1] > 1 else self.method.new_cache(self.model)
        pending = ids[:, -1:]
        eos = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long, device=self.device)
        free = torch.tensor([f is None for f in forced], dtype=torch.bool, device=self.device)
        rows = [i for i, f in enumerate(forced) if f is not None]
        following = torch.zeros(batch, max_new_tokens, dtype=torch.long, device=self.device)
        ends = torch.full((batch,), max_new_tokens, dtype=torch.long, device=self.device)
        for i in rows:
            following[i, :len(forced[i])] = torch.tensor(forced[i], dtype=torch.long)
            ends[i] = len(forced[i])
        stopped = torch.zeros(batch, dtype=torch.bool, device=self.device)
        steps, logits_seen = [], []
        self._note_decode_budget(ids.shape[1] + max_new_tokens)
        peak, measuring = 0, 0.0
        start = time.perf_counter()
        with torch.inference_mode():
            for step in range(max_new_tokens):
                logits = self.forward_batch(cache, pending, last_logits_only=True)[:, -1]
                tick = time.perf_counter()
                peak = max(peak, self.measure(cache, cache.get_seq_length(), batch)[0])
                measuring += time.perf_counter() - tick
                tokens = torch.where(free, logits.argmax(-1), following[:, step])
                steps.append(tokens)
                if return_logits:
                    logits_seen.append(logits)
                stopped |= (free & torch.isin(tokens, eos)) | (step + 1 >= ends)
                if bool(stopped.all()):
                    break
                pending = tokens[:, None]
        self.stats.decode_s += time.perf_counter() - start - measuring
        generated = []
        for i, row in enumerate(torch.stack(steps, dim=1).tolist()):
            cut = next((k + 1 for k, token in enumerate(row) if token in set(eos_token_ids)), len(row))
            generated.append(row[:cut] if forced[i] is None else forced[i])
        self.stats.decode_tokens += sum(map(len, generated))
        final, _ = self.measure(cache, ids.shape[1] + len(steps) - 1, batch)
        self.stats.add_generation(peak, final, batch)
        return (generated, torch.stack(logits_seen, dim=1)) if return_logits else generated


class SinglePassProtocol(CompressionProtocol):
    """The protocol of a single-pass method (``method.single_pass``: H2O's masking simulation, ``h2o
    protocol=simulate``), measured as its paper did: each request's whole sequence goes through ONE forward on a
    fresh cache (the method masks attention inside it) and its continuation's log-probs are read from that forward;
    generation re-runs the whole sequence once per new token. Nothing is compressed, so bytes are full bytes, and
    there is no cache to fill in batches."""

    def __init__(self, model, method, reference_config=None):
        if not getattr(method, "single_pass", False):
            raise TypeError(f"SinglePassProtocol measures single-pass methods only; method="
                            f"{getattr(method, 'name', method)!r} compresses its cache: use CompressionProtocol")
        super().__init__(model, method, reference_config)

    def prefill_batch(self, batch: Sequence[Sequence[int]], chunk: int | None = None, then: int = 0):
        raise SinglePassError(f"method={self.method.name} protocol=simulate scores each request in one masked "
                              "forward: it has no cache to fill in batches (use protocol=real)")

    def score_continuations(self, context: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[tuple[float, bool]]:
        """Each continuation scored in one forward over context + continuation."""
        return [self._score(context, continuation) for continuation in continuations]

    def stream_logprob(self, context: Sequence[int], continuation: Sequence[int], chunk: int) -> float:
        """The whole window scored in one forward (``chunk`` does not apply)."""
        return self._score(context, continuation)[0]

    def generate(self, context: Sequence[int], max_new_tokens: int, stop: Callable[[list[int]], bool] | None = None,
                 eos_token_ids: Sequence[int] = (), query: Sequence[int] = (), query_aware: bool = False) -> list[int]:
        """Greedy decoding where every step re-runs the whole sequence (the simulation's mask depends on it); the
        query is part of the one sequence, so ``query_aware`` changes nothing."""
        prompt = list(context) + list(query)
        generated: list[int] = []
        eos = set(eos_token_ids)
        logits = self._one_pass(prompt, last_logits_only=True)
        start = time.perf_counter()
        with torch.inference_mode():
            for step in range(max_new_tokens):
                if step:
                    logits = self.forward(self.method.new_cache(self.model), prompt + generated, last_logits_only=True)
                token = int(logits[-1].argmax())
                generated.append(token)
                if token in eos or (stop is not None and stop(generated)):
                    break
        self.stats.decode_s += time.perf_counter() - start
        self.stats.decode_tokens += len(generated)
        return generated

    def _one_pass(self, token_ids: Sequence[int], last_logits_only: bool = False) -> torch.Tensor:
        """``token_ids`` in one forward on a fresh cache, measured like a prefill; returns the logits."""
        cache = self.method.new_cache(self.model)
        if len(token_ids) > len(self.longest_context):
            self.longest_context = list(token_ids)
        start = time.perf_counter()
        logits = self.forward(cache, token_ids, last_logits_only=last_logits_only)
        self._count_prefill(cache, len(token_ids), 1, time.perf_counter() - start)
        return logits

    def _score(self, context: Sequence[int], continuation: Sequence[int]) -> tuple[float, bool]:
        logits = self._one_pass([*context, *continuation[:-1]])
        self.stats.scored_tokens += len(continuation)
        return _continuation_logprob(logits[len(context) - 1:], continuation)


def rewinds_exactly(cache) -> bool:
    """Whether ``cache.crop`` puts ``cache`` back exactly as it was before a forward: every layer croppable
    (transformers' ``is_croppable``; kvbench's evicting, merging and quantizing layers are not) and none sliding (a
    sliding window may already have dropped what a crop would need)."""
    return bool(getattr(cache, "is_croppable", False)) and not any(getattr(cache, "is_sliding", None) or [])


def _continuation_logprob(logits: torch.Tensor, continuation: Sequence[int]) -> tuple[float, bool]:
    """Sum of log-softmax at the continuation's tokens, and whether each is the argmax."""
    logprobs = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(list(continuation), device=logits.device)
    picked = logprobs.gather(-1, target[:, None])[:, 0]
    greedy = bool((logprobs.argmax(-1) == target).all())
    return float(picked.sum()), greedy
