"""``streaming_llm``: attention sinks + a recent window (Xiao et al. 2024, "Efficient Streaming Language
Models with Attention Sinks"), with real eviction (METHODS.md §7; cache: kvbench/cache/streaming_llm.py).

Every (layer, KV head) keeps the first ``sink_tokens`` tokens and the most recent ones, up to the budget;
the rest is dropped at the end of the prefill and at every decode step. Reads no attention, so any
attention implementation works. Original positions are kept (no re-indexing inside the cache).

Parameters:

* ``budget_ratio`` / ``budget_tokens`` -- tokens kept per (layer, KV head): ⌊budget_ratio·P⌋ of the
  prompt (P = tokens of the first forward; exact floor) or a count. Give one (set the other to null);
  both null = ratio 0.2. Fixed once the prompt is seen (decoding and streamed chunks keep it).
* ``sink_tokens`` -- the first tokens always kept (default 4, the paper's); 0 is a plain recent window.
  A ``budget_tokens`` must leave room for at least one recent token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from kvbench.methods.base import Method, MethodConfigError, check_full_attention, register


@register
@dataclass
class StreamingLLM(Method):
    axis = "tokens"
    name: str = "streaming_llm"
    budget_ratio: Optional[float] = None
    budget_tokens: Optional[int] = None
    sink_tokens: int = 4

    def __post_init__(self):
        self.budget()
        if self.sink_tokens < 0:
            raise MethodConfigError(f"method.sink_tokens={self.sink_tokens} must be a token count >= 0")
        if self.budget_tokens is not None and self.budget_tokens <= self.sink_tokens:
            raise MethodConfigError(
                f"method.budget_tokens={self.budget_tokens} leaves no recent window beside "
                f"method.sink_tokens={self.sink_tokens} (the budget must exceed the sinks)")

    def budget(self):
        from kvbench.cache.eviction import TokenBudget

        return TokenBudget.of(self.budget_ratio, self.budget_tokens)

    def check_model(self, config) -> None:
        check_full_attention(self.name, config)

    def new_cache(self, model):
        from kvbench.cache.streaming_llm import StreamingLLMCache

        return StreamingLLMCache.for_model(model.config, self.budget(), self.sink_tokens)
