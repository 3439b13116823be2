"""What the protocol measures in a run (:class:`ProtocolStats`: bytes taken from the cache, prefill and decode
speed) and the check that a method's cache was written at all (:func:`check_cache_written`): a method that
silently stopped caching must never produce a number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from kvbench.errors import KvbenchError


class CacheNotWrittenError(KvbenchError, RuntimeError):
    """The model ran, but the method's cache holds nothing (or fewer tokens than it was given).

    A method that silently stopped caching (e.g. a replacement attention that no longer receives
    the cache after an upstream rename) must never produce a number."""


@dataclass
class ProtocolStats:
    """What one run measured. Bytes are sums over requests, taken right after context compression."""

    n_prefills: int = 0
    prefill_tokens: int = 0
    prefill_s: float = 0.0
    decode_tokens: int = 0
    decode_s: float = 0.0
    scored_tokens: int = 0
    full_bytes: int = 0
    stored_bytes: int = 0
    peak_stored_bytes: int = 0
    peak_full_bytes: int = 0
    #: Generations measured after every decode step (the step's compression included): their largest cache (the
    #: most over all generations), the cache each one ended with (summed), and how many.
    peak_decode_stored_bytes: int = 0
    final_decode_stored_bytes: int = 0
    generations: int = 0
    #: What the caches had to adapt (e.g. PyramidKV's clamped budgets): ``{note: prefills it applied to}``.
    notes: dict = field(default_factory=dict)
    #: What the byte sums count: ``{"prefills": n, "windows": m}`` (caches after context compression, streamed
    #: perplexity windows at their end).
    counted: dict = field(default_factory=dict)

    def add_bytes(self, stored: int, full: int, what: str, sequences: int = 1) -> None:
        """Add the bytes of ``sequences`` requests (stored, and an uncompressed cache's for the same tokens) to the
        sums."""
        self.stored_bytes += stored
        self.full_bytes += full
        self.counted[what] = self.counted.get(what, 0) + sequences

    def add_generation(self, peak: int, final: int, sequences: int = 1) -> None:
        """A generation (of ``sequences`` rows) measured step by step: its peak and final stored bytes."""
        self.peak_decode_stored_bytes = max(self.peak_decode_stored_bytes, peak)
        self.final_decode_stored_bytes += final
        self.generations += sequences

    def aggregation(self) -> str | None:
        """How the ratio was aggregated, in words (the record's ``kv.aggregation``)."""
        if not self.counted:
            return None
        parts = {"prefills": "{} prefilled sequence(s) (the cache after context compression)",
                 "windows": "{} streamed perplexity window(s) (the cache at the window's end)"}
        counted = " and ".join(parts[k].format(v) for k, v in sorted(self.counted.items()))
        return f"sum of full bytes / sum of stored bytes over {counted}"

    @property
    def ratio(self) -> float | None:
        return self.full_bytes / self.stored_bytes if self.stored_bytes else None

    def kv_summary(self) -> dict:
        """The record's ``kv`` field: bytes measured from the cache, and the compression ratio."""
        summary = {"full_bytes": self.full_bytes, "stored_bytes": self.stored_bytes, "ratio": self.ratio,
                   "peak_stored_bytes": self.peak_stored_bytes, "peak_full_bytes": self.peak_full_bytes}
        if self.generations:
            summary.update(peak_decode_stored_bytes=self.peak_decode_stored_bytes,
                           final_decode_stored_bytes=self.final_decode_stored_bytes, generations=self.generations)
        if self.notes:
            summary["notes"] = dict(self.notes)
        if self.counted:
            summary["aggregation"] = self.aggregation()
        return summary

    def speed_summary(self) -> dict:
        """Prefill and decode speed over the run (prefill includes compression)."""
        return {"prefill_tok_s": self.prefill_tokens / self.prefill_s if self.prefill_s else None,
                "decode_tok_s": self.decode_tokens / self.decode_s if self.decode_s else None,
                "decode_ms_per_token": 1000 * self.decode_s / self.decode_tokens if self.decode_tokens else None}

    def summary(self) -> dict:
        return {**asdict(self), **self.kv_summary(), **self.speed_summary()}


def check_cache_written(cache, n_tokens: int, stored: int, method_name: str) -> None:
    """Raise :class:`CacheNotWrittenError` unless ``cache`` saw ``n_tokens`` tokens in every layer and holds bytes.

    Every kvbench cache reports the *logical* length (tokens seen, evicted or not) as its sequence length,
    so this holds for compressing caches too; a layer that was never updated is not initialised."""
    layers = getattr(cache, "layers", [])
    idle = [i for i, layer in enumerate(layers) if not getattr(layer, "is_initialized", True)]
    seen = cache.get_seq_length()
    if stored > 0 and seen == n_tokens and not idle:
        return
    what = f"{stored} bytes and reports {seen} tokens seen"
    if idle:
        what += f"; layers {idle[:8]}{'...' if len(idle) > 8 else ''} were never written"
    raise CacheNotWrittenError(
        f"method={method_name}: after prefilling {n_tokens} tokens the KV cache holds {what}. The model ran "
        "without filling its cache, so no result is recorded (is the installed transformers the locked "
        "version? see `make setup`)")
