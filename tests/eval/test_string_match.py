"""RULER's string-match scores, by hand."""

from __future__ import annotations

import pytest

from kvbench.eval.string_match import string_match_all, string_match_part


def test_string_match_all_and_part_by_hand():
    preds = ["The numbers are 123 and ABC.", "nothing"]
    refs = [["123", "abc", "456", "789"], ["x"]]
    assert string_match_all(preds, refs) == 25.0  # (2/4 + 0) / 2
    assert string_match_part(preds, refs) == 50.0  # (1 + 0) / 2
    assert string_match_all([""], [["1"]]) == 0.0
    with pytest.raises(ValueError):
        string_match_all(["a"], [])
