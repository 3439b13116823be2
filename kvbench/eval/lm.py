"""The lm-eval model ``kvbench``: lm-eval's HF model with the context-compression protocol.

Subclasses lm-eval's ``HFLM`` for tokenisation, chat templates and request plumbing,
and replaces the three request types so that every request goes through
:class:`~kvbench.eval.protocol.CompressionProtocol`:

* ``loglikelihood``: requests sharing a context are prefilled and compressed once; the continuations are
  scored against that cache, rewound after each forward where a crop restores it exactly (``full``), copied for
  each continuation otherwise (:meth:`~kvbench.eval.protocol.CompressionProtocol.score_continuations`);
* ``loglikelihood_rolling``: lm-eval's rolling windows, each streamed through the cache
  ``stream_chunk`` tokens at a time, compressing as it grows;
* ``generate_until``: prefill, compress, greedy decoding until a stop sequence. A task that keeps a
  question apart from its document declares the doc field holding it (``metadata: kvbench_query_field``
  in its YAML, e.g. ``kvbench_passkey``); the prompt is then split where that question starts and, by
  default (query-agnostic), only the part before it is compressed, the question being fed afterwards.
  ``query_aware=True`` compresses the question with the document. Other requests compress everything
  but the prompt's last token, as before.

This class takes a loaded model (library use: ``KvbenchLM(model=..., tokenizer=..., method_obj=...)``).
``lm_eval --model kvbench --model_args model=...,method=...`` builds one from kvbench's config through
:mod:`kvbench.lm_eval_model`, which kvbench's start-up hook registers with lm-eval.
"""

from __future__ import annotations

import logging
import subprocess
from collections import OrderedDict
from pathlib import Path

import yaml
from lm_eval import utils as lm_utils
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from tqdm import tqdm

from kvbench.eval import distributed
from kvbench.eval.prompts import eos_ids
from kvbench.eval.protocol import CompressionProtocol

#: kvbench's offline lm-eval tasks (YAML + utils), usable with ``--include_path``.
TASKS_DIR = Path(__file__).parent / "tasks"

#: lm-eval messages that say nothing to a kvbench user: kvbench passes a loaded model on purpose and its
#: offline tasks take no metadata. Anything else lm-eval says (a task download, a metric fallback) stays.
IRRELEVANT_MESSAGES = (
    "`pretrained` model kwarg is not of type `str`",
    "Passed an already-initialized model through `pretrained`",
    "Custom kwargs can be passed to `--metadata`",
)


class _DropIrrelevant(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in IRRELEVANT_MESSAGES)


def _git_hash_quietly() -> str | None:
    try:
        return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).strip().decode()
    except (OSError, subprocess.CalledProcessError):
        return None


def quiet_lm_eval() -> None:
    """Drop lm-eval's irrelevant warnings (above) at kvbench's entry points, and let lm-eval look up the
    current directory's git commit without git printing ``fatal: not a git repository`` for every task run
    outside a repository (kvbench records its own commit in ``env.git_commit``). Idempotent."""
    import lm_eval.evaluator  # seconds to import: only where kvbench evaluates through lm-eval

    for name in ("lm_eval.models.huggingface", "lm_eval.api.task", "lm_eval.evaluator"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropIrrelevant) for f in logger.filters):
            logger.addFilter(_DropIrrelevant())
    lm_eval.evaluator.get_git_commit_hash = _git_hash_quietly


def query_fields() -> dict[str, str]:
    """kvbench's offline tasks whose docs keep a question apart: ``{task: doc field}`` (their YAML's
    ``metadata.kvbench_query_field``)."""
    class _Loader(yaml.SafeLoader):  # read the YAML without resolving lm-eval's !function tags
        pass

    _Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    fields = {}
    for path in sorted(TASKS_DIR.glob("*.yaml")):
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
        field = (data.get("metadata") or {}).get("kvbench_query_field")
        if field:
            fields[data["task"]] = field
    return fields


