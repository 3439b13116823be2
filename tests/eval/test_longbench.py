"""LongBench protocol: data checks, middle truncation, context/query split, chat rule, end-to-end run."""

from __future__ import annotations

import json

import pytest

from kvbench.config import SuiteConfig
from kvbench.eval import longbench as lb
from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import build_method
from kvbench.models import ModelConfig, byte_tokenizer

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def record(i: int, **over) -> dict:
    base = {"input": f"Who wrote book {i}?", "context": f"Passage {i}: book {i} was written by Ann. " * 6,
            "answers": ["Ann"], "length": 40 + 3000 * i, "all_classes": None, "dataset": "hotpotqa",
            "language": "en", "_id": f"id{i}"}
    base.update(over)
    return base


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "longbench"
    d.mkdir()
    write_jsonl(d / "hotpotqa.jsonl", [record(0), record(1)])
    write_jsonl(d / "trec.jsonl", [record(2, answers=["Person"], all_classes=["Person", "Location", "Number"])])
    write_jsonl(d / "hotpotqa_e.jsonl", [record(0), record(2)])
    return d


def suite(data_dir, tasks=("hotpotqa", "trec"), **options) -> SuiteConfig:
    return SuiteConfig(name="longbench", runner="longbench", tasks=list(tasks), max_gen_toks=3,
                       options={"data_dir": str(data_dir), **options})


# -- end to end -----------------------------------------------------------------------------------
def test_run_suite_on_tiny_model_writes_predictions_and_scores_that_rescore_identically(tiny_gqa, data_dir, tmp_path):
    model, tok = tiny_gqa
    protocol = CompressionProtocol(model, build_method("full"))
    out = tmp_path / "out"
    metrics = lb.run_suite(protocol, tok, ModelConfig(max_length=512, chat=False), suite(data_dir), out)

    assert set(metrics) == {"hotpotqa", "trec", "average"}
    assert set(metrics["hotpotqa"]) == {"qa_f1_score"} and set(metrics["trec"]) == {"classification_score"}
    preds = [json.loads(line) for line in (out / "longbench" / "hotpotqa.jsonl").read_text().splitlines()]
    assert len(preds) == 2 and all(p["answers"] == ["Ann"] and p["split"] == "query" for p in preds)
    assert all(1 <= p["generated_tokens"] <= 3 and p["query_tokens"] > 0 for p in preds)
    saved = json.loads((out / "longbench" / "result.json").read_text())
    assert saved == metrics
    assert lb.rescore(out / "longbench") == {k: v for k, v in metrics.items() if k != "average"}
    assert protocol.stats.n_prefills == 3


def test_longbench_e_reports_buckets_present_in_the_data(tiny_gqa, data_dir, tmp_path):
    model, tok = tiny_gqa
    protocol = CompressionProtocol(model, build_method("full"))
    metrics = lb.run_suite(protocol, tok, ModelConfig(max_length=512, chat=False),
                           suite(data_dir, tasks=["hotpotqa"], e=True), tmp_path / "out")
    assert set(metrics["hotpotqa"]) == {"qa_f1_score", "qa_f1_score@0-4k", "qa_f1_score@4-8k"}


