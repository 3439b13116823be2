"""``group_reduction``, the GQA reduction every attention-scored token method takes (issue 26): one name, one set of
choices, refused in one line when unknown, and each method's default stated in the README's table (derived from the
registry, so a new scored method without a row fails here)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from kvbench.cache.attention_scores import GROUP_REDUCTIONS
from kvbench.errors import MethodConfigError
from kvbench.methods import METHODS, build_method
from kvbench.methods.base import methods_with

README = Path(__file__).resolve().parents[2] / "README.md"
SCORED = methods_with("group_reduction")


def _readme_defaults() -> dict[str, str]:
    """``{method: default}`` from the README's table of group_reduction defaults."""
    rows = re.findall(r"^\s*\| `(\w+)` \| `(\w+)` \| .+ \|$", README.read_text(encoding="utf-8"), flags=re.M)
    return dict(rows)


def test_every_attention_scored_token_method_takes_group_reduction_h2o_included():
    assert {"h2o", "snapkv", "pyramidkv", "tova", "adakv", "expected_attention", "kvzip"} <= set(SCORED)


@pytest.mark.parametrize("name", SCORED)
def test_the_readme_table_states_each_methods_default_group_reduction(name):
    default = next(f.default for f in dataclasses.fields(METHODS[name]) if f.name == "group_reduction")
    assert default in GROUP_REDUCTIONS
    assert _readme_defaults().get(name) == default, f"README's group_reduction table: `{name}` defaults to `{default}`"


@pytest.mark.parametrize("name", SCORED)
def test_an_unknown_group_reduction_is_one_line_naming_the_choices(name):
    with pytest.raises(MethodConfigError) as error:
        build_method(name, group_reduction="median")
    assert str(error.value) == "method.group_reduction='median' is not supported (choose one of: sum, mean, max)"


def test_h2o_refuses_its_old_name_score_agg_naming_the_new_one():
    with pytest.raises(MethodConfigError) as error:
        build_method("h2o", score_agg="max")
    assert str(error.value) == "method=h2o: score_agg was renamed group_reduction (set method.group_reduction instead)"
    assert build_method("h2o", group_reduction="max").group_reduction == "max"
