"""``kvzip``: keep the pairs the model needs to reconstruct its own context (Kim et al. 2025, arXiv:2505.23416),
with real eviction on the ragged per-KV-head cache. Query-agnostic by construction: the question is never read.

After the context is prefilled (its first forward; later forwards are appended uncompressed), ``compress`` runs the
reconstruction on top of the cache and scores every cached pair (:mod:`kvbench.cache.reconstruction`):

* The context's tokens ``[0, C)`` are split into chunks of ``chunk`` tokens (kvpress 2,048; authors 2,000). The
  reconstruction input of chunk 0 is ``"\\n\\nRepeat the previous context exactly."`` + the chunk; of chunk i > 0,
  ``"\\n\\nRepeat the part of the previous context exactly, starting with"`` + the last 8 tokens of chunk i − 1 +
  the chunk (the authors' prompts). kvbench adds no chat template around it (the authors wrap it in the model's
  assistant header; kvbench's contexts are raw prompts): said here and in the record's method params.
* Each chunk is one forward on the cache at positions C, C + 1, …; every layer records, per context pair, the
  maximum attention the reconstruction queries give it (``group_reduction=max`` over the KV head's query heads,
  the paper's), then drops the reconstruction's own keys and values: the cache is back to the context.
* Budget: ``budget_ratio`` / ``budget_tokens`` per (layer, KV head) on average, the first ``n_sink`` = 4 tokens of
  every head protected. By default the top ``L·H·(B − n_sink)`` scores over (layer, KV head, token) are kept, so
  layers and heads get different budgets (the paper's); ``layerwise=true`` splits each layer's ``H·(B − n_sink)``
  across its heads only. Kept tokens stay in position order.

Cost: one more forward of about C + prompt tokens per chunk, counted in the prefill time the record reports.
The context's token ids are read from the forward itself (a pre-hook on the model, installed by ``apply``) and
dropped once the cache is compressed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from kvbench.cache.attention_scores import request_scores
from kvbench.cache.eviction import TokenBudget, num_layers
from kvbench.cache.head_budgets import keep_top_per_head
from kvbench.cache.ragged import RaggedCache, RaggedLayer
from kvbench.cache.reconstruction import global_budgets, reconstruction_scores
from kvbench.methods.base import Method, MethodConfigError, ScoredAttention, check_group_reduction, register

FIRST_PROMPT = "\n\nRepeat the previous context exactly."
LATER_PROMPT = "\n\nRepeat the part of the previous context exactly, starting with"
OVERLAP = 8


@register
@dataclass
class KVzip(ScoredAttention, Method):
    axis = "tokens"
    name: str = "kvzip"
    budget_ratio: Optional[float] = None
    budget_tokens: Optional[int] = None
    chunk: int = 2048
    n_sink: int = 4
    layerwise: bool = False
    group_reduction: str = "max"

    def __post_init__(self):
        self.budget()
        check_group_reduction(self)
        if self.chunk < 1:
            raise MethodConfigError(f"method.chunk={self.chunk} must be a token count >= 1")
        if self.n_sink < 0 or (self.budget_tokens is not None and self.n_sink > self.budget_tokens):
            raise MethodConfigError(f"method.n_sink={self.n_sink} must lie in [0, method.budget_tokens]")
        self.prompts: tuple[list[int], list[int]] = ([], [])

    def budget(self) -> TokenBudget:
        return TokenBudget.of(self.budget_ratio, self.budget_tokens)

    def apply(self, model, tokenizer=None):
        model = super().apply(model, tokenizer)
        if tokenizer is not None:
            self.prompts = tuple(tokenizer(text, add_special_tokens=False)["input_ids"]
                                 for text in (FIRST_PROMPT, LATER_PROMPT))
        if not getattr(model, "_kvbench_kvzip_hook", False):
            model.register_forward_pre_hook(_record_context, with_kwargs=True)
            model._kvbench_kvzip_hook = True
        return model

    def new_cache(self, model) -> "KVzipCache":
        self.require_scoring(model)
        return KVzipCache([KVzipLayer() for _ in range(num_layers(model.config))], self)


def _record_context(module, args, kwargs):
    """The forward pre-hook ``apply`` installs: a :class:`KVzipCache` learns its context's ids and how to run."""
    cache = kwargs.get("cache")
    ids = kwargs.get("input_ids", args[0] if args else None)
    if isinstance(cache, KVzipCache) and ids is not None:
        cache.record(ids, lambda new_ids: module(input_ids=new_ids, cache=cache, use_cache=True, logits_to_keep=1))


