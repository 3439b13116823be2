"""Calibration for SVD-GQA: streaming float64 KV covariances, their top eigenvectors, a disk cache;
and SVD-w, the same eigenvectors taken from the weights instead (:func:`weight_bases`).

The keys a model caches are already post-RoPE (Llama family), which is exactly what
SVD-GQA projects (METHODS.md §2), so each calibration batch is run with a plain
``DynamicCache`` and the covariance of every layer's cached keys and values is
accumulated group by group: ``C_i += K_iᵀ K_i`` with ``K_i`` the ``t·d`` concatenated
keys of group i, one row per token. Nothing but the ``[g, t·d, t·d]`` sums is kept.

The projections (``Ψ``, ``Ω`` per layer) are saved under ``$KVBENCH_CACHE_DIR``
(default ``~/.cache/kvbench/calibration``), keyed by model identity, method settings
and corpus fingerprint, so a second run with the same settings skips calibration.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kvbench.config import cache_root
from kvbench.corpus import corpus_fingerprint, load_texts

log = logging.getLogger(__name__)

#: Bump when the stored format or the calibration recipe changes (invalidates old files).
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CalibrationSpec:
    """Which text to calibrate on: corpus source, how many sequences of how many tokens, sampling seed."""

    source: str = "pydoc"
    n_sequences: int = 32
    seq_len: int = 512
    seed: int = 0
    batch_size: int = 4


def cache_dir() -> Path:
    return cache_root() / "calibration"


def calibration_ids(tokenizer, spec: CalibrationSpec) -> torch.Tensor:
    """``[n, seq_len]`` token ids: the corpus as one token stream (documents separated by a blank
    line), cut into non-overlapping chunks, ``n`` of them drawn at random with ``spec.seed``."""
    docs = load_texts(spec.source, split="calibration")
    stream: list[int] = []
    for ids in tokenizer([doc + "\n\n" for doc in docs], add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
    n_chunks = len(stream) // spec.seq_len
    if n_chunks == 0:
        log.warning("calibration corpus %r has only %d tokens (< seq_len=%d): using it as one sequence",
                    spec.source, len(stream), spec.seq_len)
        return torch.tensor([stream], dtype=torch.long)
    if n_chunks < spec.n_sequences:
        log.warning("calibration corpus %r holds only %d sequences of %d tokens (asked for %d): using all",
                    spec.source, n_chunks, spec.seq_len, spec.n_sequences)
    chunks = torch.tensor(stream[: n_chunks * spec.seq_len], dtype=torch.long).view(n_chunks, spec.seq_len)
    order = torch.randperm(n_chunks, generator=torch.Generator().manual_seed(spec.seed))
    return chunks[order[: spec.n_sequences]]


@torch.no_grad()
def kv_covariances(model, input_ids: torch.Tensor, groups: int, batch_size: int = 4, desc: str | None = None):
    """Per layer, ``(C_K, C_V)`` each ``[g, t·d, t·d]`` float64: sums over all calibration tokens of
    the outer products of a group's concatenated (cached, i.e. post-RoPE) keys and values."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    cov_k: list[torch.Tensor] = []
    cov_v: list[torch.Tensor] = []
    from tqdm import tqdm

    # a progress bar: calibrating a 7B model takes minutes (SmolLM2 on 2 CPU cores: about a minute)
    for start in tqdm(range(0, len(input_ids), batch_size), desc=desc or "calibration", unit="batch",
                      disable=desc is None):
        batch = input_ids[start:start + batch_size].to(device)
        cache = DynamicCache(config=model.config)
        model(input_ids=batch, cache=cache, use_cache=True, logits_to_keep=1)
        for layer_idx, layer in enumerate(cache.layers):
            for covs, states in ((cov_k, layer.keys), (cov_v, layer.values)):
                b, h, n, d = states.shape
                x = states.double().view(b, groups, h // groups, n, d).permute(1, 0, 3, 2, 4)
                x = x.reshape(groups, b * n, (h // groups) * d)  # [g, tokens, t·d]
                c = x.transpose(1, 2) @ x
                if len(covs) <= layer_idx:
                    covs.append(c)
                else:
                    covs[layer_idx] += c
    return list(zip(cov_k, cov_v))


def top_eigenvectors(cov: torch.Tensor, k: int) -> torch.Tensor:
    """``[g, k, n]``: for each ``[n, n]`` covariance, its top-``k`` eigenvectors as rows (largest first).

    On CPU the (small) decomposition runs single-threaded: multi-threaded MKL ``eigh`` on a
    busy machine was measured 300x slower (7.6 s vs 0.026 s for 192x192)."""
    threads = torch.get_num_threads()
    if cov.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        _, vecs = torch.linalg.eigh(cov)
    finally:
        torch.set_num_threads(threads)
    return vecs[..., -k:].flip(-1).transpose(-1, -2).contiguous()


@torch.no_grad()
def weight_bases(attn_modules, groups: int, head_dim: int):
    """SVD-w (METHODS.md §2b): per layer ``(Ψ, Ω)``, each ``[g, d, t·d]`` float64: the top-d right singular
    vectors of each group's concatenated key (value) weights ``W_group ∈ R^{D × t·d}``, i.e. the top-d
    eigenvectors of ``W_groupᵀ W_group`` -- SVD-a with the calibration covariance replaced by the identity.
    No text is read. ``attn_modules`` must have separate ``k_proj``/``v_proj`` (BLOOM split first)."""
    bases = []
    for attn in attn_modules:
        pair = []
        for linear in (attn.k_proj, attn.v_proj):
            rows = linear.weight.detach().double().view(groups, -1, linear.in_features)  # [g, t·d, D]
            pair.append(top_eigenvectors(rows @ rows.transpose(1, 2), head_dim).cpu())
        bases.append(tuple(pair))
    return bases


def model_fingerprint(model) -> str:
    """A short hash of the model's identity: its config and a strided sample of a few weights."""
    h = hashlib.sha256()
    config = model.config.to_dict()
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    params = dict(model.named_parameters())
    names = [n for n in params if n.endswith(("k_proj.weight", "v_proj.weight"))] or list(params)
    for name in names[:2] + names[-2:]:
        sample = params[name].detach().flatten()[::97].float().cpu()
        h.update(name.encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def projections_key(model, tokenizer, spec: CalibrationSpec, groups: int) -> str:
    meta = dict(version=FORMAT_VERSION, model=model_fingerprint(model), name=model.config.name_or_path,
                tokenizer=[type(tokenizer).__name__, len(tokenizer)], groups=groups,
                source=spec.source, n_sequences=spec.n_sequences, seq_len=spec.seq_len, seed=spec.seed,
                corpus=corpus_fingerprint(spec.source, "calibration"))
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:24]


def calibrate(model, tokenizer, spec: CalibrationSpec, groups: int, head_dim: int):
    """Run calibration: per layer ``(Ψ, Ω)``, each ``[g, d, t·d]`` float64 (top-d eigenvectors as rows)."""
    t0 = time.perf_counter()
    ids = calibration_ids(tokenizer, spec)
    desc = f"svd_gqa: calibrating on {ids.shape[0]}x{ids.shape[1]} tokens of {spec.source!r}"
    covs = kv_covariances(model, ids, groups, spec.batch_size, desc=desc)
    bases = [(top_eigenvectors(ck, head_dim).cpu(), top_eigenvectors(cv, head_dim).cpu()) for ck, cv in covs]
    log.info("svd_gqa: calibrated on %d tokens (%d x %d) of %r in %.1f s",
             ids.numel(), *ids.shape, spec.source, time.perf_counter() - t0)
    return bases


def load_or_calibrate(model, tokenizer, spec: CalibrationSpec, groups: int, head_dim: int, use_disk: bool = True):
    """:func:`calibrate`, or the projections saved by an earlier run with the same key."""
    if not use_disk:
        return calibrate(model, tokenizer, spec, groups, head_dim)
    path = cache_dir() / f"svd_gqa-{projections_key(model, tokenizer, spec, groups)}.pt"
    if path.exists():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        log.info("svd_gqa: loaded projections from %s (calibration skipped)", path)
        return list(zip(stored["key_basis"], stored["value_basis"]))
    bases = calibrate(model, tokenizer, spec, groups, head_dim)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"key_basis": [k for k, _ in bases], "value_basis": [v for _, v in bases]}, tmp)
    os.replace(tmp, path)
    log.info("svd_gqa: saved projections to %s", path)
    return bases
