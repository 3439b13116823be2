"""The Suite interface and its registry: what turns a suite config into task results (ARCHITECTURE.md).

A suite is one module in ``kvbench/suites/``:

* ``Config``: a dataclass subclassing :class:`kvbench.config.SuiteConfig` whose ``options`` field is the
  suite's own options dataclass. It is the Hydra schema of ``conf/suite/*.yaml`` files that start with
  ``defaults: [/schema/suite/<runner>@_here_, _self_]``, so an unknown option fails at composition;
* :meth:`Suite.validate` -- every check that needs no weights (task names, data files, lengths), run
  before the model loads; it returns a *plan* (e.g. the parsed data) that :meth:`Suite.run` reuses;
* :meth:`Suite.run` -- yields one :class:`TaskResult` per task as soon as it is done, each naming its
  primary metric and whether higher is better.

A suite whose prompts keep a question apart from the document sets ``keeps_query`` and honours
``suite.query_aware`` (passing it to :meth:`~kvbench.eval.protocol.CompressionProtocol.generate`); any
other suite refuses ``query_aware=true`` in one line rather than ignoring it.

``@register`` makes a suite selectable as ``suite.runner=<runner>``; every module of this package is
imported automatically, so a new suite edits no other file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import OmegaConf

from kvbench.config import ModelConfig, SuiteConfig
from kvbench.errors import SuiteConfigError
from kvbench.eval.intervals import bootstrap
from kvbench.registry import Registry
from kvbench.results import EfficiencyPart, KvPart
from kvbench.sample_scores import sample_entries

#: Every suite, by its ``runner``; :meth:`~kvbench.registry.Registry.discover` imports every module of this
#: package, so a new suite module edits no other file.
SUITES: Registry = Registry("suite runner", "kvbench.suites", lambda cls: cls.runner)
#: Class decorator: make ``cls`` selectable as ``suite.runner=<cls.runner>``.
register = SUITES.register
#: How many per-sample outputs of a task reach W&B (the run dir keeps them all).
SAMPLES_LOGGED = 100


def sample_rows(ids, predictions, targets, scores) -> list[dict]:
    """Per-sample rows for W&B's samples table, capped at :data:`SAMPLES_LOGGED`."""
    rows = []
    for sample_id, prediction, target, score in zip(ids, predictions, targets, scores):
        if len(rows) == SAMPLES_LOGGED:
            break
        rows.append({"id": str(sample_id), "prediction": str(prediction)[:500], "target": str(target)[:500],
                     "score": None if score is None else float(score) if not isinstance(score, (list, tuple)) else str(score)})
    return rows


@dataclass
class TaskResult:
    """One task's scores. ``primary`` names the metric a table shows; ``stderr`` and ``n`` where known.

    A result may also carry the efficiency suite's measurements so far (``efficiency``: the record's part, a new
    object each time, replacing the record's); one with ``task=None`` carries only those (a point that ran out of
    memory is measured, not scored)."""

    task: str | None
    metrics: dict[str, float]
    primary: str
    higher_is_better: bool = True
    stderr: dict[str, float] = field(default_factory=dict)
    n: int | None = None
    #: 95% interval ``(low, high)`` of the primary metric (bootstrap over samples, :mod:`kvbench.eval.intervals`).
    interval: tuple[float, float] | None = None
    #: Per-sample outputs for dashboards (the first :data:`SAMPLES_LOGGED`): ``{id, prediction, target, score}``.
    samples: list[dict] = field(default_factory=list)
    #: The efficiency suite's measurements up to and including this result (the record's ``efficiency`` part).
    efficiency: EfficiencyPart | None = None
    #: Every sample's score keyed by its stable id (:func:`kvbench.sample_scores.sample_entries`): the record's
    #: sidecar, which the report's paired tests read.
    scores: list[dict] = field(default_factory=list)
    #: An engine row's KV cache figures, as the engine reports them (the record's ``kv`` part, ``source: engine``);
    #: kvbench's own rows leave it None (the runner measures theirs).
    kv: KvPart | None = None

    @classmethod
    def measurements(cls, efficiency: EfficiencyPart) -> "TaskResult":
        """A result that carries measurements only: no task, no metric."""
        return cls(None, {}, "", efficiency=efficiency)

    @classmethod
    def from_samples(cls, task: str, metrics: dict, primary: str, items, aggregate, higher_is_better: bool = True,
                     scale: float = 1.0, ids=None) -> "TaskResult":
        """A result whose primary metric's stderr and interval are bootstrapped from its per-sample ``items``; with
        the samples' stable ``ids``, the items are also kept per sample (:attr:`scores`)."""
        scores = sample_entries(task, ids, items) if ids is not None else []
        found = bootstrap(items, aggregate)
        if found is None:
            return cls(task, metrics, primary, higher_is_better, n=len(items), scores=scores)
        low, high, stderr = found
        return cls(task, metrics, primary, higher_is_better, {primary: stderr * scale}, len(items),
                   (low * scale, high * scale), scores=scores)