class KvbenchLM(HFLM):
    def __init__(self, model, tokenizer, method_obj, reference_config=None, max_length=None, stream_chunk=512,
                 batch_size=1, protocol: CompressionProtocol | None = None, query_aware: bool = False):
        """``model`` after ``method_obj.apply``; ``reference_config`` its config before (for the byte count);
        ``protocol`` an existing protocol to measure with (a new one otherwise); ``query_aware`` where a
        declared question goes (see the module docstring)."""
        if int(batch_size) != 1:
            raise ValueError(f"batch_size={batch_size}: kvbench evaluates one sequence at a time (use 1)")
        super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=1, max_length=max_length)
        self.method = method_obj
        self.stream_chunk = int(stream_chunk)
        self.query_aware = bool(query_aware)
        self.query_fields = query_fields()
        self.protocol = protocol if protocol is not None else CompressionProtocol(model, method_obj, reference_config)
        self._combined = None  # every rank's measurements, combined (data-parallel only)
        if distributed.world_size() > 1:  # accelerate launch: lm-eval splits requests by rank, gathers to rank 0
            self.accelerator = distributed.accelerator()
            self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes

    # lm-eval pads the ranks to equal request counts by repeating a rank's last request object: evaluate
    # each distinct request once, so a padded (or repeated) request costs nothing and is measured once.
    def loglikelihood(self, requests, disable_tqdm=False):
        return self._measured(_once_each(requests, lambda unique: super(KvbenchLM, self).loglikelihood(unique, disable_tqdm)))

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        return self._measured(_once_each(requests, lambda unique: self._rolling(unique, disable_tqdm)))

    def generate_until(self, requests, disable_tqdm=False):
        return self._measured(_once_each(requests, lambda unique: self._generate(unique, disable_tqdm)))

    def _measured(self, results):
        """Every rank calls each request method (lm-eval pads the ranks), so the measurements are combined
        here, where all ranks meet, for :meth:`get_model_info` (which lm-eval calls on rank 0 alone)."""
        if self.world_size > 1:
            self._combined = distributed.combined_stats(self.protocol.stats)
        return results

    # -- loglikelihood ------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):
        groups: OrderedDict[tuple, list] = OrderedDict()
        for index, (_, context, continuation) in enumerate(requests):
            context, continuation = self._truncate(list(context), list(continuation))
            groups.setdefault(tuple(context), []).append((index, continuation))
        results = [None] * len(requests)
        for context, items in tqdm(groups.items(), disable=disable_tqdm or self.rank != 0,
                                   desc="kvbench loglikelihood (one prefill per context)"):
            scores = self.protocol.score_continuations(list(context), [c for _, c in items])
            for (index, _), score in zip(items, scores):
                results[index] = score
                if requests[index][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[index][0], score)
        return results

    def _truncate(self, context: list[int], continuation: list[int]):
        """Left-truncate like lm-eval's HF model: keep the last ``max_length + 1`` tokens overall."""
        overflow = len(context) + len(continuation) - (self.max_length + 1)
        if overflow > 0:
            if overflow >= len(context):
                raise ValueError(f"continuation of {len(continuation)} tokens does not fit max_length={self.max_length}")
            context = context[overflow:]
        return context, continuation

    def _rolling(self, requests, disable_tqdm=False):
        results = []
        for (string,) in tqdm([r.args for r in requests], disable=disable_tqdm or self.rank != 0,
                              desc=f"kvbench rolling loglikelihood (stream_chunk={self.stream_chunk})"):
            windows = map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1))
            total = sum(self.protocol.stream_logprob(ctx, cont, self.stream_chunk) for ctx, cont in windows)
            results.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
        return results

    # -- generation ---------------------------------------------------------------------------
    def _generate(self, requests, disable_tqdm=False):
        results = []
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        for request in tqdm(requests, disable=disable_tqdm or self.rank != 0, desc="kvbench generate_until"):
            context, gen_kwargs = request.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen_toks = kwargs.pop("max_gen_toks")
            context_ids, _ = self.tok_batch_encode([context], left_truncate_len=self.max_length - max_gen_toks,
                                                   truncation=self.truncation)
            ids = context_ids[0].tolist()
            n_query = self._query_tokens(context, self._question(request))
            n_query = n_query if n_query < len(ids) else 0  # a question longer than what truncation left
            generated = self.protocol.generate(
                ids[: len(ids) - n_query], max_gen_toks, stop=self._stop_on(until),
                eos_token_ids=eos_ids(self.tokenizer, self.model),  # the model config's stop tokens too
                query=ids[len(ids) - n_query:], query_aware=self.query_aware)
            text = postprocess_generated_text(self.tok_decode(generated), stop=until, think_end_token=None)
            results.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return results

    def _question(self, request) -> str | None:
        """The request's question, if its task declares one (``kvbench_query_field``)."""
        field = self.query_fields.get(getattr(request, "task_name", None))
        doc = getattr(request, "doc", None)
        question = doc.get(field) if field and isinstance(doc, dict) else None
        return question if isinstance(question, str) and question else None

    def _query_tokens(self, text: str, question: str | None) -> int:
        """How many of the prompt's last tokens belong to the question part (from its last occurrence on;
        0 without one). The prompt is tokenised whole; a token straddling the boundary counts as query."""
        boundary = text.rfind(question) if question else -1
        if boundary <= 0:
            return 0
        whole, head = self.tok_encode(text), self.tok_encode(text[:boundary])
        common = 0
        for a, b in zip(whole, head):
            if a != b:
                break
            common += 1
        n_query = len(whole) - common
        return n_query if 0 < n_query < len(whole) else 0

    def _stop_on(self, until: list[str]):
        def stop(generated: list[int]) -> bool:
            tail = self.tok_decode(generated[-16:], skip_special_tokens=False)
            return any(s in tail for s in until)

        return stop

    def get_model_info(self) -> dict:
        """lm-eval asks after the evaluation and stores this in its results JSON (``config``): the method, and
        the KV cache measured over the requests (``kvbench_kv``: bytes held vs uncompressed, ratio)."""
        info = super().get_model_info()
        info["kvbench_method"] = getattr(self.method, "name", None)
        # lm-eval asks on rank 0 only: no collective here (see _measured)
        info["kvbench_kv"] = (self._combined or self.protocol.stats).kv_summary()
        return info


def _once_each(requests, evaluate):
    """``evaluate`` on the distinct request objects, results expanded back to every position."""
    position: dict[int, int] = {}
    unique = []
    for request in requests:
        if id(request) not in position:
            position[id(request)] = len(unique)
            unique.append(request)
    results = evaluate(unique)
    return [results[position[id(request)]] for request in requests]
