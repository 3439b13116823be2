"""The model as a directory a serving engine loads: config, tokenizer and ``model.safetensors``, written once
through transformers (``from_pretrained(gguf_file=...)`` then ``save_pretrained``) and cached under
``$KVBENCH_CACHE_DIR/engine_models`` (issue 29).

The bundled model is a Q4_1 GGUF file; transformers dequantizes it when it loads, so the saved weights are exactly
the ones kvbench evaluates (in ``model.dtype``), and the engine and kvbench's ``full`` run the same numbers.
vLLM's own GGUF loader is experimental and keeps the quantized blocks, which would compare two different models.
A model that is already a plain directory or hub id is used as it is.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from kvbench.config import ModelConfig, cache_root
from kvbench.models import check_model_source, load_model, resolve_pretrained

#: Written last: a directory without it is an unfinished export and is written again.
MARKER = "kvbench_export.json"


def export_key(cfg: ModelConfig) -> str:
    """What the exported weights depend on: the source, its GGUF file (name and size) and the dtype."""
    source = resolve_pretrained(cfg.pretrained)
    gguf = Path(source) / cfg.gguf_file if cfg.gguf_file else None
    size = gguf.stat().st_size if gguf is not None and gguf.is_file() else None
    text = json.dumps([cfg.pretrained, cfg.gguf_file, size, cfg.revision, cfg.dtype], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def export_dir(cfg: ModelConfig) -> Path:
    return cache_root() / "engine_models" / f"{cfg.name}_{cfg.dtype}_{export_key(cfg)}"


def save_weights(model, directory: Path) -> None:
    """The model's config and its weights as ``model.safetensors``. transformers' ``save_pretrained`` refuses a
    model loaded from GGUF (it is marked quantized), but its tensors are already dequantized: they are written as
    they are, the tied output embedding once (as transformers would), and the config without the GGUF marking."""
    from safetensors.torch import save_file

    tensors, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:  # a tied weight (lm_head = embed_tokens): stored once, tied again on load
            continue
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.detach().contiguous()
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(directory)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)


def engine_model_dir(cfg: ModelConfig) -> Path:
    """A directory (or hub id) the engine can load for ``cfg``: the model as it is when it is not a GGUF file,
    else the cached export, written now if missing."""
    if not cfg.gguf_file:
        return Path(resolve_pretrained(cfg.pretrained))
    target = export_dir(cfg)
    if (target / MARKER).is_file():
        return target
    check_model_source(cfg)
    model, tokenizer = load_model(cfg)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        save_weights(model, scratch)
        tokenizer.save_pretrained(scratch)
        (scratch / MARKER).write_text(json.dumps({"pretrained": cfg.pretrained, "gguf_file": cfg.gguf_file,
                                                  "dtype": cfg.dtype, "key": export_key(cfg)}, indent=1))
        shutil.rmtree(target, ignore_errors=True)
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
