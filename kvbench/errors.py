"""The one base class of every error a user can fix by changing an input.

Every entry point (``kvbench``, ``kvbench-report``, ``lm_eval --model kvbench``) prints a
:class:`KvbenchError` as one line, ``kvbench: error: <message>``, whose message names the bad
value and the valid choices. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys


class KvbenchError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class ConfigError(KvbenchError, ValueError):
    """A config value is invalid; the message names the value and the valid choices."""


class MethodConfigError(ConfigError):
    """A method parameter is invalid (or the method cannot run on this model)."""


class SuiteConfigError(ConfigError):
    """A suite setting, task name or data file is invalid."""


class ModelLoadError(KvbenchError, RuntimeError):
    """The model cannot be loaded; the message says why and what to do."""


class OfflineUnavailable(KvbenchError):
    """Marks an error whose only cause is a resource that needs the network while offline (a hub model's
    config, hub data): a dry run (``dry_run=true``) notes it as "not checked offline" and goes on; a real
    run fails with the same line."""


class HubOfflineError(ModelLoadError, OfflineUnavailable):
    """A hub model's files are not in the local cache and ``HF_HUB_OFFLINE`` is set."""


class CorpusError(ConfigError):
    """A text corpus cannot be read; the message names it."""


class DiskFullError(KvbenchError):
    """A run's output could not be written for want of space; the message names the path and where the record is."""


def debug_mode() -> bool:
    """``KVBENCH_DEBUG=1``: user errors keep their full traceback."""
    return os.environ.get("KVBENCH_DEBUG", "").lower() in ("1", "true", "yes")


def fail(error: BaseException, prog: str = "kvbench") -> None:
    """Print ``error`` as kvbench's one line on stderr and exit 2 (re-raise it under ``KVBENCH_DEBUG=1``)."""
    if debug_mode():
        raise error
    if os.environ.get("RANK", "0") == "0":  # data-parallel ranks all fail alike: rank 0 says it once
        print(f"{prog}: error: {error}", file=sys.stderr)
    sys.exit(2)
