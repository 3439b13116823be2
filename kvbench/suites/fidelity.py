"""``suite.runner=fidelity``: divergence from ``full`` (:mod:`kvbench.eval.fidelity`), the first number to read
when the model is too small for the task suites.

Two tasks, on held-out prose (the ``eval`` split of the offline corpus, :mod:`kvbench.corpus`, never the calibration
split, joined and cut into pieces of ``prompt_tokens + new_tokens``): each prompt is a piece's first ``prompt_tokens``
tokens, and the sequence teacher-forced after it is

* ``greedy``: full's own greedy continuation of the prompt (``new_tokens`` tokens, EOS ignored), so the positions
  are the ones greedy decoding under ``full`` visits;
* ``prose``: the document's next ``new_tokens`` real tokens.

The reference is the model *before* the method (loaded again when the method changes the model, as the ``*_gqa``
methods do), run under ``full`` with the same operations, so ``method=full`` gives KL 0 and agreement 1 exactly.
Prompts are equal in length and go through in batches of ``batch_size`` (no padding). Per task the primary metric is
the mean per-prompt KL (nats, lower is better) with a 95% bootstrap interval over prompts (the per-prompt KL is
itself paired: full and the method on the same prompt), plus ``top1_agreement`` and ``first_disagreement`` (the
first position whose greedy choices differ, censored at ``new_tokens``). A method that changes the vocabulary has no
distribution to compare position by position and is refused in one line. Writes
``<run dir>/<suite name>/prompts.jsonl``, one line per prompt and task.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kvbench.atomic import atomic_write_text
from kvbench.config import SuiteConfig
from kvbench.corpus import pydoc_documents
from kvbench.errors import SuiteConfigError
from kvbench.eval.fidelity import DivergenceProbe, divergence, teacher_forced_logprobs
from kvbench.eval.intervals import mean
from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import build_method
from kvbench.models import load_model
from kvbench.suites.base import NO_QUESTION, RunContext, Suite, TaskResult, register

TASKS = ("greedy", "prose")


@dataclass
class FidelityOptions:
    prompts: int = 8
    prompt_tokens: int = 256
    new_tokens: int = 32
    batch_size: int = 1
    seed: int = 0


@dataclass
class FidelityConfig(SuiteConfig):
    runner: str = "fidelity"
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    options: FidelityOptions = field(default_factory=FidelityOptions)


class VocabularyChangedError(SuiteConfigError):
    """The method's model predicts over another vocabulary than the reference's."""


@register
class Fidelity(Suite):
    runner = "fidelity"
    Config = FidelityConfig
    Options = FidelityOptions
    compares_to_full = True

    def question_visible(self) -> dict[str, str]:
        """Continuations of prose scored against full: no question."""
        return {task: NO_QUESTION for task in self.tasks}

    def validate(self, model_cfg=None) -> None:
        opts = self.options
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise SuiteConfigError(f"unknown fidelity task(s) {', '.join(unknown)} (choose from: {', '.join(TASKS)})")
        for name in ("prompts", "prompt_tokens", "new_tokens", "batch_size"):
            value = getattr(opts, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (2 if name == "prompt_tokens" else 1):
                raise SuiteConfigError(f"suite.options.{name}={value!r} must be a positive integer"
                                       + (" >= 2" if name == "prompt_tokens" else ""))
        if model_cfg is not None and opts.prompt_tokens + opts.new_tokens > model_cfg.max_length:
            raise SuiteConfigError(f"suite.options.prompt_tokens + new_tokens = {opts.prompt_tokens + opts.new_tokens} "
                                   f"exceeds model.max_length={model_cfg.max_length}")

    def run(self, plan, context: RunContext) -> Iterator[TaskResult]:
        opts, protocol = self.options, context.protocol
        reference = CompressionProtocol(reference_model(context), build_method("full"))
        check_vocabulary(reference.model, protocol.model, protocol.method)
        n = opts.prompts if self.cfg.limit is None else min(self.cfg.limit, opts.prompts)
        prompts, prose = prose_prompts(context.tokenizer, n, opts.prompt_tokens, opts.new_tokens, opts.seed)
        lines = []
        for task in self.tasks:
            found = []
            for start in range(0, len(prompts), opts.batch_size):
                batch = prompts[start:start + opts.batch_size]
                following = (reference.generate_batch(batch, opts.new_tokens) if task == "greedy"
                             else prose[start:start + opts.batch_size])
                found += divergence(teacher_forced_logprobs(reference, batch, following),
                                    teacher_forced_logprobs(protocol, batch, following))
            lines += [json.dumps({"task": task, "prompt": i, **asdict(d)}) + "\n" for i, d in enumerate(found)]
            yield task_result(task, found)
        atomic_write_text(Path(context.output_dir) / self.cfg.name / "prompts.jsonl", "".join(lines))


def task_result(task: str, found) -> TaskResult:
    """The task's means over prompts, KL primary, its interval and per-prompt scores from the per-prompt KL."""
    metrics = {"kl": mean([d.kl for d in found]), "top1_agreement": mean([d.top1_agreement for d in found]),
               "first_disagreement": mean([d.first_disagreement for d in found])}
    return TaskResult.from_samples(task, metrics, "kl", [d.kl for d in found], mean, higher_is_better=False,
                                   ids=range(len(found)))