@dataclass
class RunContext:
    """What :meth:`Suite.run` gets once the model is loaded and the method applied."""

    protocol: Any  # kvbench.eval.protocol.CompressionProtocol: the model, the method, the measurements
    tokenizer: Any
    model_cfg: ModelConfig
    output_dir: Path
    seed: int = 0
    #: ``cfg.engine`` (:class:`kvbench.config.EngineConfig`): what serves the workload; only suites whose
    #: :attr:`Suite.engines` name its backend are run with one other than ``hf``.
    engine: Any = None


@dataclass
class NoOptions:
    """A suite without options: any ``suite.options.<key>`` is a composition error."""


#: The values of :meth:`Suite.question_visible`.
QUESTION_VISIBLE, QUESTION_HIDDEN, WHOLE_PROMPT, NO_QUESTION = "yes", "no", "whole prompt", "no question"


class Suite:
    """Base class. Subclasses set ``runner`` and ``Config``, and implement :meth:`run` (and :meth:`validate`)."""

    runner: ClassVar[str]
    Config: ClassVar[type[SuiteConfig]] = SuiteConfig
    #: The options dataclass (the type of ``Config.options``).
    Options: ClassVar[type] = NoOptions
    #: Whether ``accelerate launch`` can split the suite's requests over processes.
    supports_data_parallel: ClassVar[bool] = False
    #: Whether prompts keep a question apart from their context (then ``suite.query_aware`` applies).
    keeps_query: ClassVar[bool] = False
    #: Why a suite is query-agnostic by construction (``suite=shared_context``), said when ``query_aware=true``.
    query_agnostic_by_design: ClassVar[str | None] = None
    #: Whether the suite runs batches through a compressed cache (then a single-pass simulation cannot run it).
    needs_cache: ClassVar[bool] = False
    #: Whether the suite compares the method's next-token distributions with full's (then a method that changes the
    #: vocabulary is refused before the model loads).
    compares_to_full: ClassVar[bool] = False
    #: Whether the suite generates answers through the protocol (then ``suite.fidelity`` applies: divergence from
    #: full along each answer, :class:`kvbench.eval.fidelity.DivergenceProbe`).
    decodes: ClassVar[bool] = False
    #: The engines (``engine.backend``) the suite runs through; anything else is refused before the model loads.
    engines: ClassVar[tuple[str, ...]] = ("hf",)

    def __init__(self, cfg):
        self.cfg = cfg
        self.options = _options(cfg, self.Options)
        if getattr(cfg, "fidelity", False):  # the probe compares distributions with full's: one vocabulary
            self.compares_to_full = True

    @property
    def tasks(self) -> list[str]:
        return list(self.cfg.tasks)

    def question_visible(self) -> dict[str, str]:
        """Per task, whether the question was visible at compression time (the record's ``suite.question_visible``,
        a report column): ``yes`` (compressed with the context: ``query_aware``), ``no`` (fed after compression),
        ``whole prompt`` (a prompt compressed whole, any question in it included) or ``no question``. The base rule
        follows ``keeps_query``; suites whose prompts differ by task or hold no question override it."""
        if self.keeps_query:
            return {task: QUESTION_VISIBLE if self.cfg.query_aware else QUESTION_HIDDEN for task in self.tasks}
        return {task: WHOLE_PROMPT for task in self.tasks}

    def validate(self, model_cfg: ModelConfig | None = None) -> Any:
        """Check what needs no weights; return the plan :meth:`run` reuses. Raise :class:`SuiteConfigError`."""
        return None

    def run(self, plan: Any, context: RunContext) -> Iterator[TaskResult]:
        raise NotImplementedError


