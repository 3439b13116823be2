"""The lm-eval suite: per-task few-shot counts reach lm-eval."""

from __future__ import annotations

import pytest

from kvbench import runner
from kvbench.compose import compose_config
from kvbench.errors import SuiteConfigError

TINY = ["model=tiny_llama", "logger=none", "suite.limit=1", "suite.tasks=[kvbench_recall_mc,kvbench_prose_ppl]"]


def test_per_task_few_shot_counts_reach_lm_eval(tmp_path, monkeypatch):
    import lm_eval

    real, shots = lm_eval.simple_evaluate, {}

    def spy(**kwargs):
        results = real(**kwargs)
        shots.update(results["n-shot"])  # what lm-eval itself ran with
        return results

    monkeypatch.setattr(lm_eval, "simple_evaluate", spy)
    cfg = compose_config([*TINY, f"records_dir={tmp_path / 'records'}", "suite.num_fewshot=0",
                          "+suite.num_fewshot_per_task={kvbench_recall_mc: 2}"])
    record = runner.run(cfg, tmp_path / "run")
    assert record.status == "complete"
    assert shots == {"kvbench_recall_mc": 2, "kvbench_prose_ppl": 0}


@pytest.mark.parametrize("override, message", [
    ("+suite.num_fewshot_per_task={copa: 5}",
     "suite.num_fewshot_per_task.copa: copa is not one of suite.tasks (kvbench_recall_mc, kvbench_prose_ppl)"),
    ("+suite.num_fewshot_per_task={kvbench_recall_mc: -1}", "suite.num_fewshot_per_task.kvbench_recall_mc=-1 must be >= 0"),
])
def test_bad_per_task_few_shot_is_one_line_before_loading(tmp_path, override, message):
    from kvbench.validation import validate

    with pytest.raises(SuiteConfigError) as error:
        validate(compose_config([*TINY, override]))
    assert str(error.value) == message
