"""Calibration results go to a per-test directory, never to the user's cache."""

import pytest


@pytest.fixture(autouse=True)
def _calibration_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path / "kvbench-cache"))
