"""How long the results site takes to build from a large sweep: ``--records`` synthetic complete records (the site
tests' fixture, cycling through the methods and two models), built ``--rounds`` times; the median and the range.

The site issue's target: 2,000 records in under a minute on two cores. A benchmark, not a timed test: the
machines are shared, so a wall-clock bound inside the test suite fails on load, not on code (the test
``tests/site/test_build.py`` checks the 2,000 rows and pages).

    python benchmarks/site_build.py --records 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kvbench.site import write_site
    from tests.site.conftest import write_many

    with tempfile.TemporaryDirectory() as tmp:
        records = Path(tmp) / "records"
        write_many(records, args.records)
        seconds = []
        for round_ in range(args.rounds):
            start = time.perf_counter()
            write_site(records, Path(tmp) / f"site{round_}")
            seconds.append(time.perf_counter() - start)
            print(f"round {round_ + 1}: {seconds[-1]:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    median = statistics.median(seconds)
    print(f"{args.records} records: site built in {median:.1f} s, median of {args.rounds} ({min(seconds):.1f}-"
          f"{max(seconds):.1f}); target under 60 s: {'PASS' if median < 60 else 'MISS'}")


if __name__ == "__main__":
    main()
