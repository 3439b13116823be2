"""Compression while decoding (METHODS_NEXT.md §6): the decode budget every token method shares.

Long generations grow the cache by one token per step while the prompt is short, so a prefill budget alone
saves little there. A :class:`DecodeBudget` says how far a layer compresses *during decoding*, independently of
its prefill budget (either may be off):

* ``tokens`` -- compress down to a fixed count (kvpress's ``DecodingPress(target_size=...)``), or
* ``ratio`` -- down to ``max(1, ⌊ratio·seen⌋)`` of the tokens seen so far (kvpress's
  ``CompressionRatioDecodingPress``, with kvbench's convention: the ratio is the share *kept*);
* ``every`` -- decode steps (forwards after the prefill) between compressions; 1 = every step (H2O's and TOVA's
  per-step rule). Between compressions the cache grows by one token per step, so it holds at most
  ``target + every − 1`` tokens after any forward.

Which tokens are kept is each method's rule (its module's docstring says which and why); this module only
says *when* and *down to how many*. A budget that covers every token compresses nothing: the run equals
``full`` (tested per method).
"""

from __future__ import annotations

from dataclasses import dataclass

from kvbench.cache.h2o import ratio_floor
from kvbench.errors import MethodConfigError

#: The method parameters that describe a decode budget (how a method without a token axis is recognised).
PARAMETERS = ("decode_budget_tokens", "decode_budget_ratio", "compress_every")


@dataclass(frozen=True)
class DecodeBudget:
    """A decode-time target (a count or a ratio of the tokens seen) and the steps between compressions."""

    tokens: int | None = None
    ratio: float | None = None
    every: int = 1

    def __post_init__(self):
        check_every(self.every)
        if self.tokens is not None and self.ratio is not None:
            raise MethodConfigError(
                f"method.decode_budget_tokens={self.tokens} and method.decode_budget_ratio={self.ratio} both set: "
                "give the decode budget either as a token count or as a ratio of the tokens seen (set the other to null)")
        if self.tokens is None and self.ratio is None:
            raise MethodConfigError("no decode budget: set method.decode_budget_tokens or method.decode_budget_ratio")
        if self.tokens is not None and (isinstance(self.tokens, bool) or self.tokens < 1):
            raise MethodConfigError(f"method.decode_budget_tokens={self.tokens} must be a token count >= 1")
        if self.ratio is not None and not (0 < self.ratio <= 1):
            raise MethodConfigError(
                f"method.decode_budget_ratio={self.ratio} must lie in (0, 1] (the share of the tokens seen kept)")

    @classmethod
    def of(cls, tokens: int | None, ratio: float | None, every: int = 1) -> "DecodeBudget | None":
        """The decode budget a method's parameters describe; None (no decode-time compression) when neither
        ``tokens`` nor ``ratio`` is given (``every`` is checked all the same)."""
        check_every(every)
        if tokens is None and ratio is None:
            return None
        return cls(tokens, ratio, every)

    def target(self, seen: int) -> int:
        """Tokens a layer keeps per row after a decode-time compression, having seen ``seen`` tokens."""
        if self.tokens is not None:
            return self.tokens
        return max(1, ratio_floor(self.ratio, seen))

    def due(self, step: int) -> bool:
        """Whether decode step ``step`` (1 = the first forward after the prefill) compresses."""
        return step % self.every == 0

    def __str__(self) -> str:
        size = (f"decode_budget_tokens={self.tokens}" if self.tokens is not None
                else f"decode_budget_ratio={self.ratio}")
        return f"{size}, compress_every={self.every}"


def check_every(every) -> None:
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise MethodConfigError(f"method.compress_every={every!r} must be an integer >= 1 "
                                "(decode steps between compressions; 1 = every step)")


def decode_budget_of(method) -> DecodeBudget | None:
    """The decode budget of a token method's parameters (checked; None when off)."""
    return DecodeBudget.of(method.decode_budget_tokens, method.decode_budget_ratio, method.compress_every)
