"""The verdict on one paper claim, generated from our paired test and the paper's direction (never handwritten).

A paper claim is a method's number beside the paper's ``full`` on the same task and model: its direction is the sign
of (method − full) in the paper. Our side is the paired test of the matching roll-up row against our ``full``
(:mod:`kvbench.paired`): its verdict (Holm-corrected), its difference and the minimum detectable effect at our n.

* **reproduces**: our test finds a significant difference in the paper's direction;
* **does not reproduce**: our test finds a significant difference the other way, or finds none although the
  paper's difference is at least as large as what our test could detect at this n;
* **not testable at this n**: our test finds none and the paper's difference is below our minimum detectable effect
  (a gap of 0.1-2 points needs hundreds of samples; "no difference found" is not "no difference");
* **not testable: no per-sample scores** / **not run**: nothing to test.

The paper's difference is converted to our unit with the CSV's ``scale``; where our run stands in with another task
(``mini_task``) the comparison of magnitudes is indicative only, and the line says so.
"""

from __future__ import annotations

import math

from kvbench.statistics import ALPHA

REPRODUCES, DOES_NOT, UNTESTABLE_N = "reproduces", "does not reproduce", "not testable at this n"


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def verdict(ours, column: str | None, paper_difference: float, scale: float, higher_is_better: bool) -> tuple[str, str]:
    """``(verdict, why)`` for one claim: ``ours`` is the roll-up row (None: not run), ``paper_difference`` the
    paper's method − full in the paper's unit."""
    if ours is None or column is None:
        return "not run", "no run of ours matches this row"
    test = ours.get(f"{column}:vs_full")
    if test is None or (isinstance(test, float) and math.isnan(test)):
        return "not run", "no `full` of ours on the same workload"
    if test == "untestable":
        return "not testable: no per-sample scores", "the records hold no per-sample scores to pair"
    difference, mde = _number(ours.get(f"{column}:diff")), _number(ours.get(f"{column}:mde"))
    p, n, name = _number(ours.get(f"{column}:p_holm")), ours.get(f"{column}:n_paired"), ours.get(f"{column}:test")
    wanted = paper_difference * scale  # in our unit
    evidence = (f"paper Δ {paper_difference:+.3g}; ours Δ {difference:+.3g} ({name}, n={int(n)}, Holm p={p:.3g}, "
                f"detectable |Δ| ≥ {mde:.3g} in our unit)")
    if test in ("worse", "better"):
        paper_worse = (wanted < 0) == higher_is_better
        agrees = wanted != 0 and (test == "worse") == paper_worse
        return (REPRODUCES if agrees else DOES_NOT), evidence
    if abs(wanted) < mde:
        return UNTESTABLE_N, evidence + f": the paper's |Δ| {abs(wanted):.3g} is below what this n can detect"
    return DOES_NOT, evidence + f": a difference of the paper's size would have been detected (alpha {ALPHA})"
