"""Every suite says per task whether the question was visible at compression time (the record's
``suite.question_visible``): fed after the compressed context, compressed with it, compressed whole, or none."""

from __future__ import annotations

from kvbench.suites import build_suite
from kvbench.suites.efficiency import EfficiencyConfig
from kvbench.suites.fidelity import FidelityConfig
from kvbench.suites.lm_eval import LmEvalConfig
from kvbench.suites.longbench import LongBenchConfig
from kvbench.suites.ruler import RulerConfig
from kvbench.suites.shared_context import SharedContextConfig


def test_ruler_and_longbench_questions_are_hidden_unless_query_aware():
    for config in (RulerConfig, LongBenchConfig):
        agnostic = build_suite(config(name="s", tasks=["a", "b"])).question_visible()
        aware = build_suite(config(name="s", tasks=["a", "b"], query_aware=True)).question_visible()
        assert agnostic == {"a": "no", "b": "no"} and aware == {"a": "yes", "b": "yes"}


def test_lm_eval_keeps_apart_only_the_tasks_that_declare_a_question_field():
    tasks = ["kvbench_passkey", "kvbench_prose_ppl"]
    assert build_suite(LmEvalConfig(name="quick", tasks=tasks)).question_visible() == {
        "kvbench_passkey": "no", "kvbench_prose_ppl": "whole prompt"}
    assert build_suite(LmEvalConfig(name="quick", tasks=tasks, query_aware=True)).question_visible() == {
        "kvbench_passkey": "yes", "kvbench_prose_ppl": "whole prompt"}


def test_shared_context_is_query_agnostic_and_fidelity_and_efficiency_ask_nothing():
    assert set(build_suite(SharedContextConfig(name="shared_context")).question_visible().values()) == {"no"}
    assert set(build_suite(FidelityConfig(name="fidelity")).question_visible().values()) == {"no question"}
    assert set(build_suite(EfficiencyConfig(name="efficiency", tasks=["t"])).question_visible().values()) == {
        "no question"}
