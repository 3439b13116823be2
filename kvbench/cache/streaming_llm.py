"""StreamingLLM cache (Xiao et al. 2024, "Efficient Streaming Language Models with Attention Sinks"):
every (layer, KV head) keeps the first ``sink_tokens`` tokens -- the attention sinks -- and the most
recent tokens up to its budget (METHODS.md §7).

Eviction reads no attention, so it happens inside ``update``: the forward attends over every stored
token plus the new ones (prefill attention is exact), and the layer then stores only the sinks and the
last ``budget − sinks`` tokens. That holds at the end of the prefill and at every decode step, so the
cache never holds more than its budget between forwards. Works with every attention implementation.

Positions: the paper re-indexes positions inside the cache to run past the training length; as a
compression baseline (like kvpress) kvbench keeps every token's original position, so a kept token
keeps its rotation and a new token's position is the number of tokens seen.

A budget from a ratio that leaves no room beside the sinks (``⌊r·P⌋ ≤ sink_tokens``, very short prompts)
keeps ``budget − 1`` sinks and the newest token, and says so in the record.
"""

from __future__ import annotations

import torch

from kvbench.cache.eviction import BudgetCache, BudgetLayer, TokenBudget, num_layers, rows


class StreamingLLMLayer(BudgetLayer):
    method = "streaming_llm"

    def __init__(self, budget: TokenBudget, sink_tokens: int = 4):
        super().__init__(budget)
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
        n = self.stored_tokens()
        if n > self.capacity:
            recent = self.capacity - self.sinks
            index = torch.cat([torch.arange(self.sinks), torch.arange(n - recent, n)]).to(keys.device)
            self.keep(rows(index, *keys.shape[:2]))

    def reset(self) -> None:
        super().reset()
        self.sinks = None


class StreamingLLMCache(BudgetCache):
    def __init__(self, num_layers: int, budget: TokenBudget, sink_tokens: int = 4):
        super().__init__(layers=[StreamingLLMLayer(budget, sink_tokens) for _ in range(num_layers)])

    @classmethod
    def for_model(cls, config, budget: TokenBudget, sink_tokens: int = 4) -> "StreamingLLMCache":
        return cls(num_layers(config), budget, sink_tokens)