def _options(cfg, options_cls: type):
    """``cfg.options`` as an instance of the suite's options dataclass (also from a plain dict)."""
    raw = getattr(cfg, "options", None)
    if raw is None:
        return options_cls()
    if isinstance(raw, options_cls):
        return raw
    if not isinstance(raw, dict):
        raw = OmegaConf.to_container(raw, resolve=True)
    valid = [f.name for f in dataclasses.fields(options_cls)]
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise SuiteConfigError(f"suite.options has unknown key(s) {', '.join(unknown)} "
                               f"(valid: {', '.join(valid) or 'none'})")
    return options_cls(**raw)


def check_common(cfg) -> None:
    """The fields every suite shares: positive limits and chunk sizes, at least one task."""
    if cfg.limit is not None and cfg.limit <= 0:
        raise SuiteConfigError(f"suite.limit={cfg.limit} must be a positive number of examples per task (or null for all)")
    if cfg.stream_chunk <= 0:
        raise SuiteConfigError(f"suite.stream_chunk={cfg.stream_chunk} must be a positive number of tokens")
    if cfg.max_gen_toks is not None and cfg.max_gen_toks <= 0:
        raise SuiteConfigError(f"suite.max_gen_toks={cfg.max_gen_toks} must be a positive number of tokens "
                               "(or null for the task's own)")
    if cfg.num_fewshot is not None and cfg.num_fewshot < 0:
        raise SuiteConfigError(f"suite.num_fewshot={cfg.num_fewshot} must be >= 0 (or null for the task's own)")
    if not cfg.tasks:
        raise SuiteConfigError(f"suite={cfg.name} lists no tasks (set suite.tasks)")
    per_task = dict(getattr(cfg, "num_fewshot_per_task", None) or {})
    stray = [task for task in per_task if task not in cfg.tasks]
    if stray:
        raise SuiteConfigError(f"suite.num_fewshot_per_task.{stray[0]}: {stray[0]} is not one of suite.tasks "
                               f"({', '.join(cfg.tasks)})")
    for task, shots in per_task.items():
        if shots < 0:
            raise SuiteConfigError(f"suite.num_fewshot_per_task.{task}={shots} must be >= 0")


def no_question_part(cfg, why: str) -> SuiteConfigError:
    """The one-line error for ``suite.query_aware=true`` on prompts without a question kept apart."""
    with_query = sorted(name for name, suite in SUITES.items() if suite.keeps_query)
    return SuiteConfigError(
        f"suite.query_aware=true needs prompts with a question kept apart from the context, and {why} "
        f"(set suite.query_aware=false, or use a suite with a question part: {', '.join(with_query)})")


def build_suite(cfg) -> Suite:
    """The registered suite for ``cfg.runner``, after the checks every suite shares."""
    if cfg.runner not in SUITES.discover():
        raise SuiteConfigError(f"suite.runner={cfg.runner!r} is not valid (choose one of: {', '.join(sorted(SUITES))})")
    check_common(cfg)
    cls = SUITES[cfg.runner]
    if getattr(cfg, "query_aware", False) and cls.query_agnostic_by_design:
        raise SuiteConfigError(f"suite.query_aware=true: suite={cfg.name} (runner {cfg.runner}) "
                               f"{cls.query_agnostic_by_design} (set suite.query_aware=false)")
    if getattr(cfg, "query_aware", False) and not cls.keeps_query:
        raise no_question_part(cfg, f"suite={cfg.name} (runner {cfg.runner}) has none")
    if getattr(cfg, "fidelity", False) and not cls.decodes:
        probed = sorted(name for name, suite in SUITES.items() if suite.decodes)
        raise SuiteConfigError(
            f"suite.fidelity=true measures divergence from full along the answers a suite generates through the "
            f"protocol, and suite={cfg.name} (runner {cfg.runner}) generates none that way (set suite.fidelity=false; "
            f"runners with answers: {', '.join(probed)}; or use suite=fidelity)")
    return cls(cfg)
