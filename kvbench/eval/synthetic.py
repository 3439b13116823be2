"""RULER-style synthetic long-context tasks, generated offline, scored by string match.

Tasks (RULER, Hsieh et al. 2024, reimplemented from its description; EVALUATION.md):

* ``niah_*`` -- needle in a haystack. A needle is "One of the special magic numbers for
  <key> is: <value>."; the haystack is ``noise`` (a repeated neutral paragraph) or
  ``prose`` (Python documentation, ``kvbench.corpus.load_texts("pydoc", split="eval")``).
  Variants: ``single`` (one needle), ``multikey`` (three distractor needles with other
  keys), ``multivalue`` (four values for the asked key), ``multiquery`` (four keys asked
  at once); value types numbers (7 digits), words or uuids.
* ``vt`` -- variable tracking: ``VAR A = 12345``, ``VAR B = VAR A``, ... hidden in noise;
  the answer is every variable of the chain.
* ``cwe`` -- common-words extraction from a numbered word list; ``fwe`` -- the three most
  frequent coded words of a Zipf-distributed text.
* ``passkey`` -- the classic pass-key retrieval (single number in noise); also usable by
  other code through :func:`passkey_sample`.

Every sample keeps **context and question apart**: the context (instructions + haystack)
is what the method compresses; the question and the answer prefix are fed afterwards as
the protocol's query. The haystack is sized with the model's tokenizer so that prompt +
``max_new_tokens`` fits the requested length (RULER's rule). Samples are seeded by
``(seed, task, length, index)``; single-needle depths are spread evenly over the samples.
Scores: ``string_match_all`` (mean over references of case-insensitive substring hits)
and, for multi-reference tasks, ``string_match_part`` (any reference), both x100.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import re
import string
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kvbench.eval.prompt_split import chat_wrap, encode_split, has_chat_template
from kvbench.results import atomic_write_text

log = logging.getLogger(__name__)

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

# Simple English words for needle keys and word values (kvbench's own list).
WORDS = tuple("""
apple river silver garden window candle forest rabbit mountain pepper violin island
bottle copper dragon eagle feather glacier hammer jacket kettle lantern marble needle
orange pillow quartz saddle tiger umbrella valley walnut yellow zebra anchor basket
cactus dolphin engine falcon guitar harbor igloo jungle kitten ladder magnet nickel
oyster parrot quiver rocket shadow tunnel velvet wagon bronze cherry desert ember
fossil ginger helmet iris jigsaw koala lemon mango nectar olive panda quilt raven
sparrow thunder tulip vessel willow yacht blanket canyon donkey falcon granite hollow
ivory jasmine kayak lobster meadow nutmeg orchid pebble raisin salmon turnip violet
whistle beacon cobalt dune fjord grove hazel indigo juniper kiwi lilac maple nova
onyx pine quail reef spruce topaz urchin vortex wren amber birch clover daisy elm
fern gull heron ibis jade kelp lotus moss nettle oak plum reed sage thyme wasp
""".split())

TASK_NAMES: tuple[str, ...]  # filled below
DEFAULT_LENGTHS = (384, 768)  # conf/suite/ruler.yaml; see experiments/ruler/README.md


class SyntheticError(ValueError):
    """A synthetic suite cannot run; the message names the setting and the valid choices."""


# -- samples --------------------------------------------------------------------------------------
@dataclass
class SyntheticSample:
    """One prompt: ``context`` is compressed; ``question`` + ``answer_prefix`` are the query."""

    task: str
    length: int
    index: int
    context: str
    question: str
    answer_prefix: str
    answers: list[str]
    max_new_tokens: int
    context_ids: list[int] = field(default_factory=list)
    query_ids: list[int] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return len(self.context_ids) + len(self.query_ids)


def render(context: str, question: str, answer_prefix: str, tokenizer, chat: bool) -> tuple[list[int], list[int]]:
    """Token ids of context and query; the prompt is tokenised whole and split where the context ends."""
    if chat:
        text = chat_wrap(tokenizer, context + question) + answer_prefix.lstrip()
        boundary = text.rfind(question)
        return encode_split(tokenizer, text, boundary, add_special_tokens=False)
    text = context + question + answer_prefix
    return encode_split(tokenizer, text, len(context), add_special_tokens=True)


@dataclass(frozen=True)
class Task:
    """How to draw one sample: ``draw(rng, n, index, n_samples, length)`` returns (context, question, prefix, answers)
    for a haystack of ``n`` units; ``n`` is then searched so that the prompt fits the length."""

    name: str
    draw: Callable
    max_new_tokens: int
    multi_reference: bool = False
    description: str = ""


# -- haystacks ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _prose_words() -> tuple[str, ...]:
    from kvbench.corpus import load_texts

    return tuple(" ".join(load_texts("pydoc", split="eval")).split())


@functools.lru_cache(maxsize=1)
def _vocabulary() -> tuple[str, ...]:
    """Distinct lowercase words of the prose corpus plus WORDS (word lists for cwe)."""
    words = set(WORDS)
    words.update(w for w in _prose_words() if re.fullmatch(r"[a-z]{4,10}", w))
    return tuple(sorted(words))


def _haystack(kind: str, n: int, start: int) -> list[str]:
    """``n`` haystack units: noise paragraphs, or words of prose starting at a sentence near ``start``."""
    if kind == "noise":
        return [NOISE] * n
    words = _prose_words()
    start %= len(words)
    while not words[start - 1].endswith((".", "!", "?")):  # begin at a sentence start
        start = (start + 1) % len(words)
    return [words[(start + i) % len(words)] for i in range(n)]


def _insert(units: list[str], needles: Sequence[str], depths: Sequence[float]) -> str:
    """Put each needle between haystack units at its depth (0 = start, 1 = end), moved forward to the
    next sentence end when the units are words of prose."""
    units = list(units)
    placed = sorted(zip(depths, range(len(needles))), reverse=True)
    for depth, i in placed:  # from the deepest, so earlier positions stay valid
        pos = round(depth * len(units))
        end = pos
        while 0 < end < len(units) and not units[end - 1].endswith((".", "!", "?")):
            end += 1
        units.insert(end if end <= len(units) else pos, needles[i])
    return " ".join(units)


def _spread(index: int, count: int) -> float:
    """Depth of sample ``index`` out of ``count``: evenly from 0 to 1."""
    return 0.5 if count <= 1 else index / (count - 1)


# -- NIAH -------------------------------------------------------------------------------------------
def _value(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "words":
        return rng.choice(WORDS)
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _niah(haystack: str, variant: str, value_type: str = "numbers", n_needles: int = 4):
    def draw(rng: random.Random, n: int, index: int, n_samples: int, length: int):
        keys = [f"{a}-{b}" for a, b in (rng.sample(WORDS, 2) for _ in range(n_needles))]
        if len(set(keys)) < len(keys):
            keys = [f"{k}-{i}" for i, k in enumerate(keys)]
        start = rng.randrange(1 << 30)
        if variant == "single":
            pairs, asked = [(keys[0], _value(rng, value_type))], [keys[0]]
        elif variant == "multikey":  # one asked key + distractor keys
            pairs, asked = [(k, _value(rng, value_type)) for k in keys], [keys[0]]
        elif variant == "multivalue":  # several values for one key
            pairs, asked = [(keys[0], _value(rng, value_type)) for _ in range(n_needles)], [keys[0]]
        else:  # multiquery: several keys asked at once
            pairs, asked = [(k, _value(rng, value_type)) for k in keys], list(keys)
        needles = [f"One of the special magic {value_type} for {k} is: {v}." for k, v in pairs]
        if variant == "single":
            depths = [_spread(index, n_samples)]
        else:
            slots = [(j + 1) / (len(needles) + 1) for j in range(len(needles))]
            rng.shuffle(slots)
            depths = slots
        asked_text = asked[0] if len(asked) == 1 else ", ".join(asked[:-1]) + ", and " + asked[-1]
        answers = [v for k, v in pairs if k in asked]
        context = (f"Some special magic {value_type} are hidden within the following text. Make sure to memorize it. "
                   f"I will quiz you about the {value_type} afterwards.\n"
                   + _insert(_haystack(haystack, n, start), needles, depths) + "\n")
        question = f"What are all the special magic {value_type} for {asked_text} mentioned in the provided text?"
        prefix = f" The special magic {value_type} for {asked_text} mentioned in the provided text are"
        return context, question, prefix, answers

    return draw


# -- variable tracking ---------------------------------------------------------------------------
def _vt(num_hops: int = 4):
    def draw(rng: random.Random, n: int, index: int, n_samples: int, length: int):
        names: list[str] = []
        while len(names) < num_hops + 1:
            name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
            if name not in names:
                names.append(name)
        value = str(rng.randint(10_000, 99_999))
        statements = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, len(names))]
        depths = [(j + 1) / (len(statements) + 1) for j in range(len(statements))]  # in chain order
        context = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
                   + _insert(_haystack("noise", n, 0), statements, depths) + "\n")
        question = f"Question: Find all variables that are assigned the value {value} in the text above."
        prefix = (f" Answer: According to the chain(s) of variable assignment in the text above, {len(names)} "
                  f"variables are assigned the value {value}, they are:")
        return context, question, prefix, names

    return draw


# -- common / frequent words -----------------------------------------------------------------------
def _numbered(words: Sequence[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def _cwe():
    header = ("Below is a numbered list of words. In these words, some appear more often than others. "
              "Memorize the ones that appear most often.\n")

    def words_list(rng, num_cw, n_uncommon, freq_cw, freq_ucw):
        chosen = rng.sample(_vocabulary(), num_cw + n_uncommon)
        common, uncommon = chosen[:num_cw], chosen[num_cw:]
        items = common * freq_cw + uncommon * freq_ucw
        rng.shuffle(items)
        return items, common

    def draw(rng: random.Random, n: int, index: int, n_samples: int, length: int):
        # RULER: below 4096 tokens, common words x6 and others x1 (x30 / x3 above), after one worked
        # example. kvbench also asks for 5 words instead of 10 below 1024 tokens, so the list fits.
        num_cw = 10 if length >= 1024 else 5
        (f_cw, f_ucw), (e_cw, e_ucw) = ((6, 1), (3, 1)) if length < 4096 else ((30, 3), (10, 3))
        question = f"Question: What are the {num_cw} most common words in the above list?"
        prefix = f" Answer: The top {num_cw} words that appear most often in the list are:"
        example_items, example_answer = words_list(rng, num_cw, num_cw, e_cw, e_ucw)
        example = header + _numbered(example_items) + "\n" + question + prefix + " " + _numbered(example_answer) + "\n"
        items, common = words_list(rng, num_cw, n, f_cw, f_ucw)
        context = example + header + _numbered(items) + "\n"
        return context, question, prefix, list(common)

    return draw


def _fwe(alpha: float = 2.0, vocab: int = 60, floor: int = 30):
    def draw(rng: random.Random, n: int, index: int, n_samples: int, length: int):
        coded: list[str] = []
        while len(coded) < vocab:
            word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 5)))
            if word not in coded:
                coded.append(word)
        total_words = n + floor  # at least ``floor`` words, so the top three counts differ
        weights = [1 / (r + 1) ** alpha for r in range(vocab)]
        scale = total_words / sum(weights)
        counts = [round(scale * w) for w in weights]  # Zipf counts by rank
        text = [w for w, c in zip(coded, counts) for _ in range(c)]
        rng.shuffle(text)
        context = ("Read the following coded text and track the frequency of each coded word. "
                   "Find the three most frequently appeared coded words.\n" + " ".join(text) + "\n")
        question = ("Question: Do not provide any explanation. "
                    "What are the three most frequently appeared words in the above coded text?")
        prefix = " Answer: According to the coded text above, the three most frequently appeared words are:"
        return context, question, prefix, coded[:3]

    return draw


# -- passkey --------------------------------------------------------------------------------------
def _passkey(depth: float | None = None):
    def draw(rng: random.Random, n: int, index: int, n_samples: int, length: int):
        key = str(rng.randint(10_000, 99_999))
        needle = f"The pass key is {key}. Remember it. {key} is the pass key."
        d = _spread(index, n_samples) if depth is None else depth
        context = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
                   "I will quiz you about the important information there.\n"
                   + _insert(_haystack("noise", n, 0), [needle], [d]) + "\n")
        return context, "What is the pass key?", " The pass key is", [key]

    return draw


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("niah_single", _niah("noise", "single"), 32, description="one 7-digit number in noise"),
        Task("niah_single_prose", _niah("prose", "single"), 32, description="one 7-digit number in prose"),
        Task("niah_single_uuid", _niah("prose", "single", "uuids"), 64, description="one uuid in prose"),
        Task("niah_single_words", _niah("noise", "single", "words"), 32, description="one word value in noise"),
        Task("niah_multikey", _niah("noise", "multikey"), 32, description="asked key among 3 distractor needles, noise"),
        Task("niah_multikey_prose", _niah("prose", "multikey"), 32, description="asked key among 3 distractors, prose"),
        Task("niah_multivalue", _niah("noise", "multivalue"), 64, True, "4 values for one key, noise"),
        Task("niah_multiquery", _niah("noise", "multiquery"), 64, True, "4 keys asked at once, noise"),
        Task("vt", _vt(), 48, True, "variable tracking: 1 chain of 4 hops in noise"),
        Task("cwe", _cwe(), 64, True, "most common words (10; 5 below 1024 tokens) of a numbered list, 1-shot"),
        Task("fwe", _fwe(), 32, True, "3 most frequent coded words (Zipf)"),
        Task("passkey", _passkey(), 16, description="pass key (5 digits) in noise"),
    )
}
TASK_NAMES = tuple(TASKS)


def _sample_rng(seed: int, task: str, length: int, index: int) -> random.Random:
    return random.Random(f"kvbench-synthetic:{seed}:{task}:{length}:{index}")


def _fit(task: Task, draw: Callable, rng_state, tokenizer, length: int, index: int, n_samples: int, chat: bool):
    """Largest haystack size whose prompt + max_new_tokens fits ``length``; returns the sample parts and ids."""
    budget = length - task.max_new_tokens

    def build(n):
        rng = random.Random()
        rng.setstate(rng_state)  # the same draws (keys, values, depth) for every size tried
        parts = draw(rng, n, index, n_samples, length)
        ctx_ids, q_ids = render(*parts[:3], tokenizer, chat)
        return parts, ctx_ids, q_ids

    best = build(0)
    if len(best[1]) + len(best[2]) > budget:
        raise SyntheticError(f"{task.name}: length {length} is too short for the task's prompt "
                             f"({len(best[1]) + len(best[2])} tokens + {task.max_new_tokens} to generate)")
    lo, hi = 0, 1
    while True:  # exponential search for an upper bound
        cand = build(hi)
        if len(cand[1]) + len(cand[2]) > budget:
            break
        best, lo, hi = cand, hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        cand = build(mid)
        if len(cand[1]) + len(cand[2]) <= budget:
            best, lo = cand, mid
        else:
            hi = mid
    return best


def generate(task: str, tokenizer, length: int, n_samples: int, seed: int = 0, chat: bool = False) -> list[SyntheticSample]:
    """``n_samples`` seeded samples of ``task`` whose prompt + answer budget is at most ``length`` tokens."""
    if task not in TASKS:
        raise SyntheticError(f"unknown synthetic task {task!r} (choose from: {', '.join(TASK_NAMES)})")
    spec = TASKS[task]
    samples = []
    for index in range(n_samples):
        state = _sample_rng(seed, task, length, index).getstate()
        (context, question, prefix, answers), ctx_ids, q_ids = _fit(
            spec, spec.draw, state, tokenizer, length, index, n_samples, chat)
        samples.append(SyntheticSample(task, length, index, context, question, prefix, list(answers),
                                       spec.max_new_tokens, ctx_ids, q_ids))
    return samples


def passkey_sample(tokenizer, length: int, seed: int = 0, depth: float = 0.5, chat: bool = False) -> SyntheticSample:
    """One pass-key retrieval prompt (5-digit key in noise at ``depth``) fitting ``length`` tokens."""
    if not 0.0 <= depth <= 1.0:
        raise SyntheticError(f"depth={depth} must lie in [0, 1]")
    spec = Task("passkey", _passkey(depth), TASKS["passkey"].max_new_tokens)
    state = _sample_rng(seed, "passkey", length, 0).getstate()
    (context, question, prefix, answers), ctx_ids, q_ids = _fit(spec, spec.draw, state, tokenizer, length, 0, 1, chat)
    return SyntheticSample("passkey", length, 0, context, question, prefix, list(answers), spec.max_new_tokens,
                           ctx_ids, q_ids)


# -- scoring --------------------------------------------------------------------------------------
def _hits(prediction: str, references: Sequence[str]) -> list[bool]:
    low = prediction.lower()
    return [ref.lower() in low for ref in references]


def string_match_all(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """x100 mean over samples of the fraction of references found (case-insensitive substring)."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError("string_match_all needs as many reference lists as predictions (at least one)")
    per = [sum(h) / len(h) for h in (_hits(p, r) for p, r in zip(predictions, references))]
    return round(100 * sum(per) / len(per), 2)


