"""RULER-style samples: sizing with the tokenizer, context/question separation, answers."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from kvbench.eval import ruler as sy
from kvbench.eval.haystack import NOISE
from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import build_method
from kvbench.models import ModelConfig, byte_tokenizer

LENGTH = 2048  # the byte tokenizer spends one token per character


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.mark.parametrize("task", sy.TASK_NAMES)
def test_every_task_fits_the_length_closely_and_keeps_the_question_out_of_the_context(task, tok):
    samples = sy.generate(task, tok, LENGTH, n_samples=2, seed=0)
    for s in samples:
        total = s.n_tokens + s.max_new_tokens
        assert LENGTH * 0.9 <= total <= LENGTH, (task, total)
        assert s.context_ids + s.query_ids == tok(s.context + s.question + s.answer_prefix)["input_ids"]
        assert tok.decode(s.context_ids) == s.context and tok.decode(s.query_ids) == s.question + s.answer_prefix
        assert s.answers and all(a not in s.question + s.answer_prefix for a in s.answers)


@pytest.mark.parametrize("task", [t for t in sy.TASK_NAMES if t.startswith(("niah", "passkey"))])
def test_needle_values_are_in_the_context(task, tok):
    for s in sy.generate(task, tok, LENGTH, n_samples=2, seed=1):
        assert all(a in s.context for a in s.answers)


def test_multikey_distractors_have_other_keys_and_values(tok):
    s = sy.generate("niah_multikey", tok, LENGTH, 1)[0]
    needles = re.findall(r"special magic numbers for ([\w-]+) is: (\d{7})", s.context)
    assert len(needles) == 4 and len({k for k, _ in needles}) == 4
    asked = re.search(r"for ([\w-]+) mentioned", s.question).group(1)
    assert [v for k, v in needles if k == asked] == s.answers


def test_multiquery_and_multivalue_ask_for_four_values(tok):
    mq = sy.generate("niah_multiquery", tok, LENGTH, 1)[0]
    mv = sy.generate("niah_multivalue", tok, LENGTH, 1)[0]
    assert len(mq.answers) == len(set(mq.answers)) == 4 and mq.question.count(", ") == 3
    assert len(mv.answers) == 4 and len(re.findall(r"is: \d{7}", mv.context)) == 4


def test_single_needle_depth_is_spread_over_the_samples(tok):
    samples = sy.generate("niah_single", tok, LENGTH, n_samples=5, seed=0)
    positions = [s.context.index(s.answers[0]) / len(s.context) for s in samples]
    assert positions == sorted(positions) and positions[0] < 0.2 and positions[-1] > 0.8


def test_prose_haystack_comes_from_the_local_python_docs(tok):
    s = sy.generate("niah_single_prose", tok, LENGTH, 1)[0]
    assert NOISE not in s.context and len(set(s.context.split())) > 100


def test_variable_tracking_chain_resolves_to_the_answer_variables(tok):
    s = sy.generate("vt", tok, LENGTH, 1, seed=3)[0]
    value = re.search(r"value (\d+) in the text", s.question).group(1)
    assignments = dict(re.findall(r"VAR (\w+) = (VAR \w+|\d+)\.", s.context))
    resolved = set()
    for var in assignments:
        target = assignments[var]
        while target.startswith("VAR "):
            target = assignments[target[4:]]
        if target == value:
            resolved.add(var)
    assert resolved == set(s.answers) and len(s.answers) == 5


def test_common_words_are_the_most_frequent_in_the_list(tok):
    s = sy.generate("cwe", tok, LENGTH, 1, seed=2)[0]
    listing = s.context.rsplit("appear most often.\n", 1)[1]
    counts = Counter(re.findall(r"\d+\. (\S+)", listing))
    k = len(s.answers)
    top = [w for w, _ in counts.most_common(k)]
    assert set(top) == set(s.answers) and min(counts[a] for a in s.answers) > counts.most_common(k + 1)[-1][1]


def test_frequent_words_answer_is_the_top_three_with_distinct_counts(tok):
    s = sy.generate("fwe", tok, LENGTH, 1, seed=4)[0]
    words = s.context.split("\n")[1].split()
    counts = Counter(words).most_common(4)
    assert [w for w, _ in counts[:3]] == s.answers and counts[0][1] > counts[1][1] > counts[2][1] > counts[3][1]


def test_samples_are_seeded(tok):
    a = sy.generate("niah_multiquery", tok, 1024, 2, seed=7)
    b = sy.generate("niah_multiquery", tok, 1024, 2, seed=7)
    c = sy.generate("niah_multiquery", tok, 1024, 2, seed=8)
    assert [s.context for s in a] == [s.context for s in b]
    assert [s.answers for s in a] != [s.answers for s in c]


def test_chat_template_wraps_the_prompt_and_the_split_stays_after_the_context(tok):
    chat_tok = byte_tokenizer()
    chat_tok.chat_template = ("{% for m in messages %}<|user|>{{ m['content'] }}</s>{% endfor %}"
                              "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    s = sy.generate("niah_single", chat_tok, 1024, 1, chat=True)[0]
    assert chat_tok.decode(s.context_ids) == "<|user|>" + s.context
    query = chat_tok.decode(s.query_ids)
    assert query.startswith(s.question) and "</s><|assistant|>" in query and query.endswith(s.answer_prefix.lstrip())


def test_passkey_sample_puts_the_key_at_the_requested_depth(tok):
    early = sy.passkey_sample(tok, 1024, seed=0, depth=0.0)
    late = sy.passkey_sample(tok, 1024, seed=0, depth=1.0)
    assert early.context.index(early.answers[0]) < 300 < len(late.context) - 300 < late.context.index(late.answers[0])
    with pytest.raises(sy.SyntheticError, match="depth"):
        sy.passkey_sample(tok, 1024, depth=1.5)


def test_too_short_length_is_an_error_naming_the_task(tok):
    with pytest.raises(sy.SyntheticError, match="cwe: length 256 is too short"):
        sy.generate("cwe", tok, 256, 1)


def test_bundled_model_finds_a_short_passkey(smollm2_shared):
    model, tokenizer = smollm2_shared
    protocol = CompressionProtocol(model, build_method("full"))
    s = sy.passkey_sample(tokenizer, 256, seed=0, depth=0.5, chat=True)
    out = protocol.generate(s.context_ids, s.max_new_tokens, eos_token_ids=[tokenizer.eos_token_id], query=s.query_ids)
    assert s.answers[0] in tokenizer.decode(out, skip_special_tokens=True)