def divergence_probe(suite: Suite, context: RunContext) -> DivergenceProbe | None:
    """The probe a decoding suite runs beside each answer when ``suite.fidelity`` is set (None otherwise): ``full`` on
    the model before the method, checked to predict over the method's vocabulary."""
    if not getattr(suite.cfg, "fidelity", False):
        return None
    reference = CompressionProtocol(reference_model(context), build_method("full"))
    check_vocabulary(reference.model, context.protocol.model, context.protocol.method)
    return DivergenceProbe(reference)


def reference_model(context: RunContext):
    """The model before the method: the protocol's own when the method leaves the model alone, else loaded again."""
    model = context.protocol.model
    if not context.protocol.method.changes_model:
        return model
    return load_model(context.model_cfg)[0].to(context.protocol.device)


def check_vocabulary(reference, model, method) -> None:
    """One line when the method's model predicts over another vocabulary (nothing to compare position by position)."""
    mine, theirs = model.get_output_embeddings().weight.shape[0], reference.get_output_embeddings().weight.shape[0]
    if mine != theirs or getattr(method, "changes_vocabulary", False):
        raise VocabularyChangedError(
            f"suite=fidelity compares next-token distributions over one vocabulary, and method={method.name} changes "
            f"it ({theirs} -> {mine} tokens): use a task suite for this method")


def prose_prompts(tokenizer, n: int, prompt_tokens: int, new_tokens: int, seed: int):
    """``(prompts, continuations)``: the held-out documents joined into one token stream and cut into consecutive,
    non-overlapping pieces of ``prompt_tokens + new_tokens`` tokens, ``n`` of them chosen with ``seed``; each prompt a
    piece's first ``prompt_tokens`` tokens, each continuation the next ``new_tokens`` (the held-out split is short,
    ~7k tokens of the bundled model's, so pieces may cross a document boundary)."""
    need = prompt_tokens + new_tokens
    stream = tokenizer("\n\n".join(pydoc_documents("eval")), add_special_tokens=False)["input_ids"]
    pieces = len(stream) // need
    if pieces < n:
        raise SuiteConfigError(f"the held-out prose has {len(stream)} tokens: {pieces} pieces of prompt_tokens + "
                               f"new_tokens = {need}, fewer than suite.options.prompts={n}; lower either")
    chosen = sorted(random.Random(seed).sample(range(pieces), n))
    return ([stream[i * need:i * need + prompt_tokens] for i in chosen],
            [stream[i * need + prompt_tokens:(i + 1) * need] for i in chosen])
