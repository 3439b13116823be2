"""Stop `make setup` at once, in one line, when the interpreter is older than kvbench's floor.

The floor is pyproject.toml's `requires-python` (the one source): the lock pins numpy, pandas and networkx
releases that need Python 3.11, so on an older interpreter pip would fail partway through the install with a
resolver error. Run by the Makefile with the interpreter that will build the venv, before the venv exists;
written for any Python 3 (no tomllib, which is 3.11+).
"""

import re
import sys
from pathlib import Path


def required_floor(pyproject):
    """The (major, minor) of `requires-python = ">=X.Y"` in pyproject.toml."""
    match = re.search(r'^requires-python\s*=\s*">=\s*(\d+)\.(\d+)"', pyproject.read_text(encoding="utf-8"), re.M)
    if match is None:
        raise SystemExit("kvbench: error: no requires-python \">=X.Y\" in %s" % pyproject)
    return int(match.group(1)), int(match.group(2))


def main():
    floor = required_floor(Path(__file__).resolve().parents[1] / "pyproject.toml")
    found = tuple(sys.version_info[:3])
    if found[:2] < floor:
        sys.stderr.write("kvbench: error: Python %s found (%s), kvbench needs Python >=%d.%d (pyproject.toml "
                         "requires-python); set PYTHON=/path/to/python3.11+ for make\n"
                         % (".".join(map(str, found)), sys.executable, floor[0], floor[1]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
