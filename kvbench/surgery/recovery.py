"""LoRA recovery after KV-head surgery: the second stage of SVD-GQA (Yu et al. 2024, METHODS.md §2b).

After mean-pool or SVD grouping the model is fine-tuned with LoRA adapters (library ``peft``, imported
lazily: only a run that asks for recovery needs it) on a text corpus for a fixed number of steps, then the
adapters are merged into the weights, so the recovered model is an ordinary model with g KV heads and the
same cache. The paper recovers LLaMA2 on FLANv2; offline the default corpus is the local Python-docs prose
(its ``calibration`` split, disjoint from the held-out prose kvbench scores perplexity on).

Training: next-token cross-entropy on ``batch_size`` sequences of ``seq_len`` tokens per step (non-overlapping
chunks of the corpus as one token stream, drawn with ``seed``, reused in order if the corpus is short),
AdamW at a constant ``lr``, no dropout. A progress bar shows the running loss.

The adapter is cached on disk like the calibration (``$KVBENCH_CACHE_DIR/recovery``), keyed by the model
after surgery (its fingerprint), the surgery settings, every LoRA setting and the corpus fingerprint: a
second run with the same settings loads it and skips training (logged).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass

import torch

from kvbench.config import cache_root
from kvbench.corpus import CorpusError, check_source, corpus_fingerprint
from kvbench.errors import MethodConfigError
from kvbench.surgery.calibration import CalibrationSpec, calibration_ids, model_fingerprint

log = logging.getLogger(__name__)

RECOVERIES = ("none", "lora")
#: Bump when the stored adapter format or the training recipe changes (invalidates old adapters).
FORMAT_VERSION = 1
PEFT_INSTALL = "pip install peft==0.21.2"


@dataclass
class LoRASettings:
    """``method.lora.*``: the recovery's LoRA adapters and training run (used when ``method.recovery=lora``).

    The paper's own LoRA hyperparameters are not in kvbench's notes (PAPERS.md); these defaults are the
    common LoRA settings, sized for a 7B model on one GPU. The ``_mini`` experiments shrink ``steps``,
    ``seq_len`` and ``batch_size`` to fit 2 CPU cores."""

    rank: int = 8
    alpha: float = 16.0
    #: ``all-linear`` (every linear layer but the LM head, peft's shorthand) or comma-separated module names.
    target_modules: str = "all-linear"
    steps: int = 200
    lr: float = 2e-4
    seq_len: int = 512
    batch_size: int = 4
    #: ``pydoc`` (offline), a local ``.txt``/``.jsonl`` path, or a hub dataset name (online; the paper: FLANv2).
    corpus: str = "pydoc"
    seed: int = 0

    def __post_init__(self):
        for name, low in (("rank", 1), ("steps", 1), ("seq_len", 2), ("batch_size", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise MethodConfigError(f"method.lora.{name}={value!r} must be an integer >= {low}")
        if not self.alpha > 0:
            raise MethodConfigError(f"method.lora.alpha={self.alpha} must be > 0 (LoRA scales its update by alpha/rank)")
        if not 0 < self.lr <= 1:
            raise MethodConfigError(f"method.lora.lr={self.lr} must lie in (0, 1] (a learning rate, e.g. 2e-4)")
        if not str(self.target_modules).strip():
            raise MethodConfigError("method.lora.target_modules is empty (give 'all-linear' or e.g. 'q_proj,v_proj')")
        try:
            check_source(self.corpus)
        except CorpusError as err:
            raise MethodConfigError(f"method.lora.corpus: {err}") from None


def lora_settings(recovery: str, lora) -> LoRASettings:
    """Check ``method.recovery`` and turn ``method.lora`` (a dataclass or a mapping from the config) into
    :class:`LoRASettings`, one line per bad value."""
    if recovery not in RECOVERIES:
        raise MethodConfigError(f"method.recovery={recovery!r} is not valid (choose one of: {', '.join(RECOVERIES)})")
    if isinstance(lora, LoRASettings):
        return lora
    lora = dict(lora or {})
    valid = list(LoRASettings.__dataclass_fields__)
    unknown = sorted(set(lora) - set(valid))
    if unknown:
        raise MethodConfigError(f"method.lora has no setting {', '.join(unknown)} (valid: {', '.join(valid)})")
    return LoRASettings(**lora)


def without_unused_lora(params: dict) -> dict:
    """A method's parameters without ``lora`` when ``recovery`` is ``none`` (the settings are unused then)."""
    return {k: v for k, v in params.items() if k != "lora"} if params.get("recovery") == "none" else params