def string_match_part(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """x100 mean over samples of whether any reference is found (case-insensitive substring)."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError("string_match_part needs as many reference lists as predictions (at least one)")
    per = [float(any(_hits(p, r))) for p, r in zip(predictions, references)]
    return round(100 * sum(per) / len(per), 2)


# -- suite ----------------------------------------------------------------------------------------
@dataclass
class SyntheticOptions:
    lengths: list[int] = field(default_factory=lambda: list(DEFAULT_LENGTHS))
    samples_per_length: int = 8
    seed: int = 0
    #: Force the chat template on/off; None: ``model.chat`` when the tokenizer has a template.
    chat_template: bool | None = None


def _options(suite_cfg) -> SyntheticOptions:
    from kvbench.config import suite_options

    raw = suite_options(suite_cfg, SyntheticOptions, SyntheticError, "the synthetic tasks")
    if "lengths" in raw and raw["lengths"] is not None:
        raw["lengths"] = list(raw["lengths"])
    opts = SyntheticOptions(**{k: v for k, v in raw.items() if v is not None or k == "chat_template"})
    if not opts.lengths or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 64 for n in opts.lengths):
        raise SyntheticError(f"suite.options.lengths={opts.lengths!r} must be a non-empty list of token counts >= 64")
    if not isinstance(opts.samples_per_length, int) or opts.samples_per_length <= 0:
        raise SyntheticError(f"suite.options.samples_per_length={opts.samples_per_length!r} must be a positive integer")
    if not isinstance(opts.seed, int):
        raise SyntheticError(f"suite.options.seed={opts.seed!r} must be an integer")
    return opts


def validate_suite(suite_cfg, model_cfg=None) -> SyntheticOptions:
    """Check a synthetic suite before any model is loaded (task names, lengths, sample counts)."""
    opts = _options(suite_cfg)
    tasks = list(suite_cfg.tasks)
    if not tasks:
        raise SyntheticError(f"suite.tasks is empty (choose from: {', '.join(TASK_NAMES)})")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SyntheticError(f"unknown synthetic task(s) {', '.join(map(repr, unknown))} "
                             f"(choose from: {', '.join(TASK_NAMES)})")
    if suite_cfg.limit is not None and suite_cfg.limit <= 0:
        raise SyntheticError(f"suite.limit={suite_cfg.limit} must be positive (or null)")
    if model_cfg is not None:
        too_long = [n for n in opts.lengths if n > model_cfg.max_length]
        if too_long:
            raise SyntheticError(f"suite.options.lengths {too_long} exceed model.max_length={model_cfg.max_length}")
    return opts


def _resolve_chat(tokenizer, model_cfg, forced: bool | None) -> bool:
    if forced is True and not has_chat_template(tokenizer):
        raise SyntheticError("suite.options.chat_template=true but the tokenizer has no chat template")
    if forced is not None:
        return forced
    return bool(getattr(model_cfg, "chat", False)) and has_chat_template(tokenizer)


def _eos_ids(tokenizer, model) -> list[int]:
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is not None:
        ids.update(int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]))
    return sorted(ids)


def run_suite(protocol, tokenizer, model_cfg, suite_cfg, output_dir) -> dict[str, dict[str, float]]:
    """Every task at every length: ``{"<task>_<length>": {"string_match_all": x, ...}}``.

    ``suite.limit`` caps ``samples_per_length``. Writes ``<output_dir>/<suite name>/predictions.jsonl``
    and ``result.json`` atomically once everything is done.
    """
    opts = validate_suite(suite_cfg, model_cfg)
    chat = _resolve_chat(tokenizer, model_cfg, opts.chat_template)
    n = opts.samples_per_length if suite_cfg.limit is None else min(suite_cfg.limit, opts.samples_per_length)
    eos = _eos_ids(tokenizer, protocol.model)
    # Every prompt first (cheap), so a length too short for a task fails before any decoding.
    plan = [(task, length, generate(task, tokenizer, length, n, seed=opts.seed, chat=chat))
            for task in suite_cfg.tasks for length in opts.lengths]
    metrics: dict[str, dict[str, float]] = {}
    rows = []
    for task, length, samples in plan:
        start = time.perf_counter()
        preds = []
        for s in samples:
            out = protocol.generate(s.context_ids, s.max_new_tokens, eos_token_ids=eos, query=s.query_ids)
            preds.append(tokenizer.decode(out, skip_special_tokens=True))
            rows.append({"task": task, "length": length, "index": s.index, "pred": preds[-1],
                         "answers": s.answers, "context_tokens": len(s.context_ids),
                         "query_tokens": len(s.query_ids), "generated_tokens": len(out)})
        refs = [s.answers for s in samples]
        key = f"{task}_{length}"
        metrics[key] = {"string_match_all": string_match_all(preds, refs)}
        if TASKS[task].multi_reference:
            metrics[key]["string_match_part"] = string_match_part(preds, refs)
        log.info("%s: %s (%.1fs)", key, metrics[key], time.perf_counter() - start)
    out_dir = Path(output_dir) / suite_cfg.name
    atomic_write_text(out_dir / "predictions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_text(out_dir / "result.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def rescore(path: str | Path) -> dict[str, dict[str, float]]:
    """Scores of a ``predictions.jsonl`` written by :func:`run_suite`."""
    groups: dict[str, tuple[list[str], list[list[str]], str]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            preds, refs, task = groups.setdefault(f"{row['task']}_{row['length']}", ([], [], row["task"]))
            preds.append(row["pred"])
            refs.append(row["answers"])
    out = {}
    for key, (preds, refs, task) in groups.items():
        out[key] = {"string_match_all": string_match_all(preds, refs)}
        if task in TASKS and TASKS[task].multi_reference:
            out[key]["string_match_part"] = string_match_part(preds, refs)
    return out


__all__ = ["TASKS", "TASK_NAMES", "NOISE", "SyntheticSample", "SyntheticError", "generate", "passkey_sample",
           "render", "string_match_all", "string_match_part", "validate_suite", "run_suite", "rescore"]
