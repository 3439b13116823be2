"""Atomic writes: a reader sees the old file or the new one, never half of one, with the user's permissions."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from kvbench.atomic import atomic_write_json, atomic_write_text


def test_a_failed_write_leaves_the_previous_file_intact_and_no_temp_file(tmp_path, monkeypatch):
    path = atomic_write_text(tmp_path / "out" / "a.txt", "old")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and os.listdir(path.parent) == ["a.txt"]


def test_files_are_written_with_the_users_umask_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644


def test_json_is_serialised_before_the_file_is_touched_and_numpy_scalars_are_numbers(tmp_path):
    path = atomic_write_json(tmp_path / "r.json", {"b": np.float32(0.5), "a": np.int64(3)})
    assert path.read_text() == '{\n  "a": 3,\n  "b": 0.5\n}' and json.loads(path.read_text()) == {"a": 3, "b": 0.5}

    class Unserialisable:
        def __str__(self):
            raise RuntimeError("cannot serialise")

    with pytest.raises(RuntimeError):
        atomic_write_json(path, {"bad": Unserialisable()})
    assert json.loads(path.read_text()) == {"a": 3, "b": 0.5}
