"""Atomic file writes: a temp file in the same directory, then a rename over the target.

A reader (the skip rule, a report, a colleague's script) sees the old file or the new one, never half of one; a
failure leaves the previous file untouched and no temp file behind. Records, suites' outputs and generated task
data are all written this way.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _file_mode() -> int:
    """The mode a new file gets under the user's umask (``mkstemp`` would leave 0600 through the rename)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` atomically: a temp file in the same directory, then rename over ``path``.
    A failure leaves the previous file (if any) untouched and no temp file behind. The file gets the
    permissions of any other file the user creates (umask), so colleagues can read shared results."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def json_default(value):
    """``json.dumps``'s fallback: numpy scalars as Python numbers, anything else as its ``str``."""
    import numpy as np  # only reached for a value json cannot write itself

    return value.item() if isinstance(value, np.generic) else str(value)


def atomic_write_json(path: str | os.PathLike, data) -> Path:
    """``data`` as indented JSON with sorted keys, written atomically. It is serialised first, so a value that
    cannot be written never touches the file."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=json_default))