def import_peft():
    """``peft``, or one line saying how to install it."""
    try:
        import peft
    except ImportError:
        raise MethodConfigError(f"method.recovery=lora needs the package peft, which is not installed "
                                f"({PEFT_INSTALL})") from None
    return peft


def recovery_dir():
    return cache_root() / "recovery"


def adapter_key(model, tokenizer, surgery: dict, lora: LoRASettings) -> str:
    """Model after surgery + surgery settings + LoRA settings + corpus content: the adapter's cache key."""
    meta = dict(version=FORMAT_VERSION, model=model_fingerprint(model), name=model.config.name_or_path,
                tokenizer=[type(tokenizer).__name__, len(tokenizer)], surgery=surgery, lora=asdict(lora),
                corpus=corpus_fingerprint(lora.corpus, "calibration"))
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _lora_config(peft, lora: LoRASettings):
    targets = lora.target_modules if lora.target_modules == "all-linear" else [
        name.strip() for name in lora.target_modules.split(",") if name.strip()]
    return peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=targets, lora_dropout=0.0,
                           bias="none")


def recover(model, tokenizer, surgery: dict, lora: LoRASettings, use_disk: bool = True):
    """Fine-tune ``model`` (after head surgery) with LoRA, or load the cached adapter; return the model with the
    adapter merged into its weights (a plain model: the cache and attention are unchanged)."""
    if tokenizer is None:
        raise MethodConfigError("method.recovery=lora needs the model's tokenizer (to read the corpus)")
    peft = import_peft()
    path = recovery_dir() / f"lora-{adapter_key(model, tokenizer, surgery, lora)}.pt" if use_disk else None
    wrapped = peft.get_peft_model(model, _lora_config(peft, lora))
    if path is not None and path.exists():
        peft.set_peft_model_state_dict(wrapped, torch.load(path, map_location="cpu", weights_only=True))
        log.info("lora recovery: loaded the adapter from %s (training skipped)", path)
    else:
        train(wrapped, tokenizer, lora)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            state = {k: v.detach().cpu() for k, v in peft.get_peft_model_state_dict(wrapped).items()}
            torch.save(state, tmp)
            os.replace(tmp, path)
            log.info("lora recovery: saved the adapter to %s", path)
    merged = wrapped.merge_and_unload()
    merged.eval()
    return merged


def train(model, tokenizer, lora: LoRASettings) -> list[float]:
    """``lora.steps`` AdamW steps of next-token loss on the corpus; returns the loss of every step."""
    from tqdm import tqdm

    spec = CalibrationSpec(lora.corpus, lora.steps * lora.batch_size, lora.seq_len, lora.seed)
    ids = calibration_ids(tokenizer, spec)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lora.lr, weight_decay=0.0)
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(range(lora.steps), desc=f"lora recovery ({lora.steps} steps of {lora.batch_size}x{lora.seq_len} "
                                       f"tokens of {lora.corpus!r})", unit="step")
    with torch.enable_grad():
        for step in bar:
            rows = torch.arange(step * lora.batch_size, (step + 1) * lora.batch_size) % len(ids)
            batch = ids[rows].to(device)
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    log.info("lora recovery: %d steps in %.1f s, loss %.3f -> %.3f", lora.steps, time.perf_counter() - t0,
             losses[0], losses[-1])
    return losses
