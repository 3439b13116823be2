"""LongBench prompts under the official protocol: middle truncation, context/query split, chat rule, stop rules."""

from __future__ import annotations

import json

import torch

from kvbench.eval import longbench as lb
from kvbench.models import byte_tokenizer
from tests.conftest import longbench_record as record
from tests.conftest import write_jsonl

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


# -- prompts --------------------------------------------------------------------------------------
def test_middle_truncation_keeps_exactly_the_first_and_last_halves():
    tok = byte_tokenizer()  # one token per ASCII character, no special tokens added
    prompt = "".join(chr(ord("a") + i % 26) for i in range(301))
    ids = tok(prompt)["input_ids"]
    truncated, was_cut = lb.truncate_middle(tok, prompt, 100)
    assert was_cut and truncated == prompt[:50] + prompt[-50:]
    assert tok(truncated)["input_ids"] == ids[:50] + ids[-50:]
    same, was_cut = lb.truncate_middle(tok, prompt, 301)
    assert same == prompt and not was_cut


def test_prompt_is_split_after_the_document_and_tokenised_whole():
    tok = byte_tokenizer()
    rec = record(0)
    p = lb.build_prompt(rec, "hotpotqa", tok, max_length=10_000, chat=False)
    full = lb.DATASET2PROMPT["hotpotqa"].format(**rec)
    assert p.context_ids + p.query_ids == tok(full)["input_ids"]
    assert tok.decode(p.context_ids).endswith(rec["context"])
    assert tok.decode(p.query_ids).startswith("\n\nAnswer the question") and rec["input"] in tok.decode(p.query_ids)
    assert not p.truncated and p.split == "query"


def test_truncation_applies_to_the_whole_prompt_before_the_split():
    tok = byte_tokenizer()
    rec = record(0, context="filler text. " * 200)
    p = lb.build_prompt(rec, "hotpotqa", tok, max_length=600, chat=False)
    assert p.truncated and len(p.context_ids) + len(p.query_ids) == 600
    assert rec["input"] in tok.decode(p.query_ids)
    # a budget too small to keep the question: everything is context, nothing is lost silently
    q = lb.build_prompt(rec, "hotpotqa", tok, max_length=100, chat=False)
    assert q.split == "whole" and q.query_ids == [] and len(q.context_ids) == 100


def test_chat_template_applies_except_on_few_shot_and_code_datasets():
    tok = byte_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    qa = lb.build_prompt(record(0), "hotpotqa", tok, 10_000, chat=True)
    assert qa.chat and qa.text.startswith("<|user|>") and tok.decode(qa.query_ids).endswith("</s><|assistant|>")
    fewshot = lb.build_prompt(record(0, all_classes=["Person"]), "trec", tok, 10_000, chat=True)
    assert not fewshot.chat and "<|user|>" not in fewshot.text
    plain = lb.build_prompt(record(0), "hotpotqa", tok, 10_000, chat=False)
    assert not plain.chat


def test_samsum_also_stops_at_the_newline_token_and_max_new_tokens_is_official(tiny_gqa):
    model, tok = tiny_gqa
    calls = []

    class Recorder:  # records what the protocol is asked to do
        def __init__(self):
            self.model = model

        def generate(self, context, max_new_tokens, stop=None, eos_token_ids=(), query=(), query_aware=False):
            calls.append((max_new_tokens, set(eos_token_ids)))
            return [tok.encode("x")[0]]

    newline = tok.encode("\n", add_special_tokens=False)[-1]
    lb.predict_dataset(Recorder(), tok, "samsum", [record(0)], 10_000, chat=False)
    lb.predict_dataset(Recorder(), tok, "gov_report", [record(0)], 10_000, chat=False)
    assert calls[0] == (128, {tok.eos_token_id, newline}) and calls[1] == (512, {tok.eos_token_id})


def test_rescore_cli_prints_the_scores_of_a_predictions_file(tmp_path, capsys):
    rows = [{"pred": "Ann", "answers": ["Ann"], "all_classes": None, "length": 10},
            {"pred": "Bob", "answers": ["Ann"], "all_classes": None, "length": 10}]
    write_jsonl(tmp_path / "hotpotqa.jsonl", rows)
    assert lb.main(["rescore", str(tmp_path / "hotpotqa.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out) == {"hotpotqa": {"qa_f1_score": 50.0}}
