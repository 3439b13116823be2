"""``duo_attention``: retrieval heads keep every token, streaming heads only sink + recent tokens (Xiao et al. 2024,
"DuoAttention: Efficient Long-Context LLM Inference with Retrieval and Streaming Heads", arXiv:2410.10819), on the
ragged per-KV-head cache: a streaming head really holds ``sink_tokens + recent_tokens`` tokens, prefill and
decoding alike (kvpress's masked heads are fixed at prefill and keep every generated token).

The pattern -- which KV heads stream -- comes from a short calibration on the local corpus, not from the authors'
trained gates (:mod:`kvbench.cache.streaming_heads` states the rule and how it differs): ``calibration_sequences``
sequences of ``calibration_length`` tokens (:func:`kvbench.surgery.calibration.calibration_ids`), each layer's mean
pre-RoPE query and key, the reach score of every KV head, the ``⌊sparsity·L·H⌋`` lowest become streaming heads.
The scores are cached on disk like the SVD-GQA projections and the LoRA adapter
(``$KVBENCH_CACHE_DIR/duo_attention``), keyed by the model, the corpus and the calibration settings.

The prefill forward attends over every token in every head (as kvpress: the prompt is uniform until the trim);
afterwards each forward appends, trims the streaming heads, then attends, so a streaming head attends to at most
``sink_tokens + recent_tokens`` tokens, its new one included (the paper's streaming attention at decode; in a
multi-token forward the earliest new queries see fewer than ``recent_tokens`` older tokens).

Parameters: ``sparsity`` (fraction of KV heads that stream, default 0.5, the authors' evaluation), ``sink_tokens``
(64) and ``recent_tokens`` (256) -- the authors' deployment window --, ``calibration`` (``pydoc`` or a local
.txt/.jsonl path), ``calibration_sequences`` (8), ``calibration_length`` (512), ``positions`` (500, kvpress's),
``seed``, ``reuse_calibration`` (true).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from fractions import Fraction
from math import floor

import torch

from kvbench.cache.attention_scores import request_scores
from kvbench.cache.eviction import num_layers
from kvbench.cache.expected_attention import unrotated_queries
from kvbench.cache.ragged import RaggedCache, RaggedLayer
from kvbench.cache.streaming_heads import reach_scores, streaming_heads
from kvbench.config import cache_root
from kvbench.corpus import CorpusError, check_source, corpus_fingerprint
from kvbench.methods.base import Method, MethodConfigError, ScoredAttention, register
from kvbench.methods.expected_attention import rotary_of
from kvbench.surgery.calibration import CalibrationSpec, calibration_ids, model_fingerprint

FORMAT_VERSION = 1


@register
@dataclass
class DuoAttention(ScoredAttention, Method):
    axis = "tokens"
    name: str = "duo_attention"
    sparsity: float = 0.5
    sink_tokens: int = 64
    recent_tokens: int = 256
    calibration: str = "pydoc"
    calibration_sequences: int = 8
    calibration_length: int = 512
    positions: int = 500
    seed: int = 0
    reuse_calibration: bool = True

    def __post_init__(self):
        if not 0 <= self.sparsity <= 1:
            raise MethodConfigError(f"method.sparsity={self.sparsity} must lie in [0, 1] (the fraction of KV heads "
                                    "that stream)")
        for field in ("sink_tokens", "recent_tokens"):
            if getattr(self, field) < 0:
                raise MethodConfigError(f"method.{field}={getattr(self, field)} must be a token count >= 0")
        for field in ("calibration_sequences", "calibration_length", "positions"):
            if getattr(self, field) < 1:
                raise MethodConfigError(f"method.{field}={getattr(self, field)} must be an integer >= 1")
        if not self.calibration:
            raise MethodConfigError("method.calibration is empty: duo_attention finds its streaming heads by a "
                                    "calibration on a corpus (give 'pydoc' or a local .txt/.jsonl path)")
        try:
            check_source(self.calibration)
        except CorpusError as err:
            raise MethodConfigError(f"method.calibration: {err}") from None
        self.streaming: list[list[bool]] | None = None

    def apply(self, model, tokenizer=None):
        model = super().apply(model, tokenizer)
        if tokenizer is None:
            raise MethodConfigError("method=duo_attention calibrates on text: apply(model, tokenizer) needs the tokenizer")
        scores = load_or_find_scores(model, tokenizer, self)
        count = floor(Fraction(str(self.sparsity)) * scores.numel())
        self.streaming = streaming_heads(scores, count).tolist()
        return model

    def new_cache(self, model) -> RaggedCache:
        self.require_scoring(model)
        if self.streaming is None:
            raise RuntimeError("method=duo_attention: call method.apply(model, tokenizer) first (it finds the pattern)")
        return RaggedCache(layers=[DuoLayer(row, self.sink_tokens, self.recent_tokens) for row in self.streaming])


class DuoLayer(RaggedLayer):
    """Retrieval heads keep everything; streaming heads (``streaming[h]``) keep sink + recent tokens, always."""

    method = "duo_attention"

    def __init__(self, streaming: list[bool], sink: int, recent: int):
        super().__init__()
        self.streaming, self.sink, self.recent = streaming, sink, recent

    def after_append(self, keys: torch.Tensor, first: bool) -> None:
        store = self.store
        window = self.sink + self.recent
        if not any(self.streaming) or int(store.lengths.max()) <= window:
            return
        rows = store.row_ids()
        lengths = store.lengths.flatten().long()
        offsets = torch.nn.functional.pad(lengths.cumsum(0), (1, 0))[:-1]
        slot = torch.arange(rows.numel(), device=rows.device) - offsets[rows]
        streams = torch.tensor(self.streaming, device=rows.device).repeat(store.lengths.shape[0])[rows]
        keep = ~streams | (slot < self.sink) | (slot >= lengths[rows] - self.recent)
        if not bool(keep.all()):
            self.keep_tokens(keep)


class _MeanCollector(RaggedLayer):
    """Calibration only: sums of the pre-RoPE queries (per query head) and keys (per KV head) of each forward."""

    def __init__(self, inv_freq, rope_scaling):
        super().__init__()
        self.inv_freq, self.rope_scaling = inv_freq, rope_scaling
        self.query_sum = self.key_sum = None
        self.tokens = 0

    def after_append(self, keys: torch.Tensor, first: bool) -> None:
        pre = unrotated_queries(keys, self.inv_freq, self.rope_scaling, 0).sum(dim=(0, 2))  # keys rotate as queries
        self.key_sum = pre if self.key_sum is None else self.key_sum + pre
        self.tokens += keys.shape[0] * keys.shape[2]
        request_scores(self, keys)

    def receive_queries(self, query: torch.Tensor, module) -> None:
        pre = unrotated_queries(query, self.inv_freq, self.rope_scaling, 0).sum(dim=(0, 2))
        self.query_sum = pre if self.query_sum is None else self.query_sum + pre
        self.scale = getattr(module, "scaling", query.shape[-1] ** -0.5)


@torch.no_grad()
def find_scores(model, tokenizer, method: DuoAttention) -> torch.Tensor:
    """Reach scores ``[L, h]`` from the calibration (see :mod:`kvbench.cache.streaming_heads`)."""
    spec = CalibrationSpec(method.calibration, method.calibration_sequences, method.calibration_length, method.seed)
    ids = calibration_ids(tokenizer, spec)
    inv_freq, rope_scaling = rotary_of(model)
    inv_freq = None if inv_freq is None else torch.tensor(inv_freq)
    collectors = [_MeanCollector(inv_freq, rope_scaling) for _ in range(num_layers(model.config))]
    device = next(model.parameters()).device
    for row in ids:
        for layer in collectors:
            layer.reset()  # a fresh sequence; the sums stay
        model(input_ids=row[None].to(device), cache=RaggedCache(layers=collectors), use_cache=True, logits_to_keep=1)
    return torch.stack([reach_scores(c.query_sum.cpu() / c.tokens, c.key_sum.cpu() / c.tokens, inv_freq, rope_scaling,
                                     c.scale, method.positions) for c in collectors])


def load_or_find_scores(model, tokenizer, method: DuoAttention) -> torch.Tensor:
    """:func:`find_scores`, or the scores an earlier run saved under the same key."""
    if not method.reuse_calibration:
        return find_scores(model, tokenizer, method)
    meta = dict(version=FORMAT_VERSION, model=model_fingerprint(model), tokenizer=[type(tokenizer).__name__,
                len(tokenizer)], source=method.calibration, corpus=corpus_fingerprint(method.calibration),
                sequences=method.calibration_sequences, length=method.calibration_length, seed=method.seed,
                positions=method.positions)
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:24]
    path = cache_root() / "duo_attention" / f"pattern-{key}.json"
    if path.exists():
        return torch.tensor(json.loads(path.read_text())["scores"])
    scores = find_scores(model, tokenizer, method)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(dict(meta, scores=scores.tolist())))
    os.replace(tmp, path)
    return scores
