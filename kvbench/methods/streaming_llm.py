"""``streaming_llm``: attention sinks + a recent window (Xiao et al. 2024, "Efficient Streaming Language
Models with Attention Sinks"), with real eviction (METHODS.md §7).

Every (layer, KV head) keeps the first ``sink_tokens`` tokens -- the attention sinks -- and the most recent
tokens up to its budget. Eviction reads no attention, so it happens inside ``update`` and any attention
implementation works: the forward attends over every stored token plus the new ones (prefill attention is
exact), and the layer then stores only the sinks and the last ``budget − sinks`` tokens (by logical position:
at a decode step the new token takes the slot of the token that left the window, in place). That holds at the
end of the prefill and at every decode step, so the cache never holds more than its budget between forwards.

Positions: the paper re-indexes positions inside the cache to run past the training length; as a
compression baseline (like kvpress) kvbench keeps every token's original position, so a kept token keeps
its rotation and a new token's position is the number of tokens seen.

Parameters:

* ``budget_ratio`` / ``budget_tokens`` -- tokens kept per (layer, KV head): ⌊budget_ratio·P⌋ of the
  prompt (P = tokens of the first forward; exact floor) or a count. Give one (set the other to null);
  both null = ratio 0.2. Fixed once the prompt is seen (decoding and streamed chunks keep it).
* ``sink_tokens`` -- the first tokens always kept (default 4, the paper's); 0 is a plain recent window.
  A ``budget_tokens`` must leave room for at least one recent token; a ratio that leaves none
  (``⌊r·P⌋ ≤ sink_tokens``, very short prompts) keeps ``budget − 1`` sinks and the newest token, and says
  so in the record.
* ``decode_budget_tokens`` / ``decode_budget_ratio`` / ``compress_every`` -- compression while decoding
  (:mod:`kvbench.cache.decode_budget`), independent of the prefill budget. The paper's rule has no scores to
  rescore, so kvpress's ``DecodingPress`` rule ("rescore, keep the target") reduces to the same window: every
  ``compress_every`` steps, keep the sinks and the newest ``target − sinks`` tokens, chosen by logical position.
  Both null (default): decoding holds the prefill budget at every step, as above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from kvbench.cache.decode_budget import DecodeBudget, decode_budget_of
from kvbench.cache.eviction import BudgetCache, BudgetLayer, TokenBudget, keep_newest_and_top, num_layers
from kvbench.methods.base import Method, MethodConfigError, check_full_attention, register


@register
@dataclass
class StreamingLLM(Method):
    axis = "tokens"
    name: str = "streaming_llm"
    budget_ratio: Optional[float] = None
    budget_tokens: Optional[int] = None
    sink_tokens: int = 4
    decode_budget_tokens: Optional[int] = None
    decode_budget_ratio: Optional[float] = None
    compress_every: int = 1

    def __post_init__(self):
        self.budget()
        decode = self.decoding()
        if decode is not None and decode.tokens is not None and decode.tokens <= self.sink_tokens:
            raise MethodConfigError(
                f"method.decode_budget_tokens={decode.tokens} leaves no recent window beside "
                f"method.sink_tokens={self.sink_tokens} (the decode budget must exceed the sinks)")
        if self.sink_tokens < 0:
            raise MethodConfigError(f"method.sink_tokens={self.sink_tokens} must be a token count >= 0")
        if self.budget_tokens is not None and self.budget_tokens <= self.sink_tokens:
            raise MethodConfigError(
                f"method.budget_tokens={self.budget_tokens} leaves no recent window beside "
                f"method.sink_tokens={self.sink_tokens} (the budget must exceed the sinks)")

    def budget(self) -> TokenBudget:
        return TokenBudget.of(self.budget_ratio, self.budget_tokens)

    def check_model(self, config) -> None:
        check_full_attention(self.name, config)

    def decoding(self) -> DecodeBudget | None:
        return decode_budget_of(self)

    def new_cache(self, model) -> "StreamingLLMCache":
        return StreamingLLMCache.for_model(model.config, self.budget(), self.sink_tokens, self.decoding())


class StreamingLLMLayer(BudgetLayer):
    method = "streaming_llm"

    def __init__(self, budget: TokenBudget, sink_tokens: int = 4, decode: DecodeBudget | None = None):
        super().__init__(budget, decode=decode)
        self.sink_tokens = sink_tokens
        self.sinks: int | None = None

    def resolve_capacity(self, prompt_length: int) -> int:
        capacity = super().resolve_capacity(prompt_length)
        self.sinks = min(self.sink_tokens, capacity - 1)
        if self.sinks < self.sink_tokens:
            self.note = (f"streaming_llm: {self.budget} gave a budget of at most sink_tokens={self.sink_tokens} "
                         f"(short prompt): fewer sinks kept, so the newest token stays")
        return capacity

    def after_append(self, keys: torch.Tensor, first: bool) -> None:
        """Keep the sinks and the newest tokens, by logical position (slots are not in logical order once a
        decode step has evicted in place); no scores. The eviction waits for this forward's attention."""
        n = self.stored_tokens()
        if n > self.capacity:
            positions = self.book.positions
            priority = torch.where(positions < self.sinks, torch.iinfo(positions.dtype).max, positions)
            self.evict_lowest(priority, n - self.capacity, deferred=True)

    def decode_step(self, keys: torch.Tensor, compress: bool) -> None:
        """Sinks + the newest tokens, by logical position, down to the decode target (sinks cut to leave one)."""
        if compress:
            positions = self.book.positions
            sinks = min(self.sink_tokens, self.target - 1)
            is_sink = (positions < sinks).to(torch.float32)
            self.keep(keep_newest_and_top(positions, is_sink, self.target - sinks, self.target))

    def reset(self) -> None:
        super().reset()
        self.sinks = None


class StreamingLLMCache(BudgetCache):
    def __init__(self, num_layers: int, budget: TokenBudget, sink_tokens: int = 4, decode: DecodeBudget | None = None):
        super().__init__(layers=[StreamingLLMLayer(budget, sink_tokens, decode) for _ in range(num_layers)])

    @classmethod
    def for_model(cls, config, budget: TokenBudget, sink_tokens: int = 4,
                  decode: DecodeBudget | None = None) -> "StreamingLLMCache":
        return cls(num_layers(config), budget, sink_tokens, decode)