def test_rescore_cli_prints_the_scores_of_a_predictions_file(tmp_path, capsys):
    rows = [{"pred": "Ann", "answers": ["Ann"], "all_classes": None, "length": 10},
            {"pred": "Bob", "answers": ["Ann"], "all_classes": None, "length": 10}]
    write_jsonl(tmp_path / "hotpotqa.jsonl", rows)
    assert lb.main(["rescore", str(tmp_path / "hotpotqa.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out) == {"hotpotqa": {"qa_f1_score": 50.0}}


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

        def generate(self, context, max_new_tokens, stop=None, eos_token_ids=(), query=()):
            calls.append((max_new_tokens, set(eos_token_ids)))
            return [tok.encode("x")[0]]

    newline = tok.encode("\n", add_special_tokens=False)[-1]
    lb.predict_dataset(Recorder(), tok, "samsum", [record(0)], 10_000, chat=False)
    lb.predict_dataset(Recorder(), tok, "gov_report", [record(0)], 10_000, chat=False)
    assert calls[0] == (128, {tok.eos_token_id, newline}) and calls[1] == (512, {tok.eos_token_id})


# -- bad input ------------------------------------------------------------------------------------
def test_missing_data_dir_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(lb.LongBenchError, match="data_dir"):
        lb.validate_suite(SuiteConfig(name="longbench", tasks=["hotpotqa"]))
    with pytest.raises(lb.LongBenchError, match="not a directory"):
        lb.validate_suite(SuiteConfig(name="longbench", tasks=["hotpotqa"], options={"data_dir": "/nonexistent/lb"}))


def test_unknown_dataset_names_the_valid_ones(data_dir):
    with pytest.raises(lb.LongBenchError, match=r"'nq'.*choose from: narrativeqa, qasper"):
        lb.validate_suite(suite(data_dir, tasks=["hotpotqa", "nq"]))
    with pytest.raises(lb.LongBenchError, match="LongBench-E"):
        lb.validate_suite(suite(data_dir, tasks=["musique"], e=True))
    with pytest.raises(lb.LongBenchError, match="unknown key"):
        lb.validate_suite(suite(data_dir, tasks=["hotpotqa"], datadir="x"))


def test_missing_file_and_bad_records_name_the_file_and_line(data_dir, tiny_gqa, tmp_path):
    with pytest.raises(lb.LongBenchError, match=r"'lcc' not found: .*lcc\.jsonl"):
        lb.validate_suite(suite(data_dir, tasks=["lcc"]))
    bad = record(1)
    del bad["answers"]
    write_jsonl(data_dir / "hotpotqa.jsonl", [record(0), bad])
    with pytest.raises(lb.LongBenchError, match=r"hotpotqa\.jsonl:2: record has no 'answers' field"):
        lb.validate_suite(suite(data_dir))
    (data_dir / "trec.jsonl").write_text(json.dumps(record(0, all_classes=None)) + "\n")
    with pytest.raises(lb.LongBenchError, match=r"trec\.jsonl:1: trec records need a non-empty 'all_classes'"):
        lb.validate_suite(suite(data_dir, tasks=["trec"]))
    # run_suite validates everything first: no prediction or score file is written
    model, tok = tiny_gqa
    out = tmp_path / "out"
    with pytest.raises(lb.LongBenchError):
        lb.run_suite(CompressionProtocol(model, build_method("full")), tok, ModelConfig(chat=False), suite(data_dir), out)
    assert not out.exists()


def test_suite_configs_compose_with_the_schema():
    from omegaconf import OmegaConf

    from kvbench.runner import CONF_DIR

    for name in ("longbench", "longbench_e", "minicache_longbench"):
        raw = OmegaConf.load(CONF_DIR / "suite" / f"{name}.yaml")
        cfg = OmegaConf.merge(OmegaConf.structured(SuiteConfig), {k: v for k, v in raw.items() if k != "defaults"})
        assert cfg.runner == "longbench" and cfg.name == name
        opts = lb._options(cfg)
        lb._check_datasets(list(cfg.tasks), opts.e)


def test_paper_lm_eval_suites_compose_with_the_schema():
    from omegaconf import OmegaConf

    from kvbench.runner import CONF_DIR

    expected = {"minicache_lmeval": ({"gsm8k", "coqa", "truthfulqa_mc2"}, None),
                "svd_gqa_paper": ({"mmlu", "wikitext"}, 0),
                "h2o_paper": ({"copa", "openbookqa", "piqa", "winogrande"}, 5)}
    for name, (tasks, shots) in expected.items():
        raw = OmegaConf.load(CONF_DIR / "suite" / f"{name}.yaml")
        cfg = OmegaConf.merge(OmegaConf.structured(SuiteConfig), {k: v for k, v in raw.items() if k != "defaults"})
        assert cfg.runner == "lm_eval" and set(cfg.tasks) == tasks and cfg.num_fewshot == shots
