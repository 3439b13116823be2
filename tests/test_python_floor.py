"""`make setup` on a Python older than pyproject.toml's floor stops before the venv is built, in one line.

The old interpreter is faked: a `python3` on PATH that runs this interpreter with `sys.version_info` set to
3.10.13 by a sitecustomize, so the check runs under the version it will see on Ubuntu 22.04, not a real 3.10.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _fake_python(tmp_path: Path, version: tuple[int, int, int]) -> Path:
    site = tmp_path / "fake_site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import sys\nsys.version_info = {version + ('final', 0)!r}\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python3 = bin_dir / "python3"
    python3.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{sys.executable}" "$@"\n')
    python3.chmod(0o755)
    return bin_dir


def _make_setup(tmp_path: Path, version: tuple[int, int, int]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{_fake_python(tmp_path, version)}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(["make", "-C", str(ROOT), "--no-print-directory", "setup", f"VENV={tmp_path / 'venv'}"],
                          env=env, capture_output=True, text=True, timeout=120)


def test_every_locked_package_installs_on_the_floor_pyproject_states():
    """The lock's numpy, pandas and networkx need Python 3.11: a floor below that promises a failing install."""
    from importlib import metadata

    from packaging.specifiers import SpecifierSet

    from kvbench.environment import lock_pins

    floor = re.search(r'^requires-python = ">=(\d+\.\d+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    refusing = []
    for name in lock_pins():
        try:
            needs = metadata.metadata(name).get("Requires-Python")
        except metadata.PackageNotFoundError:  # a pin of an extra this environment lacks
            continue
        if needs and not SpecifierSet(needs).contains(f"{floor}.0", prereleases=True):
            refusing.append(f"{name} ({needs})")
    assert not refusing, f"requires-python >={floor}, but these locked packages refuse it: {refusing}"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_setup_on_python_3_10_stops_at_once_naming_found_and_needed_versions(tmp_path):
    result = _make_setup(tmp_path, (3, 10, 13))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("kvbench: error:")]
    assert len(errors) == 1 and "Python 3.10.13 found" in errors[0] and "needs Python >=3.11" in errors[0]
    assert not (tmp_path / "venv").exists()  # stopped before the venv was built
    assert "-m venv" not in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_floor_check_passes_a_python_at_the_floor(tmp_path):
    bin_dir = _fake_python(tmp_path, (3, 11, 0))
    result = subprocess.run([str(bin_dir / "python3"), str(ROOT / ".ci" / "check_python.py")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == ""
