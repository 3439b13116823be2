"""Per-sample rows read from the files each suite writes beside its record (lm-eval, RULER, LongBench)."""

from __future__ import annotations

import json

from kvbench.site.samples import EXCERPT, MAX_ROWS, read_samples


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_lm_eval_rows_give_prompt_prediction_reference_and_the_primary_metric_as_score(tmp_path):
    _jsonl(tmp_path / "samples_arc.jsonl", [{"doc_id": 3, "arguments": {"gen_args_0": {"arg_0": "Q?", "arg_1": " A"}},
                                             "target": 2, "filtered_resps": [["-1.5", "False"]], "acc_norm": 1.0,
                                             "acc": 0.0}])
    rows, problems = read_samples(tmp_path, {"arc": {"name": "acc_norm"}})
    assert problems == []
    assert rows == [{"task": "arc", "id": "3", "prompt": "Q?", "prediction": "-1.5", "reference": "2", "score": 1.0}]


def test_ruler_rows_are_keyed_by_task_and_length_as_the_record_names_them(tmp_path):
    _jsonl(tmp_path / "ruler" / "predictions.jsonl", [{"task": "niah", "length": 384, "index": 0, "pred": "7",
                                                       "answers": ["7", "8"]}])
    rows, _ = read_samples(tmp_path, {"niah_384": {"name": "string_match_all"}})
    assert rows[0]["task"] == "niah_384" and rows[0]["reference"] == "7, 8" and rows[0]["prediction"] == "7"


def test_long_cells_are_cut_and_rows_capped(tmp_path):
    _jsonl(tmp_path / "longbench" / "qasper.jsonl", [{"pred": "x" * 5000, "answers": ["y"]}] * (MAX_ROWS + 10))
    rows, _ = read_samples(tmp_path)
    assert len(rows) == MAX_ROWS and len(rows[0]["prediction"]) == EXCERPT + 1


def test_an_unparsable_sample_file_is_a_problem_line_not_an_error(tmp_path):
    (tmp_path / "samples_bad.jsonl").write_text('{"pred": 1}\n{broken\n', encoding="utf-8")
    rows, problems = read_samples(tmp_path)
    assert len(problems) == 1 and problems[0].startswith("samples_bad.jsonl: JSONDecodeError")


def test_a_committed_record_without_its_run_dir_shows_the_sidecar_scores(tmp_path):
    from kvbench.sample_scores import sample_entries, write_sidecar
    from kvbench.site.samples import read_sidecar_rows

    record = tmp_path / "record.json"
    write_sidecar(record, [*sample_entries("niah", [0, 1], [1.0, 0.0]),
                           *sample_entries("wikitext", ["d"], [(-12.5, 40)])])
    rows = read_sidecar_rows(record)
    assert rows[:2] == [{"task": "niah", "id": "0", "prompt": "", "prediction": "", "reference": "", "score": 1.0},
                        {"task": "niah", "id": "1", "prompt": "", "prediction": "", "reference": "", "score": 0.0}]
    assert rows[2]["score"] is None and rows[2]["prediction"] == "log-likelihood -12.5 over weight 40"
    assert read_sidecar_rows(tmp_path / "other.json") == []