class KVzipLayer(RaggedLayer):
    method = "kvzip"

    def __init__(self):
        super().__init__()
        self.reconstructing = False
        self.context = 0
        self.scores: torch.Tensor | None = None  # [b, h, C], only while compressing
        self.group_reduction = "max"

    def after_append(self, keys: torch.Tensor, first: bool) -> None:
        if first:
            self.context = self.seen
        elif self.reconstructing:
            request_scores(self, keys)  # delivered as queries: receive_queries

    def receive_queries(self, query: torch.Tensor, module) -> None:
        keys, _ = self.store.as_uniform(self.seen)
        scale = getattr(module, "scaling", query.shape[-1] ** -0.5)
        found = reconstruction_scores(query, keys, self.context, scale, self.group_reduction)
        self.scores = found if self.scores is None else torch.maximum(self.scores, found)

    def drop_reconstruction(self) -> None:
        """Remove the reconstruction's keys and values: back to the ``context`` tokens of every row."""
        b, h = self.store.lengths.shape
        kept = torch.zeros(b, h, self.seen, dtype=torch.bool, device=self.store.keys.device)
        kept[..., : self.context] = True
        self.keep_tokens(kept)
        self.seen = self.context

    def reset(self) -> None:
        super().reset()
        self.reconstructing, self.context, self.scores = False, 0, None


class KVzipCache(RaggedCache):
    """KVzip's layers, the context's ids until compression, and the reconstruction pass (``compress``)."""

    def __init__(self, layers: list[KVzipLayer], params: KVzip):
        super().__init__(layers=layers)
        self.params = params
        self.context_ids: list[list[int]] | None = None
        self.run = None
        self.compressed = False
        for layer in layers:
            layer.group_reduction = params.group_reduction

    def record(self, ids: torch.Tensor, run) -> None:
        if self.context_ids is None and not self.compressed:
            self.context_ids, self.run = ids.tolist(), run

    def chunks(self) -> list[list[list[int]]]:
        """The reconstruction inputs, per chunk, for every batch row (see the module docstring)."""
        first, later = self.params.prompts
        out, size = [], self.params.chunk
        for start in range(0, len(self.context_ids[0]), size):
            rows = []
            for ids in self.context_ids:
                prompt = first if start == 0 else later + ids[max(0, start - OVERLAP):start]
                rows.append(prompt + ids[start:start + size])
            out.append(rows)
        return out

    def compress(self) -> None:
        if self.compressed or self.context_ids is None:
            return
        if self.params.budget().resolve(self.layers[0].context) >= self.layers[0].context:  # nothing to evict
            self.context_ids, self.run, self.compressed = None, None, True
            return
        device = self.layers[0].store.keys.device
        for layer in self.layers:
            layer.reconstructing = True
        with torch.no_grad():
            for rows in self.chunks():
                self.run(torch.tensor(rows, dtype=torch.long, device=device))
                for layer in self.layers:
                    layer.drop_reconstruction()
        self.evict()
        self.context_ids, self.run, self.compressed = None, None, True

    def evict(self) -> None:
        context = self.layers[0].context
        budget = self.params.budget().resolve(context)
        sink = min(self.params.n_sink, budget, context)
        scores = [layer.scores[..., sink:] for layer in self.layers]
        if self.params.layerwise:
            counts = [global_budgets([s], budget - sink)[0] for s in scores]
        else:
            counts = global_budgets(scores, budget - sink)
        for layer, s, c in zip(self.layers, scores, counts):
            sinks = torch.ones(*s.shape[:2], sink, dtype=torch.bool, device=s.device)
            layer.keep_tokens(torch.cat([sinks, keep_top_per_head(s, c)], dim=-1))
            layer.reconstructing, layer.scores = False, None
