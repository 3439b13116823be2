"""The identity check's comparison (kvbench/engines/identity.py): what is compared, and what is not."""

import pytest

from kvbench.engines.identity import TOLERANCE, compare


def test_log_probs_are_compared_up_to_and_including_the_first_differing_step():
    ours = [{"tokens": [1, 2, 3], "logprobs": [-0.1, -0.2, -0.3]}]
    theirs = [{"tokens": [1, 5, 6], "logprobs": [-0.1, -0.25, -9.0]}]
    result = compare(ours, theirs)
    assert result.first_divergence == [1]
    assert result.tokens_compared == 2  # step 2 follows different tokens: not comparable
    assert result.max_abs_logprob_diff == pytest.approx(0.05)
    assert result.all_tokens_equal == 0 and not result.within()


def test_equal_continuations_within_tolerance_pass():
    ours = [{"tokens": [4, 4], "logprobs": [-1.0, -2.0]}] * 2
    theirs = [{"tokens": [4, 4], "logprobs": [-1.0 + TOLERANCE / 2, -2.0]}] * 2
    result = compare(ours, theirs)
    assert result.all_tokens_equal == 2 and result.tokens_compared == 4 and result.within()
