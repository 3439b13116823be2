"""One process at a time per config: an exclusive ``flock`` on ``<records_dir>/<config_hash>.lock``.

Two sweeps sharing a records dir (two joblib sweeps with overlapping configs, a re-run started while the first is
still going) would otherwise both see "no complete record" and both run the same config. Under the lock the second
waits for the first, then finds its complete record and skips the job (the skip rule), so each config runs once;
if the first failed or was interrupted, the second runs it. ``flock`` is released by the kernel when its holder
dies, so a killed sweep never leaves a stale lock. The holder removes the file before it lets go, so a records
directory does not fill up with one empty ``.lock`` per config; a waiter that then wakes on the removed file sees
that the path no longer names the inode it locked and locks the path afresh (the usual flock-and-unlink rule: two
processes never both believe they hold the lock). Records are written atomically either way (:mod:`kvbench.atomic`),
so no record is ever torn. On a file system without ``flock`` (some NFS mounts) the lock is skipped with a warning
and two sweeps may run a config twice, each writing a whole record.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


@contextmanager
def exclusive(path: str | os.PathLike, waiting_message: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block, waiting for another holder;
    ``waiting_message`` is logged once if it has to wait."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        log.warning("could not open the lock %s (%s); going on without it", path, error)
        yield
        return
    handle = _acquire(path, waiting_message)
    if handle is None:
        yield
        return
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # still held: a waiter on this inode re-checks and locks the path anew
        handle.close()  # closing the handle releases the lock


def _acquire(path: Path, waiting_message: str):
    """The open, locked handle of the file ``path`` names when the lock is granted; None when locking is impossible
    (the caller goes on without it, warned)."""
    waited = False
    while True:
        try:
            handle = path.open("a")
        except OSError as error:
            log.warning("could not open the lock %s (%s); going on without it", path, error)
            return None
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    log.warning("%s (waiting for the lock %s)", waiting_message or "waiting", path)
                    waited = True
                fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as error:  # no flock on this file system
            log.warning("could not lock %s (%s); going on without it", path, error)
            handle.close()
            return None
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()  # the previous holder removed the file we waited on: lock the path again
